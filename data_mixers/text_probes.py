"""The text mixer's probe sets: held-out questions as ``answer`` probes, and per domain held-out
documents as ``loss`` probes. Built once from the opened stores; see
:meth:`data_mixers.text_mixer.TextMixer.probe_sets`."""

from __future__ import annotations

from typing import Any

import numpy as np

from data_mixers.base import ProbeSet
from data_mixers.tokenizer import token_index_at


def heldout_probe(domain_name: str, domain: int, docs: np.ndarray, heads: list[np.ndarray],
                  seq_len: int, eos_id: int) -> ProbeSet:
    """One row per held-out document, from its start; the loss counts its own tokens only.
    ``heads``: each document's first tokens (at most ``seq_len + 1``)."""
    width = seq_len + 1
    tokens = np.full((len(docs), width), eos_id, dtype=np.int64)
    loss_mask = np.zeros((len(docs), seq_len), dtype=np.float32)
    for j, head in enumerate(heads):
        tokens[j, :len(head)] = head
        loss_mask[j, :len(head) - 1] = 1.0
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": loss_mask,
             "domain": np.full((len(docs), seq_len), domain, dtype=np.int64)}
    return ProbeSet(f"heldout/{domain_name}", batch, kind="loss",
                    meta={"documents": [int(x) for x in docs]})


def answer_probe(name: str, questions: list, domain_names: list[str], offset: int,
                 tokenizer: Any, seq_len: int) -> ProbeSet:
    """Rows as wide as the longest prompt needs (up to its answer), not ``seq_len``: the
    probe reads one position per row, and on short questions that makes scoring several
    times cheaper. A prompt longer than a window keeps its last ``seq_len`` tokens, the most
    context training ever gives a prediction."""
    encoded = tokenizer.encode_with_offsets([q.text for q in questions])
    answers = np.array([token_index_at(char_starts, q.answer_start)
                        for q, (_, char_starts) in zip(questions, encoded)], dtype=np.int64)
    starts = np.maximum(answers - seq_len, 0)
    answers -= starts
    n, width = len(questions), int(answers.max()) + 1
    tokens = np.full((n, width), tokenizer.eos_id, dtype=np.int64)
    for j, (ids, _) in enumerate(encoded):
        row = ids[starts[j]:starts[j] + width]
        tokens[j, :len(row)] = row
    answer_positions = answers - 1
    loss_mask = np.zeros((n, width - 1), dtype=np.float32)
    loss_mask[np.arange(n), answer_positions] = 1.0
    domain = np.array([offset + domain_names.index(q.domain) for q in questions])
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": loss_mask,
             "domain": np.repeat(domain[:, None], width - 1, axis=1),
             "doc_id": np.full((n, width - 1), -1, dtype=np.int64),
             "doc_pos": np.full((n, width - 1), -1, dtype=np.int64)}
    # The tokens a window must hold for every question that needs its whole prompt (see
    # ProbeQuestion.whole): more than seq_len, and those questions lose their subject.
    meta = {"questions": [q.text[:q.answer_start] for q in questions],
            "answers": [q.text[q.answer_start:] for q in questions],
            "window_needed": max([int(a) for a, q in zip(answers + starts, questions) if q.whole],
                                 default=0)}
    return ProbeSet(name, batch, kind="answer", answer_positions=answer_positions, meta=meta)
