"""Loggers: a CSV logger that survives resume, and a wandb logger that never prompts or hangs."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger


class _KeepEarlierRowsWriter(_ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv. On resume from step ``s`` we keep
    the rows of steps before ``s`` (later ones are logged again), so the file holds one whole
    curve. The kept rows are written back at once, through a temporary file and a rename, so a
    crash right after the resume loses nothing."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._keep_before_step is None or not path.is_file():
            return super()._check_log_dir_exists()
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if int(r["step"]) < self._keep_before_step]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        self.metrics_keys = header


class ResumableCSVLogger(CSVLogger):
    """``csv/metrics.csv`` in the run dir, every logged series; on resume it continues the curve."""

    def __init__(
        self, save_dir: str, name: str = "csv", keep_before_step: int | None = None
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self._keep_before_step = keep_before_step

    @property
    @rank_zero_experiment
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
    """A WandbLogger whose files go to ``<run dir>/wandb``; offline unless wandb is set up.

    The wandb run id is kept in ``<run dir>/wandb_run_id``: a resumed job continues the same
    wandb run instead of starting a second one."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(save_dir) / "wandb_run_id"
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    logger = WandbLogger(
        id=id_file.read_text().strip(),
        resume="allow",
        save_dir=save_dir,
        project=project,
        group=group,
        name=name,
        tags=list(tags or []),
        mode=mode or wandb_mode(),
        config=run_config,
    )
    return logger
