"""What one setting of the text mixer's knobs implies, as arrays: the domain CDF, the pool of
documents that may be drawn, and the pieces per row. Cached per setting by the mixer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class Plan:
    """The arrays one knob setting implies: domain CDF, document pool, pieces per row."""

    def __init__(self, knobs: Mapping[str, Any], probs: np.ndarray, seq_len: int,
                 doc_len: np.ndarray, domain_docs: list[np.ndarray],
                 domain_tokens: np.ndarray) -> None:
        """``domain_docs``: per domain, the ids of its trainable documents (indices into
        ``doc_len``, tokens per document); ``domain_tokens``: their tokens, per domain."""
        self.probs = probs
        self.cdf = np.cumsum(probs)
        self.cdf[-1] = 1.0
        self.rows_mode = knobs["weights_count"] == "rows"
        fl = knobs["fragment_length"]
        self.fragment_length = int(fl) if fl else None
        pool = self._pool(doc_len, domain_docs, domain_tokens, knobs["unique_tokens"], probs > 0)
        self.pool_count = np.array([len(p) for p in pool], dtype=np.int64)
        self.pool_offset = np.concatenate([[0], np.cumsum(self.pool_count)[:-1]])
        self.pool_docs = np.concatenate(pool).astype(np.int64)
        self.pool_tokens = int(doc_len[self.pool_docs].sum())
        width = seq_len + 1
        k = knobs["docs_per_window"]
        if k:
            self.slot, self.n_pieces = width // int(k), int(k)
        else:
            shortest = int(doc_len[self.pool_docs].min())
            if self.fragment_length is not None:
                shortest = min(shortest, self.fragment_length)
            self.slot, self.n_pieces = None, math.ceil(width / (shortest + 1))

    @staticmethod
    def _pool(doc_len: np.ndarray, domain_docs: list[np.ndarray], domain_tokens: np.ndarray,
              unique_tokens: int | None, used: np.ndarray) -> list[np.ndarray]:
        """Per domain, the documents that may be drawn: all, or a prefix of each used domain
        whose tokens add up to its share of ``unique_tokens``."""
        if unique_tokens is None:
            return [docs if used[d] else docs[:0] for d, docs in enumerate(domain_docs)]
        fraction = float(unique_tokens) / domain_tokens[used].sum()
        pool = []
        for d, docs in enumerate(domain_docs):
            if not used[d]:
                pool.append(docs[:0])
                continue
            cumulative = np.cumsum(doc_len[docs])
            n = np.searchsorted(cumulative, fraction * domain_tokens[d], side="right")
            pool.append(docs[:max(1, n)])
        return pool
