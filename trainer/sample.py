"""``elab-sample RUN_DIR [PROMPT]``: what a trained model writes, or how it answers a probe row.

Everything comes from the run dir (``trainer.run_files``): the model class and config, the
tokenizer or the synthetic task's vocabulary, a checkpoint of the trail. Text runs turn the prompt
into tokens after an ``<|eos|>`` (documents follow one in training, so it plays the part of a BOS
token) and stop at the next ``<|eos|>``; synthetic tasks take the prompt as token names or ids
separated by spaces (``3 + 5 =``; ``c17 L3 c9 L0 c17``). ``--probe NAME --row I`` shows a stored
probe row instead: the context, the right answer and the model's most probable answers.

Decoding is ``GPT.generate`` (KV cache): greedy at ``--temperature 0`` (the default), else
sampling at that temperature, optionally from the ``--top-k`` most likely tokens, with ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainer.cli_errors import report_bad_input
from trainer.config import ConfigError
from trainer.run_dir import RunDir
from trainer.run_files import (
    VOCAB_FILE,
    find_checkpoint,
    load_model,
    read_json,
    read_probes,
    tokenizer_path,
)


class Vocabulary:
    """Prompt text to ids and ids to text, for any kind of run (see ``vocabulary.json``)."""

    def __init__(self, run_dir: Path) -> None:
        self.spec = spec = read_json(run_dir, VOCAB_FILE)
        self.kind = spec["kind"]
        self.eos_id = spec.get("eos_id")
        self.names = spec.get("names")
        self._tok = None
        if self.kind in ("byte", "bpe"):
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(tokenizer_path(run_dir, spec)))

    @property
    def is_text(self) -> bool:
        return self._tok is not None

    def encode(self, prompt: str) -> list[int]:
        if self.is_text:
            return [self.eos_id, *self._tok.encode(prompt, add_special_tokens=False).ids]
        index = {name: i for i, name in enumerate(self.names or [])}
        ids = []
        for word in prompt.split():
            if word in index:
                ids.append(index[word])
            elif word.isdigit() and int(word) < self.spec["vocab_size"] and self.names is None:
                ids.append(int(word))
            else:
                known = (f"names such as {' '.join((self.names or [])[:12])} ..." if self.names
                         else f"ids 0..{self.spec['vocab_size'] - 1}")
                raise ConfigError(f"prompt token {word!r} is not in this run's vocabulary "
                                  f"({known}; see {VOCAB_FILE})")
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.is_text:
            return self._tok.decode([i for i in ids if i != self.eos_id], skip_special_tokens=False)
        if self.names:
            return " ".join(self.names[i] if i < len(self.names) else f"<{i}>" for i in ids)
        return " ".join(str(i) for i in ids)


def generate_text(model: Any, vocab: Vocabulary, prompt: str, max_new_tokens: int,
                  temperature: float, top_k: int | None, seed: int) -> tuple[str, str]:
    """``(the prompt and what the model wrote after it, a note when it ended the document)``.
    Past ``max_seq_len`` the model sees its last ``max_seq_len`` tokens (``GPT.generate``)."""
    import torch

    if model.config.item_dim is not None:
        raise ConfigError(f"this model reads item vectors (item_dim={model.config.item_dim}), "
                          "which a text prompt cannot give: use --probe NAME --row I")
    ids = vocab.encode(prompt)
    if not ids:
        raise ConfigError("the prompt is empty: give token names or ids (see vocabulary.json)")
    note = ""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature,
                             top_k=top_k, generator=generator,
                             eos_token_id=vocab.eos_id if vocab.is_text else None)
    new = out[0, len(ids):].tolist()
    if vocab.is_text and vocab.eos_id in new:
        new = new[: new.index(vocab.eos_id)]
        note = "(the model ended the document: <|eos|>)"
    return vocab.decode(ids + new), note


def probe_answers(model: Any, probe: dict[str, Any], row: int, top: int):
    """``(context ids, right answer id, [(answer id, probability)...])`` for one probe row."""
    import torch

    pos = int(probe["answer_positions"][row])
    ids = torch.as_tensor(probe["input_ids"][row : row + 1, : pos + 1])
    vectors = mask = None
    if "item_vectors" in probe:
        vectors = torch.as_tensor(probe["item_vectors"][row : row + 1, : pos + 1])
        mask = torch.as_tensor(probe["item_mask"][row : row + 1, : pos + 1])
    with torch.no_grad():
        probs = model(ids, vectors, mask)[0, -1].float().softmax(-1)
    p, best = probs.topk(min(top, probs.numel()))
    return ids[0].tolist(), int(probe["targets"][row, pos]), list(zip(best.tolist(), p.tolist()))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elab-sample",
        description="What a run's model writes after a prompt, or how it answers a probe row. "
                    "Text runs: the prompt is text; synthetic tasks: token names or ids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run dir (holds model.json and checkpoints/)")
    p.add_argument("prompt", nargs="?", default=None,
                   help="text, or token names/ids for synthetic tasks; none: a text run starts a "
                        "new document, a synthetic one shows --probe's first set, row --row")
    p.add_argument("--checkpoint", default=None,
                   help="last, a step of the trail (400 or step-400.ckpt), or a path")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", default=None, help="a probe set of the run (icl, iwl, heldout...)")
    p.add_argument("--row", type=int, default=0, help="the probe row to show")
    p.add_argument("--top", type=int, default=5, help="answers shown for a probe row")
    return p


# --max-new-tokens at most this many windows (or MIN_LIMIT tokens, for tiny windows): past its
# window the model sees only its last max_seq_len tokens, so a longer sample costs time (hours at
# 10^7) and shows nothing new.
MAX_WINDOWS, MIN_LIMIT = 16, 4096


def max_new_tokens_limit(max_seq_len: int) -> int:
    return max(MAX_WINDOWS * max_seq_len, MIN_LIMIT)


def check_max_new_tokens(max_new_tokens: int, max_seq_len: int) -> None:
    limit = max_new_tokens_limit(max_seq_len)
    if max_new_tokens > limit:
        raise ConfigError(f"--max-new-tokens={max_new_tokens} is above this model's limit of "
                          f"{limit} (beyond its window the model sees only its last "
                          f"{max_seq_len} tokens: a longer sample takes time and shows nothing "
                          f"new); ask for at most {limit}")


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    if args.temperature < 0:
        raise ConfigError(f"--temperature={args.temperature} must be >= 0 (0: greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k} must be >= 1")
    if args.top < 1:
        raise ConfigError(f"--top={args.top} must be >= 1")
    if not RunDir(args.run_dir).checkpoints_dir.is_dir():
        raise ConfigError(f"run_dir={str(args.run_dir)!r} has no checkpoints/ directory")


def _show_probe(model: Any, vocab: Vocabulary, probes: dict, name: str | None, row: int,
                top: int) -> None:
    if not probes:
        raise ConfigError("this run stored no answer probes (probes.npz); give a prompt")
    name = name or next(iter(probes))
    if name not in probes:
        raise ConfigError(f"--probe={name!r} is not a probe of this run (probes: "
                          f"{', '.join(probes)})")
    n_rows = len(probes[name]["input_ids"])
    if not 0 <= row < n_rows:
        raise ConfigError(f"--row={row} must lie in [0, {n_rows - 1}] (rows stored for {name!r})")
    context, right, answers = probe_answers(model, probes[name], row, top)

    def token(i: int) -> str:
        return repr(vocab.decode([i])) if vocab.is_text else vocab.decode([i])  # spaces visible

    print(f"probe {name}, row {row}")
    print(f"context: {vocab.decode(context)}")
    print(f"right answer: {token(right)}")
    print("model's answers:")
    shown = [token(a) for a, _ in answers]
    width = max(len(t) for t in shown)
    for text, (answer, prob) in zip(shown, answers):
        mark = "  <- right" if answer == right else ""
        print(f"  {text:<{width}}  {prob:.3f}{mark}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        path = find_checkpoint(args.run_dir, args.checkpoint)
        model, step = load_model(args.run_dir, path)
        check_max_new_tokens(args.max_new_tokens, model.config.max_seq_len)
        vocab = Vocabulary(args.run_dir)
        print(f"# {args.run_dir}: {type(model).__name__}, {model.num_params() / 1e6:.2f}M "
              f"parameters, checkpoint {path.name} (step {step})", file=sys.stderr)
        if args.probe is not None or (args.prompt is None and not vocab.is_text):
            _show_probe(model, vocab, read_probes(args.run_dir), args.probe, args.row, args.top)
            return 0
        text, note = generate_text(model, vocab, args.prompt or "", args.max_new_tokens,
                                         args.temperature, args.top_k, args.seed)
    except Exception as exc:  # bad input: the message, no traceback
        return report_bad_input("elab-sample", exc)
    print(text)
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
