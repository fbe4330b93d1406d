"""Callbacks of the backbone: throughput, and the run files of DESIGN.md's contract."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from trainer import run_info
from trainer.monitors.bus import Attached, MonitorBus
from trainer.run_dir import RunDir

log = logging.getLogger("emergence_lab")


class RunCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` every ``every_n_train_steps`` steps *and* at the final step
    (Lightning's ModelCheckpoint saves only on multiples, so a finished run would otherwise lose
    its last weights)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == trainer.max_steps and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Ctrl-C: the weights so far become ``last.ckpt``, so ``ckpt_path=last`` resumes here."""
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0 \
                and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Written to ``<name>.tmp`` and renamed: a kill during the write leaves the previous
        checkpoint whole, so the run can still be resumed (Lightning writes in place)."""
        tmp = filepath + ".tmp"
        super()._save_checkpoint(trainer, tmp)
        if trainer.is_global_zero and os.path.isfile(tmp):
            os.replace(tmp, filepath)
        trainer.strategy.barrier("RunCheckpoint.rename")
        self._last_checkpoint_saved = filepath


class Throughput(Attached, L.Callback):
    """Tokens per second of the training loop, from the first finished step on (start-up, compile
    and the first batch are excluded), logged as ``train/tokens_per_s``."""

    def __init__(self, tokens_per_step: int, log_every_n_steps: int = 50) -> None:
        self.tokens_per_step, self.log_every_n_steps = tokens_per_step, log_every_n_steps
        self.t0: float | None = None
        self.step0 = 0
        self.tokens_per_s: float | None = None

    def subscribe(self, bus: MonitorBus) -> None:
        bus.add_to_summary(self.summary)

    def summary(self) -> dict[str, Any]:
        return {"tokens_per_s": self.tokens_per_s}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.step0 = now, trainer.global_step
            return
        steps = trainer.global_step - self.step0
        if steps > 0:
            self.tokens_per_s = steps * self.tokens_per_step / (now - self.t0)
            if trainer.global_step % self.log_every_n_steps == 0:
                pl_module.log("train/tokens_per_s", self.tokens_per_s)


class RunSummary(Attached, L.Callback):
    """Writes ``summary.json`` (and creates ``events.jsonl``, which :class:`JumpWatch` fills) on
    rank 0 at the end of fit or on an exception, inside the training process, so it is right under
    every strategy (spawned DDP workers included)."""

    def __init__(self, run_dir: str, static: dict[str, Any], identity: dict[str, Any] | None = None,
                 run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.static = {**static, "run_id": run_id}
        self.identity = identity or {}
        self.run_id = run_id
        self.t_start = time.time()

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the config its weights belong to and the run's id, which a
        resume compares with its own before anything is written (``trainer.resume``)."""
        return {"identity": self.identity, "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the identity was compared before fit began."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            RunDir(self.run_dir).events_path.touch()

    def write(self, trainer, status: str, error: str | None = None) -> dict[str, Any]:
        metrics = {k: _to_float(v) for k, v in sorted(trainer.callback_metrics.items())}
        summary = {
            "status": status,
            "error": error,
            "run_dir": str(self.run_dir.resolve()),
            **self.static,
            "metrics": metrics,
            "steps": trainer.global_step,
            "tokens_seen": trainer.global_step * self.static["tokens_per_step"],
            "tokens_per_s": None,
            "wall_time_s": round(time.time() - self.t_start, 3),
            "jumps": [],
            "lead_lag": [],
            "invalid_metrics": [],
            "monitor_seconds": {},
            "checkpoint_seconds": {},
            **run_info.environment(),
            "transitions": write_run_transitions(trainer, self.run_dir, self.static),
        }
        summary.update(self.bus.summary())  # what the monitors add (the keys keep their places)
        RunDir(self.run_dir).write_summary(summary)
        return summary

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write(trainer, "interrupted" if trainer.interrupted else "completed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
            self.write(trainer, status, f"{type(exception).__name__}: {exception}")


def write_run_transitions(trainer, run_dir: Path, static: dict[str, Any]) -> dict[str, Any] | None:
    """``transitions.json`` from the CSV logger's rows; returns its summary for summary.json
    (None without a CSV logger). Lightning finalizes its loggers only after ``on_fit_end``, so the
    CSV is flushed first. A fit that fails is logged and must not cost the run its summary."""
    from trainer.loggers import ResumableCSVLogger
    from trainer.measures.transitions import fit_report, summarize
    from trainer.run_dir import RunDir, read_metrics_csv

    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)), None)
    if csv_logger is None:
        return None
    path = Path(csv_logger.experiment.metrics_file_path)
    try:
        csv_logger.save()
        _, rows = read_metrics_csv(path) if path.is_file() else ([], [])
        series = (static.get("config") or {}).get("transitions", {}).get("series") or []
        report = fit_report(rows, static["tokens_per_step"], series)
        RunDir(run_dir).write_transitions(report)
    except Exception as exc:  # noqa: BLE001 -- a measurement, not the run
        log.warning("transitions.json not written: %s: %s", type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    return summarize(report)


def _to_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


