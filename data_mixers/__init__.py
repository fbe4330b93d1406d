"""Data for emergence-lab: sources, token store, mixer, curricula, diversity statistics.

Everything the trainer reads is a :class:`data_mixers.base.StepSampler`.
"""

from data_mixers.base import DataConfigError, ProbeSet, StepSampler, row_rng

__all__ = ["DataConfigError", "ProbeSet", "StepSampler", "row_rng"]
