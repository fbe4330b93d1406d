"""Loggers: a CSV logger that survives resume, and a wandb logger that never prompts or hangs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger, WandbLogger


class _KeepEarlierRowsWriter(_ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume we keep the rows logged
    before the checkpoint's step (later ones are logged again), so the file holds one whole curve."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        previous: list[dict[str, str]] = []
        path = Path(log_dir) / self.NAME_METRICS_FILE
        if keep_before_step is not None and path.is_file():
            with path.open(newline="") as f:
                previous = [row for row in csv.DictReader(f) if int(row["step"]) < keep_before_step]
        self._resuming = keep_before_step is not None
        super().__init__(log_dir)
        if previous:
            self.metrics = [{k: v for k, v in row.items() if v != ""} for row in previous]

    def _check_log_dir_exists(self) -> None:
        if not self._resuming:
            return super()._check_log_dir_exists()
        # The rows worth keeping are in memory; the file is rewritten from them, not lost.
        Path(self.metrics_file_path).unlink(missing_ok=True)


class ResumableCSVLogger(CSVLogger):
    """``csv/metrics.csv`` in the run dir, every logged series; on resume it continues the curve."""

    def __init__(
        self, save_dir: str, name: str = "csv", keep_before_step: int | None = None
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self._keep_before_step = keep_before_step

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepEarlierRowsWriter(self.log_dir, self._keep_before_step)
        return self._experiment


def wandb_mode() -> str:
    """Decide the wandb mode before ``wandb.init``, which would otherwise prompt (a TTY without a key)
    or raise (no TTY): honour WANDB_MODE, go online only when a key is configured, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def make_wandb_logger(
    save_dir: str,
    project: str = "emergence-lab",
    group: str | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    run_config: dict | None = None,
) -> WandbLogger:
    """A WandbLogger whose files go to ``<run dir>/wandb``; offline unless wandb is set up."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        group=group,
        name=name,
        tags=list(tags or []),
        mode=mode or wandb_mode(),
        config=run_config,
    )
    return logger
