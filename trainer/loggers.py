"""Loggers: a CSV logger that survives resume, and a wandb logger that never prompts or hangs."""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger

log = logging.getLogger("emergence_lab")


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and whole rows of a metrics.csv. A process killed while appending leaves a
    last line without its line end (a torn row): it is dropped, as is any row whose step is not
    an integer, so a killed run can always be resumed and read."""
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            continue
        try:
            int(row.get("step") or "")
        except ValueError:
            continue
        rows.append(row)
    return header, rows


def _write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """Through a temporary file and a rename: a kill mid-write leaves the old file whole."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


class _KeepEarlierRowsWriter(_ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv. On resume from step ``s`` we keep
    the rows of steps before ``s`` (later ones are logged again), so the file holds one whole
    curve. The kept rows are written back at once, through a temporary file and a rename, so a
    crash right after the resume loses nothing; so is the whole file when a new series widens
    the header (Lightning rewrites it in place)."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._keep_before_step is None or not path.is_file():
            return super()._check_log_dir_exists()
        header, rows = read_metrics_csv(path)
        if "step" not in header:  # nothing readable was kept: start the file afresh
            path.unlink()
            return
        _write_rows(path, header, [r for r in rows if int(r["step"]) < self._keep_before_step])
        self.metrics_keys = header

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        _, rows = read_metrics_csv(path)
        _write_rows(path, fieldnames, rows)


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


def server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the wandb server (``WANDB_BASE_URL``, default api.wandb.ai) accepts a TCP
    connection within ``timeout_s``: without this check wandb.init blocks ~100 s, then fails."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout_s):
            return True
    except OSError:
        return False


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
    wandb run instead of starting a second one.

    The logger never stops training: online with no server reachable within a few seconds, or a
    wandb.init that fails (a rejected key), falls back to offline with one warning line."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(save_dir) / "wandb_run_id"
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    mode = mode or wandb_mode()
    if mode == "online" and not server_reachable():
        log.warning("wandb: no server reachable at %s within 3 s: logging offline (upload later "
                    "with `wandb sync %s/wandb/offline-run-*`)",
                    os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai", save_dir)
        mode = "offline"

    def build(mode: str) -> WandbLogger:
        return WandbLogger(
            id=id_file.read_text().strip(), resume="allow", save_dir=save_dir, project=project,
            group=group, name=name, tags=list(tags or []), mode=mode, config=run_config,
        )

    logger = build(mode)
    if mode != "online":
        return logger
    try:
        logger.experiment  # noqa: B018 -- wandb.init now, where a failure can still fall back
    except Exception as exc:
        import wandb

        log.warning("wandb: online start failed (%s: %s): logging offline",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        wandb.finish(exit_code=1)
        logger = build("offline")
    return logger
