"""The token store: a text source tokenized once into flat arrays the mixer only indexes.

One directory per (source config, tokenizer config, format version), named by a hash of them, so a
changed source or tokenizer builds a new store and an unchanged one is reused::

    <cache_dir>/token_store/<source kind>-<hash>/
        tokens.bin         all documents' tokens back to back (uint16, or uint32 for big vocabs)
        doc_offsets.npy    int64 [N+1]: document i is tokens[doc_offsets[i]:doc_offsets[i+1]]
        doc_domain.npy     int32 [N]: domain id (an index into manifest["domain_names"])
        doc_bridge.npy     bool  [N]: the document joins two domains (a "bridge" document)
        fact_offsets.npy   int64 [N+1]: document i states facts fact_ids[fact_offsets[i]:...]
        fact_ids.npy       int32 [F]: global fact ids (countable facts of the world source)
        fact_spans.npy     int32 [F, 2]: token span [start, end) of each stated fact in its document
        manifest.json      config, counts, domain names, and size + sha256 of every file above

A store is built in a temporary sibling directory and renamed into place only when complete, so
an interrupted build leaves no store behind. Opening checks the manifest's sizes and checksums; a
corrupt or truncated store is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data_mixers.tokenizer import token_index_at

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAY_FILES = ("doc_offsets.npy", "doc_domain.npy", "doc_bridge.npy", "fact_offsets.npy",
               "fact_ids.npy", "fact_spans.npy")
ENCODE_CHUNK = 512


@dataclass
class Document:
    """One document of a text source.

    ``facts`` lists ``(fact_id, char_start, char_end)`` for every countable fact the text states
    (empty for corpora without ground truth); ``bridge`` marks text that joins two domains.
    """

    text: str
    domain: str
    facts: list[tuple[int, int, int]] = field(default_factory=list)
    bridge: bool = False


@dataclass
class ProbeQuestion:
    """A held-out question: ``text`` is prompt and answer, the answer starting at ``answer_start``."""

    text: str
    answer_start: int
    domain: str


class TextSource(Protocol):
    """What the token store and the mixer need from a source of documents."""

    kind: str

    def config(self) -> dict[str, Any]:
        """Everything that determines the documents (hashed into the store's cache key)."""

    def documents(self) -> Iterator[Document]:
        """The documents, in the same order on every call."""

    def domain_names(self) -> list[str] | None:
        """Domain names in id order when known up front; None: ids follow first appearance."""

    def probe_questions(self) -> dict[str, list[ProbeQuestion]]:
        """Named held-out question sets (empty when the source has none)."""

    @property
    def n_facts(self) -> int:
        """How many distinct fact ids the documents can state (0 when not countable)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_key(source: TextSource, tokenizer: Any) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "source": source.config(),
                       "tokenizer": tokenizer.config()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TokenStore:
    """A built, verified store opened read-only; ``tokens`` is a memmap, the rest small arrays."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.tokens = np.memmap(self.path / "tokens.bin", mode="r",
                                dtype=np.dtype(self.manifest["token_dtype"]))
        arrays = {name[:-4]: np.load(self.path / name) for name in ARRAY_FILES}
        self.doc_offsets = arrays["doc_offsets"]
        self.doc_domain = arrays["doc_domain"]
        self.doc_bridge = arrays["doc_bridge"]
        self.fact_offsets = arrays["fact_offsets"]
        self.fact_ids = arrays["fact_ids"]
        self.fact_spans = arrays["fact_spans"]
        self.domain_names: list[str] = list(self.manifest["domain_names"])
        self.n_facts = int(self.manifest["n_facts"])

    @property
    def n_documents(self) -> int:
        return len(self.doc_domain)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_offsets)


def _verify(path: Path, key: str) -> str | None:
    """Why the store at ``path`` cannot be used, or None when it is complete and intact."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("key") != key or manifest.get("format") != FORMAT_VERSION:
        return "manifest belongs to another configuration"
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.exists():
            return f"{name} is missing"
        if file.stat().st_size != meta["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if _sha256(file) != meta["sha256"]:
            return f"{name} fails its checksum"
    return None


def _write(path: Path, source: TextSource, tokenizer: Any, key: str) -> None:
    """Tokenize every document of ``source`` into a new store at ``path`` (which must not exist)."""
    path.mkdir(parents=True)
    token_dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    known = source.domain_names()
    domain_ids = {name: i for i, name in enumerate(known or [])}
    lengths, domains, bridges, fact_counts = [], [], [], []
    fact_ids, fact_spans = [], []

    def flush(chunk: list[Document], out) -> None:
        encoded = tokenizer.encode_with_offsets([d.text for d in chunk])
        for doc, (ids, char_starts) in zip(chunk, encoded):
            if len(ids) == 0:
                continue
            if doc.domain not in domain_ids:
                if known is not None:
                    raise ValueError(f"{source.kind}: document domain {doc.domain!r} not in {known}")
                domain_ids[doc.domain] = len(domain_ids)
            ids.astype(token_dtype).tofile(out)
            lengths.append(len(ids))
            domains.append(domain_ids[doc.domain])
            bridges.append(doc.bridge)
            fact_counts.append(len(doc.facts))
            for fact_id, char_start, char_end in doc.facts:
                start = token_index_at(char_starts, char_start)
                end = np.searchsorted(char_starts, char_end - 1, side="right")
                fact_ids.append(fact_id)
                fact_spans.append((start, end))

    with open(path / "tokens.bin", "wb") as out:
        chunk: list[Document] = []
        for doc in source.documents():
            chunk.append(doc)
            if len(chunk) == ENCODE_CHUNK:
                flush(chunk, out)
                chunk = []
        flush(chunk, out)
    if not lengths:
        raise ValueError(f"{source.kind}: the source produced no non-empty documents")
    np.save(path / "doc_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(path / "doc_domain.npy", np.asarray(domains, dtype=np.int32))
    np.save(path / "doc_bridge.npy", np.asarray(bridges, dtype=bool))
    np.save(path / "fact_offsets.npy",
            np.concatenate([[0], np.cumsum(fact_counts)]).astype(np.int64))
    np.save(path / "fact_ids.npy", np.asarray(fact_ids, dtype=np.int32))
    np.save(path / "fact_spans.npy", np.asarray(fact_spans, dtype=np.int32).reshape(-1, 2))
    files = {name: {"bytes": (path / name).stat().st_size, "sha256": _sha256(path / name)}
             for name in ("tokens.bin", *ARRAY_FILES)}
    manifest = {
        "format": FORMAT_VERSION, "key": key, "source": source.config(),
        "tokenizer": tokenizer.config(), "token_dtype": np.dtype(token_dtype).name,
        "domain_names": list(domain_ids), "n_documents": len(lengths),
        "n_tokens": int(sum(lengths)), "n_facts": int(source.n_facts),
        "built_at": time.time(), "files": files,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))


def open_or_build(source: TextSource, tokenizer: Any, cache_dir: str | os.PathLike) -> TokenStore:
    """The store of ``source`` tokenized by ``tokenizer``: reused when intact, else (re)built."""
    key = store_key(source, tokenizer)
    path = Path(cache_dir) / "token_store" / f"{source.kind}-{key}"
    if path.exists():
        problem = _verify(path, key)
        if problem is None:
            return TokenStore(path)
        log.warning("token store %s is unusable (%s): rebuilding it", path, problem)
        shutil.rmtree(path, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write(tmp, source, tokenizer, key)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same store first: use theirs
            if _verify(path, key) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenStore(path)
