"""What a job that fails before or while starting leaves behind and prints: a failed summary (so a
sweep's table lists the job) and, for bad input, one line instead of a traceback."""

from __future__ import annotations

from omegaconf import DictConfig

from trainer.cli_errors import path_problem
from trainer.run_dir import RunDir
from trainer.runlock import RunDirBusy


def record_failure(cfg: DictConfig, exc: Exception, overrides: list[str]) -> None:
    """A job that failed before training still leaves a summary, so a sweep's table lists it.
    Nothing is written into a run dir that holds a run already (a finished one, a checkpoint to
    resume, another process's lock) or that cannot be written."""
    run = RunDir(cfg.paths.output_dir)
    run_dir = run.path
    holds_run = run.last_checkpoint.exists() or run.summary_path.exists()
    if isinstance(exc, RunDirBusy) or holds_run or cfg.get("ckpt_path") not in (None, "last"):
        return
    if not run_dir.is_dir():
        return
    try:
        run.write_summary(
            {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "run_dir": str(run_dir.resolve()),
                "overrides": overrides,
                "metrics": {},
                "jumps": [],
            },
        )
    except OSError:
        pass  # a read-only run dir: the error message says so


def bad_input_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user's input caused (a ValueError naming its key,
    a run or cache dir that cannot be written), or None for a bug, which keeps its traceback."""
    if isinstance(exc, ValueError):
        return str(exc)
    if (problem := path_problem(exc)) is not None:
        return (f"{problem} (check hydra.run.dir or ELAB_LOG_DIR, paths.cache_dir or "
                f"ELAB_CACHE_DIR, and any data path given)")
    return None
