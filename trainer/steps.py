"""The step conventions, in one place.

Lightning's ``global_step`` counts the optimizer steps done. A value measured after a training step
is logged at the *log step* ``global_step - 1``: the index of the batch just trained on, which is
the step Lightning logs that batch's ``train/*`` values at. One row of ``csv/metrics.csv`` then
holds the loss of batch i and what the model looked like right after it, and a resume from a
checkpoint taken after batch i keeps exactly the rows up to i. ``events.jsonl``, ``llc/`` and
``retro/`` use log steps; checkpoints (``last.ckpt``, the trail's ``step-<n>.ckpt``) are named by
their global step.
"""

from __future__ import annotations


def log_step(global_step: int) -> int:
    """The log step of what is measured once ``global_step`` steps are done."""
    return global_step - 1


def global_step_of(log_step: int) -> int:
    """The global step (steps done, a checkpoint's name) whose measurements carry ``log_step``."""
    return log_step + 1


def tokens_seen(log_step: int, tokens_per_step: int) -> int:
    """Tokens trained on once the batch of ``log_step`` is done: ``log_step + 1`` batches."""
    return (log_step + 1) * tokens_per_step
