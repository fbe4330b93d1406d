"""What a batch of the text mixer really contains: bridges, packing, fragments, facts (logged as
``data/*`` by the data meter beside the generic statistics of :mod:`data_mixers.diversity`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DocumentFacts:
    """Per document, what the statistics look up: its bridge flags, and its facts as
    ``fact_ids[fact_offsets[d]:fact_offsets[d + 1]]`` with their token ``fact_spans``."""

    bridge: np.ndarray
    term_bridge: np.ndarray
    fact_offsets: np.ndarray
    fact_ids: np.ndarray
    fact_spans: np.ndarray
    n_facts: int


def batch_stats(docs: DocumentFacts, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """What the batch really contains.

    ``bridge_density``: fraction of rows holding a document that links two domains in its
    content: a labelled bridge (``bridge_doc_rows``: the world's relations into another
    domain) or a term bridge (``term_bridge_rows``: it uses terms anchored in another domain,
    see :func:`data_mixers.diversity.term_bridge_documents`; defined on any corpus).
    ``cross_domain_rows``: rows whose window packs text of two or more domains side by side
    (a fragmentation effect, not a bridge: it is not counted in ``bridge_density``).
    ``unique_facts``: distinct
    facts whose whole sentence lies inside an emitted fragment (``fact_coverage``: as a
    fraction of all facts); ``mean_fragment_length`` and ``docs_per_window``: runs of one
    document, per run and per row; ``unique_documents``.
    """
    doc_id = np.asarray(batch["doc_id"])
    domain = np.asarray(batch["domain"])
    present = doc_id >= 0
    previous = np.concatenate([np.full((len(doc_id), 1), -1), doc_id[:, :-1]], axis=1)
    run_start = present & (doc_id != previous)
    n_runs = int(run_start.sum())
    safe_id = np.where(present, doc_id, 0)
    has_bridge = (present & docs.bridge[safe_id]).any(axis=1)
    has_term_bridge = (present & docs.term_bridge[safe_id]).any(axis=1)
    ordered = np.sort(domain, axis=1)
    n_domains = (((ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum(axis=1)
                 + (ordered[:, 0] >= 0))
    cross = n_domains >= 2
    stats = {
        "bridge_density": float((has_bridge | has_term_bridge).mean()),
        "bridge_doc_rows": float(has_bridge.mean()),
        "term_bridge_rows": float(has_term_bridge.mean()),
        "cross_domain_rows": float(cross.mean()),
        "mean_fragment_length": float(present.sum() / max(n_runs, 1)),
        "docs_per_window": float(n_runs / len(doc_id)),
        "unique_documents": float(len(np.unique(doc_id[present]))),
    }
    if docs.n_facts:
        facts = _facts_in_runs(docs, doc_id, np.asarray(batch["doc_pos"]), run_start)
        stats["unique_facts"] = float(len(facts))
        stats["fact_coverage"] = len(facts) / docs.n_facts
    return stats

def _facts_in_runs(docs: DocumentFacts, doc_id: np.ndarray, doc_pos: np.ndarray,
                   run_start: np.ndarray) -> set[int]:
    """Facts whose token span lies inside one run (a fragment: consecutive positions of one
    document); starts and ends pair up because ``np.nonzero`` lists both in row order."""
    following = np.concatenate([doc_id[:, 1:], np.full((len(doc_id), 1), -1)], axis=1)
    run_end = (doc_id >= 0) & (doc_id != following)
    first, last = doc_pos[run_start], doc_pos[run_end]
    facts: set[int] = set()
    for d, lo_pos, hi_pos in zip(doc_id[run_start], first, last):
        lo, hi = docs.fact_offsets[d], docs.fact_offsets[d + 1]
        spans = docs.fact_spans[lo:hi]
        inside = (spans[:, 0] >= lo_pos) & (spans[:, 1] <= hi_pos + 1)
        facts.update(docs.fact_ids[lo:hi][inside].tolist())
    return facts
