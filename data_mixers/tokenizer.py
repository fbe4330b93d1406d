"""Tokenizers for the text sources: raw bytes, or a byte-level BPE trained on the sources' text.

Both map text to numpy id arrays and reserve one special id, ``eos_id``, which the mixer puts
after every document (and uses as padding, where the loss mask is 0). ``config()`` is what the
token store hashes, so a store is rebuilt whenever the tokenizer that made it would change.

The BPE is trained once per (sources, vocab size) with the Hugging Face ``tokenizers`` library
and cached as ``tokenizer.json``: written to a temporary name, then renamed into place, so a
crashed run never leaves a half-written tokenizer behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_mixers.base import DataConfigError

EOS_TEXT = "<|eos|>"
TOKENIZER_KINDS = ("byte", "bpe")


class ByteTokenizer:
    """UTF-8 bytes are the tokens (ids 0..255); ``eos_id`` is 256.

    No training, no cache, and every fact sentence maps to a fixed, predictable number of tokens,
    which makes it the default for controlled experiments.
    """

    kind = "byte"
    eos_id = 256
    vocab_size = 257

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Ids and, per token, the index of the character it starts in (multi-byte characters
        give several tokens the same character index)."""
        out = []
        for text, ids in zip(texts, self.encode_batch(texts)):
            if text.isascii():
                out.append((ids, np.arange(len(ids))))
                continue
            char_bytes = [len(c.encode("utf-8")) for c in text]
            out.append((ids, np.repeat(np.arange(len(text)), char_bytes)))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE (``tokenizers``) whose vocabulary was learnt from the sources' documents.

    ``vocab_size`` is the requested size and the size the model's embedding should have; a small
    corpus may yield fewer merges, so every id stays below it.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any, vocab_size: int, training_key: str) -> None:
        self._tok = hf_tokenizer
        self.vocab_size = int(vocab_size)
        self.training_key = training_key
        self.eos_id = int(hf_tokenizer.token_to_id(EOS_TEXT))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "trained_on": self.training_key}

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids only. ``encode_batch`` spreads the batch over the library's threads (all cores by
        default; ``RAYON_NUM_THREADS`` caps them). ``encode_batch_fast``, which skips the
        offsets, measured 5-15% slower here (tokenizers 0.23, 2 cores), so it is not used."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(texts))]

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        encodings = self._tok.encode_batch(list(texts))
        return [(np.asarray(e.ids, dtype=np.int64),
                 np.asarray([start for start, _ in e.offsets], dtype=np.int64)) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def to_json(self) -> str:
        """The trained tokenizer as ``tokenizer.json`` text (a run dir keeps a copy beside its
        checkpoints; see ``trainer.run_files``)."""
        return self._tok.to_str()


def token_index_at(char_starts: np.ndarray, char_pos: int) -> int:
    """Index of the first token that covers character ``char_pos``: the token starting last at
    or before it, or the first of several (the bytes of one multi-byte character)."""
    covering = char_starts[np.searchsorted(char_starts, char_pos, side="right") - 1]
    return int(np.searchsorted(char_starts, covering, side="left"))


def _train_bpe(texts: Iterable[str], vocab_size: int, progress: bool = False) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TEXT], show_progress=progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_vocab_size(kind: str = "byte", vocab_size: int | None = None) -> int:
    """The vocabulary size ``data.tokenizer`` will have (checked without training anything)."""
    if kind == "byte":
        if vocab_size not in (None, ByteTokenizer.vocab_size):
            raise DataConfigError(f"data.tokenizer.vocab_size={vocab_size}: a byte tokenizer has "
                                  f"{ByteTokenizer.vocab_size} ids; leave it unset")
        return ByteTokenizer.vocab_size
    if kind != "bpe":
        raise DataConfigError(f"data.tokenizer.kind={kind!r} is not one of {list(TOKENIZER_KINDS)}")
    if vocab_size is None or not 300 <= int(vocab_size) <= 65536:
        raise DataConfigError(f"data.tokenizer.vocab_size={vocab_size} must lie in [300, 65536] "
                              "for a BPE (256 byte symbols + special + merges)")
    return int(vocab_size)


def build_tokenizer(kind: str = "byte", vocab_size: int | None = None, *, sources: Sequence[Any] = (),
                    cache_dir: str | os.PathLike | None = None,
                    progress: bool | None = None) -> ByteTokenizer | BPETokenizer:
    """The tokenizer described by ``data.tokenizer``; a BPE is loaded from the cache or trained on
    the documents of ``sources`` (each a text source with ``config()`` and ``documents()``).
    Training shows the library's own progress bar on a terminal (never when ``progress`` is
    false)."""
    vocab_size = tokenizer_vocab_size(kind, vocab_size)
    if kind == "byte":
        return ByteTokenizer()
    if cache_dir is None:
        raise DataConfigError("data.cache_dir must be set to train and cache a BPE tokenizer")
    training = json.dumps({"vocab_size": vocab_size, "sources": [s.config() for s in sources]},
                          sort_keys=True, default=str)
    key = hashlib.sha256(training.encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / f"bpe-{key}.json"
    from tokenizers import Tokenizer

    if path.exists():
        try:
            return BPETokenizer(Tokenizer.from_file(str(path)), vocab_size, key)
        except Exception:  # a truncated or foreign file: train again below and replace it
            path.unlink()
    texts = (doc.text for source in sources for doc in source.documents())
    show = progress if progress is not None else sys.stderr.isatty()
    hf_tok = _train_bpe(texts, vocab_size, progress=bool(show))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    hf_tok.save(str(tmp))
    os.replace(tmp, path)
    return BPETokenizer(hf_tok, vocab_size, key)
