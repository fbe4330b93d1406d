"""The checkpoint trail: ``checkpoints/step-<n>.ckpt`` on a log + linear schedule, for ``elab-retro``.

Online monitors see a run at the resolution their cost allows; the trail keeps the model itself at
many steps, so anything (the kNN graph, persistent homology, the LLC) can be recomputed after the
fact, densely around a jump that was only detected later. Like the Timaeus in-context-learning runs
and Pythia, the schedule is log-spaced early (where the model changes fastest per step) and linear
later; a disk budget bounds it.

A trail checkpoint holds the weights only: ``{"global_step": n, "state_dict": ...}`` with the
LightningModule's state dict (the keys of ``last.ckpt``'s), no optimizer state, so it is a quarter
of a resumable ``last.ckpt`` and loads with ``torch.load(weights_only=True)``. Rank 0 writes it
directly (no Lightning checkpoint hooks, no barrier between ranks): at ~100 files a run, the
saves must cost next to nothing. (A sharded strategy would need a gathered state dict; the
monitors already refuse those.) ``<n>`` is the number of optimizer
steps done (the checkpoint's ``global_step``); the online monitors log what they measure on that
model at step ``n - 1`` (see ``trainer.monitors``), and ``elab-retro`` does the same.

When the trail outgrows ``budget_mb`` it is thinned: the checkpoint whose removal leaves the
smallest gap in the trail goes first, so the spacing widens evenly instead of the trail being cut
at one end; checkpoints within ``protect_window`` steps of a detected jump's onset
(``events.jsonl``) go only when nothing else is left to remove. ``last.ckpt`` is never touched.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
import torch

from trainer.monitors.bus import Attached, MonitorBus
from trainer.run_dir import trail_steps
from trainer.schema import check_settings
from trainer.steps import global_step_of

log = logging.getLogger("emergence_lab")


def log_linear_steps(max_step: int, log_per_octave: int, every_n_steps: int, first: int = 1) -> set[int]:
    """Steps ``first..max_step`` at 2^(i / log_per_octave), rounded (1, 2, 3, 4, 6, 8, 11, 16, 23,
    ... at 2 per octave; none at 0), every ``every_n_steps`` (none at 0), and ``max_step``."""
    steps, i = {max_step}, 0
    while log_per_octave and (step := round(2 ** (i / log_per_octave))) <= max_step:
        steps.add(step)
        i += 1
    if every_n_steps:
        steps |= set(range(every_n_steps, max_step + 1, every_n_steps))
    return {step for step in steps if step >= first}


class CheckpointTrail(Attached, L.Callback):
    """Keeps ``dirpath/step-<n>.ckpt`` at the steps of a log + linear schedule.

    - ``log_per_octave``: log-spaced checkpoints per doubling of the step (0: none).
    - ``every_n_steps``: and one every so many steps (0: none); the final step is always kept.
    - ``budget_mb``: the trail's disk budget; beyond it, checkpoints are thinned (module docstring).
    - ``protect_window``: steps either side of a jump's onset that thinning spares while it can.
    """

    def __init__(self, dirpath: str, *, log_per_octave: int, every_n_steps: int,
                 budget_mb: float, protect_window: int) -> None:
        # The defaults live in conf/callbacks/default.yaml (trainer.schema.callback_defaults).
        check_settings("callbacks.CheckpointTrail", "callbacks.trail", {
            "log_per_octave": log_per_octave, "every_n_steps": every_n_steps,
            "budget_mb": budget_mb, "protect_window": protect_window})
        self.dirpath = Path(dirpath)
        self.log_per_octave, self.every_n_steps = log_per_octave, every_n_steps
        self.budget_bytes = int(budget_mb * 2**20)
        self.protect_window = protect_window
        self.schedule: set[int] = set()
        self.onsets: set[int] = set()  # global steps of the jumps' onsets, from the bus
        # Reported as summary.json's checkpoint_seconds, beside (not inside) monitor_seconds: the
        # trail writes checkpoints as RunCheckpoint does; it measures nothing during training.
        self.checkpoint_seconds = 0.0
        self.thinned = 0
        self.warned = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.schedule = log_linear_steps(trainer.max_steps, self.log_per_octave, self.every_n_steps)
        if trainer.is_global_zero:
            # A resume keeps the trail up to its checkpoint; anything later belongs to the part of
            # the run that is about to be trained again (and would otherwise mix two histories).
            for step, path in trail_steps(self.dirpath).items():
                if step > trainer.global_step:
                    path.unlink()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step not in self.schedule:
            return
        if not trainer.is_global_zero:
            return
        start = time.perf_counter()
        path = self.dirpath / f"step-{step}.ckpt"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a kill mid-write never leaves a truncated file.
        torch.save({"global_step": step, "state_dict": pl_module.state_dict()}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        self._thin()
        self.checkpoint_seconds += time.perf_counter() - start

    def subscribe(self, bus: MonitorBus) -> None:
        bus.subscribe_jumps(self.on_jumps)

    def on_jumps(self, events: list[dict]) -> None:
        """Jumps confirmed so far (after a resume: the ones up to its checkpoint, published again)."""
        self.onsets.update(global_step_of(int(e["onset_step"])) for e in events)

    def _protected(self) -> set[int]:
        """Trail steps near the onset of a jump detected so far."""
        if not self.protect_window:
            return set()
        return {
            step for step in trail_steps(self.dirpath)
            if any(abs(step - onset) <= self.protect_window for onset in self.onsets)
        }

    def _thin(self) -> None:
        trail = trail_steps(self.dirpath)
        sizes = {step: path.stat().st_size for step, path in trail.items()}
        total = sum(sizes.values())
        if total <= self.budget_bytes:
            return
        protected = self._protected()
        steps = sorted(trail)
        while total > self.budget_bytes and len(steps) > 2:
            victim = _smallest_gap(steps, exclude=protected) or _smallest_gap(steps, exclude=set())
            trail[victim].unlink()
            total -= sizes[victim]
            steps.remove(victim)
            self.thinned += 1
        if not self.warned:
            self.warned = True
            log.warning("checkpoint trail over callbacks.trail.budget_mb=%.0f: thinning it (%d "
                        "checkpoints left)", self.budget_bytes / 2**20, len(steps))


def _smallest_gap(steps: list[int], exclude: set[int]) -> int | None:
    """The inner step whose removal leaves the smallest gap (the first and last are kept)."""
    candidates = [
        (steps[i + 1] - steps[i - 1], steps[i])
        for i in range(1, len(steps) - 1)
        if steps[i] not in exclude
    ]
    return min(candidates)[1] if candidates else None
