"""Any Hugging Face ``datasets`` corpus as a text source: a hub name or local files.

Local files (``data_files``: json, jsonl, parquet, csv or text) are loaded with the builder their
extension names. Domains come from ``domain_column``; without one, every file is its own domain
(named by its file name), which is the natural layout of "one corpus per domain" collections.
``streaming=True`` reads the corpus lazily (a large hub corpus need not be downloaded whole);
``max_documents`` caps how many documents enter the token store (split evenly over files when
each file is a domain).

Problems are reported before training as :class:`DataConfigError` naming the key, the file and
the column: a missing file, a text or domain column the data does not have, an unreachable hub
dataset.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_mixers.base import DataConfigError
from data_mixers.token_store import Document, ProbeQuestion

# Rows per read: a few MB of text for ordinary documents, and bounded memory when streaming.
READ_BATCH = 1000
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
            ".txt": "text", ".text": "text"}


class HFSource:
    """Documents of a ``datasets`` corpus (see the module docstring)."""

    kind = "hf"
    n_facts = 0

    def __init__(self, path: str | None = None, data_files: str | list[str] | None = None,
                 name: str | None = None, split: str = "train", text_column: str = "text",
                 domain_column: str | None = None, streaming: bool = False,
                 max_documents: int | None = None, load_kwargs: dict[str, Any] | None = None
                 ) -> None:
        if path is None and not data_files:
            raise DataConfigError("data.source: set path (a hub dataset or builder) or data_files")
        if max_documents is not None and int(max_documents) < 1:
            raise DataConfigError(f"data.source.max_documents={max_documents} must be >= 1")
        self.files = self._resolve_files(data_files)
        if path is None:
            kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in self.files}
            if None in kinds or len(kinds) != 1:
                raise DataConfigError(
                    f"data.source.data_files={data_files!r}: cannot infer one builder from the "
                    f"extensions (known: {sorted(BUILDERS)}); set data.source.path to the builder")
            path = kinds.pop()
        self.path, self.name, self.split = path, name, split
        self.text_column, self.domain_column = text_column, domain_column
        self.streaming = bool(streaming)
        self.max_documents = None if max_documents is None else int(max_documents)
        self.load_kwargs = dict(load_kwargs or {})

    @staticmethod
    def _resolve_files(data_files: str | list[str] | None) -> list[str]:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files or [])
        files = []
        for pattern in patterns:
            matches = sorted(glob.glob(os.path.expanduser(str(pattern))))
            if not matches:
                raise DataConfigError(f"data.source.data_files: no file matches {pattern!r}")
            files += [os.path.abspath(m) for m in matches]
        return files

    def config(self) -> dict[str, Any]:
        """The load arguments, plus size and modification time of each local file, so an edited
        file invalidates the token store."""
        files = [{"path": f, "bytes": os.path.getsize(f), "mtime_ns": os.stat(f).st_mtime_ns}
                 for f in self.files]
        return {"kind": self.kind, "path": self.path, "name": self.name, "split": self.split,
                "files": files, "text_column": self.text_column,
                "domain_column": self.domain_column, "streaming": self.streaming,
                "max_documents": self.max_documents, "load_kwargs": self.load_kwargs}

    def _per_file(self) -> bool:
        return self.domain_column is None and len(self.files) > 0

    def domain_names(self) -> list[str] | None:
        if self._per_file():
            return [Path(f).name for f in self.files]
        if self.domain_column is None:
            return [self.name or str(self.path)]
        return None

    def probe_questions(self) -> dict[str, list[ProbeQuestion]]:
        return {}

    def _load(self, files: list[str] | None) -> Any:
        import datasets

        where = files[0] if files and len(files) == 1 else (files or self.path)
        empty = [f for f in files or [] if os.path.getsize(f) == 0]
        if empty:  # else the builder fails with a bare "StopIteration"
            raise DataConfigError(f"data.source.data_files: {empty[0]} is empty (0 bytes): "
                                  "no documents; remove it or give a file with rows")
        # datasets' own bars ("Generating train split", one per file) only on a terminal: in a log
        # file they are noise, and the token store shows the build's progress.
        quiet = not sys.stderr.isatty() and datasets.is_progress_bar_enabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(self.path, self.name, data_files=files, split=self.split,
                                       streaming=self.streaming, **self.load_kwargs)
        except Exception as err:
            cause = f" ({type(err.__cause__).__name__}: {err.__cause__})" if err.__cause__ else ""
            raise DataConfigError(f"data.source.path={self.path!r}: cannot load {where!r}: "
                                  f"{type(err).__name__}: {err}{cause}") from err
        finally:
            if quiet:
                datasets.enable_progress_bars()
        columns = list(ds.column_names or next(iter(ds), {}).keys())
        for key, column in (("text_column", self.text_column),
                            ("domain_column", self.domain_column)):
            if column is not None and column not in columns:
                raise DataConfigError(f"data.source.{key}={column!r} is not a column of {where!r} "
                                      f"(columns: {columns})")
        return ds

    def documents(self) -> Iterator[Document]:
        if self._per_file():
            cap = None if self.max_documents is None else max(1, self.max_documents // len(self.files))
            for file, domain in zip(self.files, self.domain_names()):
                yield from self._decoded(self._documents(self._load([file]), cap, domain), file)
        else:
            default = None if self.domain_column else self.domain_names()[0]
            docs = self._documents(self._load(self.files or None), self.max_documents, default)
            yield from self._decoded(docs, self.files or self.path)

    @staticmethod
    def _decoded(documents: Iterator[Document], where: Any) -> Iterator[Document]:
        """Bytes that are not UTF-8 surface while rows are read: name the file(s)."""
        try:
            yield from documents
        except UnicodeDecodeError as exc:
            raise DataConfigError(f"data.source.data_files: {where} is not valid UTF-8 ({exc}); "
                                  "convert it (e.g. iconv -f latin1 -t utf-8)") from None

    def _documents(self, ds: Any, cap: int | None, domain: str | None) -> Iterator[Document]:
        # Column batches, not rows: formatting each row as a dict cost ~10x more than reading.
        emitted = 0
        for batch in ds.iter(batch_size=READ_BATCH):
            texts = batch[self.text_column]
            domains = batch[self.domain_column] if domain is None else [domain] * len(texts)
            for text, doc_domain in zip(texts, domains):
                if not text:
                    continue
                if not isinstance(text, str):  # a number or a list would be tokenized as its repr
                    raise DataConfigError(
                        f"data.source.text_column={self.text_column!r} holds a "
                        f"{type(text).__name__} ({str(text)[:40]!r}), not text, in "
                        f"{domain or self.files or self.path}")
                yield Document(text, str(doc_domain))
                emitted += 1
                if cap is not None and emitted >= cap:
                    return
