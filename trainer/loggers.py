"""Loggers: a CSV logger that survives resume, and a wandb logger that never prompts or hangs."""

from __future__ import annotations

import base64
import json
import logging
import netrc
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from trainer.config import ConfigError
from trainer.run_dir import read_metrics_csv, write_metrics_csv

log = logging.getLogger("emergence_lab")


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
        write_metrics_csv(path, header, [r for r in rows if int(r["step"]) < self._keep_before_step])
        self.metrics_keys = header

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        _, rows = read_metrics_csv(path)
        write_metrics_csv(path, fieldnames, rows)


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


# The values wandb.Settings accepts for ``mode`` (WANDB_MODE).
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
# Seconds the preflight waits for the server's answer; wandb.init's own wait once it answered.
PREFLIGHT_S, INIT_TIMEOUT_S = 5.0, 30.0


def wandb_mode() -> str:
    """Decide the wandb mode before ``wandb.init``, which would otherwise prompt (a TTY without a key)
    or raise (no TTY): honour WANDB_MODE, go online only when a key is configured, else offline."""
    if os.environ.get("WANDB_MODE"):
        mode = os.environ["WANDB_MODE"]
        if mode not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={mode!r} is not a wandb mode: set one of "
                              f"{', '.join(WANDB_MODES)}, or unset it")
        return mode
    if _api_key("api.wandb.ai"):
        return "online"
    return "offline"


def _api_key(host: str | None) -> str | None:
    """The key wandb would use for ``host``: WANDB_API_KEY, else the netrc entry `wandb login`
    writes."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(path).authenticators(host or "") if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def server_problem(timeout_s: float = PREFLIGHT_S) -> str | None:
    """Why the wandb server (``WANDB_BASE_URL``, default api.wandb.ai) cannot take this run, or
    None when it answers the API's viewer query with the key within ``timeout_s``. A server that
    accepts connections and never answers would block wandb.init 90 s; one that rejects the key
    makes it fail after some seconds: either way the run logs offline instead."""
    base = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")
    headers = {"Content-Type": "application/json"}
    key = _api_key(urlparse(base).hostname)
    if key:
        headers["Authorization"] = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(f"{base}/graphql", headers=headers,
                                     data=json.dumps({"query": "{ viewer { id } }"}).encode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(1 << 16)
        return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return (f"{base} rejected the API key (HTTP {exc.code}; check WANDB_API_KEY or "
                    f"`wandb login`)")
        return f"{base} answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return f"{base} did not answer within {timeout_s:g} s"
        return f"no server reachable at {base} ({exc.reason})"
    except TimeoutError:  # connected, then no answer
        return f"{base} did not answer within {timeout_s:g} s"
    except OSError as exc:  # the answer was cut
        return f"{base} did not answer ({type(exc).__name__}: {exc})"


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

    The logger never stops training and never waits long: online, the server must first answer
    a query with the key within 5 s (:func:`server_problem`), and wandb.init is bounded to 30 s;
    otherwise, or when wandb.init fails, the run logs offline with one warning line."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(save_dir) / "wandb_run_id"
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    mode = mode or wandb_mode()
    sync = f"upload later with `wandb sync {save_dir}/wandb/offline-run-*`"
    problem = server_problem() if mode == "online" else None
    if problem is not None:
        log.warning("wandb: %s: logging offline (%s)", problem, sync)
        mode = "offline"

    def build(mode: str) -> WandbLogger:
        import wandb

        logger = WandbLogger(
            id=id_file.read_text().strip(), resume="allow", save_dir=save_dir, project=project,
            group=group, name=name, tags=list(tags or []), mode=mode, config=run_config,
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S),
        )
        # Lightning passes anonymous=None, which wandb now warns about on every run.
        logger._wandb_init.pop("anonymous", None)
        return logger

    logger = build(mode)
    if mode != "online":
        return logger
    try:
        logger.experiment  # noqa: B018 -- wandb.init now, where a failure can still fall back
    except Exception as exc:
        import wandb

        log.warning("wandb: online start failed (%s: %s): logging offline (%s)",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", sync)
        # The failed run's stream stays open in wandb's service process, which then refuses the
        # same run id ("run ID ... is in use"): stop the service; the offline run starts a new one.
        wandb.teardown(exit_code=1)
        logger = build("offline")
    return logger
