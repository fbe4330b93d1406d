"""The contract between data and training.

Every data source the trainer can use is a ``StepSampler``: given the global step and a range of
rows of the global batch, it returns numpy arrays. What it returns is a pure function of
``(seed, step, row, config)`` -- no iterator state -- so that

* resuming at step ``s`` yields exactly the batches an uninterrupted run would have seen, and
* data-parallel ranks take disjoint row ranges of the same global batch without coordination,
  so a 2-process run sees the same global batch as a 1-process run.

A batch is a dict of numpy arrays with a leading batch dimension ``B`` (rows) and sequence
dimension ``T``:

``input_ids``   int64 ``[B, T]``   token ids fed to the model
``targets``     int64 ``[B, T]``   the token each position must predict
``loss_mask``   float32 ``[B, T]`` 1.0 where the loss counts, 0.0 elsewhere
``domain``      int64 ``[B, T]``   domain / class id of the document at each position (-1: none)

and, for sources with continuous items (``item_dim`` is not None):

``item_vectors`` float32 ``[B, T, item_dim]``  the vector fed at positions where ``item_mask``
``item_mask``    bool ``[B, T]``               True where the input is ``item_vectors`` (projected)
                                               instead of the embedding of ``input_ids``
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "domain")
ITEM_KEYS = ("item_vectors", "item_mask")


class DataConfigError(ValueError):
    """A data configuration problem, raised before training starts; the message names the key."""


def row_rng(seed: int, step: int, row: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one row of one step: independent of every other (step, row).

    ``stream`` separates independent uses inside a source (e.g. 0 = training rows, 1 = probes).
    """
    # Philox increments counter word 0 as it draws: the ids live in the upper words, so streams
    # of different (step, row) never overlap.
    key = [seed & 0xFFFFFFFFFFFFFFFF, stream]
    return np.random.Generator(np.random.Philox(key=key, counter=[0, 0, row, step]))


@dataclass
class ProbeSet:
    """A fixed evaluation set a source ships for the capability probes.

    ``batch`` has the same keys as a training batch. ``answer_positions`` marks, per row, the
    position whose ``targets`` value is the answer (for accuracy and answer log-probability).
    ``kind`` tells the probe how to score it: ``"answer"`` (accuracy and log-prob at the answer
    positions) or ``"loss"`` (mean cross-entropy under ``loss_mask``).
    """

    name: str
    batch: dict[str, np.ndarray]
    kind: str = "answer"
    answer_positions: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class StepSampler(abc.ABC):
    """Base class of every data source / mixer the trainer reads.

    Subclasses set ``vocab_size``, ``seq_len`` and (for continuous items) ``item_dim``, validate their
    configuration in ``__init__`` (raising :class:`DataConfigError` naming the ``data.<key>``), and
    implement :meth:`rows`.
    """

    vocab_size: int
    seq_len: int
    item_dim: int | None = None

    def __init__(self, seed: int = 0, curriculum: Any = None) -> None:
        self.seed = int(seed)
        self.curriculum = curriculum
        self.total_steps: int | None = None

    def bind(self, total_steps: int) -> None:
        """Told by the trainer before training: curricula expressed over the token budget need it."""
        self.total_steps = int(total_steps)

    @abc.abstractmethod
    def rows(self, step: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start..stop-1`` of the global batch of ``step``."""

    def batch(self, step: int, global_batch: int, rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray]:
        """This rank's share of the global batch of ``step``: a contiguous, disjoint row range."""
        if global_batch % world_size:
            raise DataConfigError(
                f"batch.global_size={global_batch} is not divisible by the number of processes ({world_size})"
            )
        per_rank = global_batch // world_size
        out = self.rows(step, rank * per_rank, (rank + 1) * per_rank)
        check_batch(out, self)
        return out

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Build caches (token stores, tokenizers) once, on one process, before training."""

    def probe_sets(self) -> list[ProbeSet]:
        """Fixed evaluation sets for the capability probes, built once per sampler: the start of a
        run asks for them several times (the metric check, the run files, the probe and topology
        monitors), and on text building them tokenizes every question."""
        if getattr(self, "_probe_cache", None) is None:
            self._probe_cache = self.build_probe_sets()
        return self._probe_cache

    def build_probe_sets(self) -> list[ProbeSet]:
        """What :meth:`probe_sets` returns; subclasses override this (none by default)."""
        return []

    def knobs_at(self, step: int) -> dict[str, float]:
        """The curriculum's settings at ``step`` (logged as ``curriculum/<knob>``); none by default."""
        return {}

    def batch_stats(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Source-specific measured statistics of an emitted batch (bridge density, unique facts...),
        merged by the diversity meter into its generic ones; none by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A few facts about the data worth recording in summary.json (unique tokens, classes...)."""
        return {}


def check_batch(batch: Mapping[str, np.ndarray], sampler: StepSampler) -> None:
    """Fail loudly (naming the key) when a sampler breaks the batch contract."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if sampler.item_dim is not None:
        missing += [k for k in ITEM_KEYS if k not in batch]
    if missing:
        raise ValueError(f"{type(sampler).__name__}.rows() returned no {missing}")
    shape = batch["input_ids"].shape
    if len(shape) != 2 or shape[1] != sampler.seq_len:
        raise ValueError(f"{type(sampler).__name__}: input_ids has shape {shape}, expected [B, {sampler.seq_len}]")
    for key in ("targets", "loss_mask", "domain"):
        if batch[key].shape != shape:
            raise ValueError(f"{type(sampler).__name__}: {key} has shape {batch[key].shape}, expected {shape}")
