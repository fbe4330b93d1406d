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
an interrupted build leaves no store behind (a build killed outright leaves its temporary dir,
removed by the next build once its builder's pid is gone). Opening checks every file's size and
modification time against the manifest and re-hashes only a file whose time changed (or every
file, with ``verify=True``): reopening an unchanged store reads no data, which on a 60 MB store of a real
corpus was most of a sweep job's start-up. A file that fails its size or checksum marks the store
corrupt: it is deleted and rebuilt. A file whose time changed but whose checksum still holds (a
copy, a restore) gets its new time recorded, so the next open is cheap again.

Building streams the source: documents are tokenised in batches of about ``ENCODE_CHUNK_CHARS``
characters with the tokenizer's batch API (``tokenizers`` spreads a batch over all cores) and
appended to ``tokens.bin``, so memory stays bounded by one batch plus a few numbers per document.
A progress bar (tqdm, tokens and tokens/s) shows on a terminal unless ``progress`` is false.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
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
# Characters per encode batch: large enough that the tokenizer's threads stay busy, small enough
# that a batch of text, ids and offsets holds a few tens of MB at most.
ENCODE_CHUNK_CHARS = 4_000_000


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
    """A held-out question: ``text`` is prompt and answer, the answer starting at ``answer_start``.
    ``whole``: the prompt must fit in one window (a question cut from its start loses its
    subject); a completion of training text may be cut, as training cuts it."""

    text: str
    answer_start: int
    domain: str
    whole: bool = True


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


def _verify(path: Path, key: str, rehash: bool = False) -> str | None:
    """Why the store at ``path`` cannot be used, or None when it is complete and intact.

    Sizes and modification times are compared with the manifest; a file is hashed only when its
    time differs from the recorded one (or always, with ``rehash``)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("key") != key or manifest.get("format") != FORMAT_VERSION:
        return "manifest belongs to another configuration"
    retimed = {}
    for name, meta in files.items():
        try:
            stat = (path / name).stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != meta["bytes"]:
            return f"{name} has {stat.st_size} bytes, the manifest says {meta['bytes']}"
        if rehash or stat.st_mtime_ns != meta.get("mtime_ns"):
            if _sha256(path / name) != meta["sha256"]:
                return f"{name} fails its checksum"
            if stat.st_mtime_ns != meta.get("mtime_ns"):
                retimed[name] = stat.st_mtime_ns
    if retimed:
        for name, mtime_ns in retimed.items():
            files[name]["mtime_ns"] = mtime_ns
        _write_manifest(path, manifest)
    return None


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace ``manifest.json`` atomically; a read-only cache keeps the old one (the next open
    then hashes the retimed files again, which is slower but still correct)."""
    tmp = path / f".manifest.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
        os.replace(tmp, path / "manifest.json")
    except OSError as err:
        log.debug("cannot update %s/manifest.json (%s)", path, err)
        tmp.unlink(missing_ok=True)


def _batches(documents: Iterator[Document], chars: int) -> Iterator[list[Document]]:
    """Consecutive documents in lists of about ``chars`` characters."""
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc.text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _progress_bar(kind: str, progress: bool | None) -> Any:
    """A tqdm bar counting tokens on stderr: on a terminal by default, never when ``progress`` is
    false, always when it is true."""
    import sys

    from tqdm import tqdm

    disable = not progress if progress is not None else not sys.stderr.isatty()
    return tqdm(desc=f"token store ({kind})", unit="tok", unit_scale=True, disable=disable,
                file=sys.stderr, mininterval=1.0)


def _write(path: Path, source: TextSource, tokenizer: Any, key: str,
           progress: bool | None = None) -> None:
    """Tokenize every document of ``source`` into a new store at ``path`` (which must not exist)."""
    path.mkdir(parents=True)
    token_dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    known = source.domain_names()
    domain_ids = {name: i for i, name in enumerate(known or [])}
    lengths, domains, bridges, fact_counts = [], [], [], []
    fact_ids, fact_spans = [], []

    def encode(chunk: list[Document]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Ids per document, with token -> character offsets only where facts need them (a
        corpus without facts skips building them, a per-token Python loop)."""
        with_facts = [i for i, doc in enumerate(chunk) if doc.facts]
        if not with_facts:
            return [(ids, None) for ids in tokenizer.encode_batch([d.text for d in chunk])]
        if len(with_facts) == len(chunk):
            return tokenizer.encode_with_offsets([d.text for d in chunk])
        out = [(ids, None) for ids in tokenizer.encode_batch([d.text for d in chunk])]
        located = tokenizer.encode_with_offsets([chunk[i].text for i in with_facts])
        for i, encoded in zip(with_facts, located):
            out[i] = encoded
        return out

    def flush(chunk: list[Document], out) -> int:
        kept = []
        for doc, (ids, char_starts) in zip(chunk, encode(chunk)):
            if len(ids) == 0:
                continue
            if doc.domain not in domain_ids:
                if known is not None:
                    raise ValueError(f"{source.kind}: document domain {doc.domain!r} not in {known}")
                domain_ids[doc.domain] = len(domain_ids)
            kept.append(ids)
            lengths.append(len(ids))
            domains.append(domain_ids[doc.domain])
            bridges.append(doc.bridge)
            fact_counts.append(len(doc.facts))
            for fact_id, char_start, char_end in doc.facts:
                start = token_index_at(char_starts, char_start)
                end = np.searchsorted(char_starts, char_end - 1, side="right")
                fact_ids.append(fact_id)
                fact_spans.append((start, end))
        if kept:
            np.concatenate(kept).astype(token_dtype).tofile(out)
        return sum(len(ids) for ids in kept)

    with open(path / "tokens.bin", "wb") as out, _progress_bar(source.kind, progress) as bar:
        for chunk in _batches(source.documents(), ENCODE_CHUNK_CHARS):
            bar.update(flush(chunk, out))
    if not lengths:
        raise ValueError(f"{source.kind}: the source produced no non-empty documents")
    np.save(path / "doc_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(path / "doc_domain.npy", np.asarray(domains, dtype=np.int32))
    np.save(path / "doc_bridge.npy", np.asarray(bridges, dtype=bool))
    np.save(path / "fact_offsets.npy",
            np.concatenate([[0], np.cumsum(fact_counts)]).astype(np.int64))
    np.save(path / "fact_ids.npy", np.asarray(fact_ids, dtype=np.int32))
    np.save(path / "fact_spans.npy", np.asarray(fact_spans, dtype=np.int32).reshape(-1, 2))
    files = {name: {"bytes": (path / name).stat().st_size, "sha256": _sha256(path / name),
                    "mtime_ns": (path / name).stat().st_mtime_ns}
             for name in ("tokens.bin", *ARRAY_FILES)}
    manifest = {
        "format": FORMAT_VERSION, "key": key, "source": source.config(),
        "tokenizer": tokenizer.config(), "token_dtype": np.dtype(token_dtype).name,
        "domain_names": list(domain_ids), "n_documents": len(lengths),
        "n_tokens": int(sum(lengths)), "n_facts": int(source.n_facts),
        "built_at": time.time(), "files": files,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))


_HOST = socket.gethostname()
_BUILD_DIR = re.compile(r"\.(\d+)@(.+)\.tmp$")  # the end of a build dir's name: .<pid>@<host>.tmp


def _remove_dead_builds(stores: Path) -> None:
    """Remove the build dirs of builders that died (killed while tokenizing): those this host's
    processes started whose pid is gone. A live builder's, or another host's, are left; so is a
    dir named by an older version (no pid) until it is a day old."""
    for tmp in stores.glob(".*.tmp") if stores.is_dir() else []:
        match = _BUILD_DIR.search(tmp.name)
        if match is None:
            try:
                dead = time.time() - tmp.stat().st_mtime > 86400
            except OSError:  # removed meanwhile
                continue
        else:
            dead = match[2] == _HOST and not _pid_alive(int(match[1]))
        if dead:
            log.info("token store: removing %s, left by a build that was killed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def open_or_build(source: TextSource, tokenizer: Any, cache_dir: str | os.PathLike,
                  verify: bool = False, progress: bool | None = None) -> TokenStore:
    """The store of ``source`` tokenized by ``tokenizer``: reused when intact, else (re)built.

    ``verify`` re-hashes every file of an existing store (``data.verify=true``); otherwise only
    files whose size or modification time changed are looked at. ``progress``: see
    :func:`_progress_bar`."""
    key = store_key(source, tokenizer)
    path = Path(cache_dir) / "token_store" / f"{source.kind}-{key}"
    if path.exists():
        problem = _verify(path, key, rehash=verify)
        if problem is None:
            return TokenStore(path)
        log.warning("token store %s is unusable (%s): rebuilding it", path, problem)
        shutil.rmtree(path, ignore_errors=True)
    _remove_dead_builds(path.parent)
    # The builder's pid and host in the name: a build killed midway is recognised and removed.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.{os.getpid()}@{_HOST}.tmp")
    try:
        _write(tmp, source, tokenizer, key, progress)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same store first: use theirs
            if _verify(path, key) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenStore(path)
