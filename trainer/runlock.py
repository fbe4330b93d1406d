"""One run per run dir: ``<run dir>/.lock`` holds the pid of the process training there.

Two runs writing one run dir interleave their CSV rows and overwrite each other's summary, so the
second is refused (exit 2, naming the dir and the pid). A lock left by a process that died
(``kill -9``, a node lost) is taken over with a warning, so a killed run can always be resumed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from trainer.config import ConfigError

log = logging.getLogger("emergence_lab")


class RunDirBusy(ConfigError):
    """Another live process holds the run dir's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # gone, empty or torn: nobody we can name
        return None


def is_launcher_process() -> bool:
    """True in the process that owns the run: not a DDP/SLURM worker of rank > 0, which runs the
    same command line into the same run dir while the launcher holds the lock."""
    for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


class RunLock:
    """``with RunLock(run_dir):`` -- taken atomically (O_EXCL), released on exit."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.held = False

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed between two tries by another starter: retry
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _holder(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise RunDirBusy(
                        f"run dir {self.run_dir} is in use by another run (pid {pid}, "
                        f"{self.path}): wait for it, or choose another hydra.run.dir"
                    ) from None
                log.warning("run dir %s: taking over the stale lock of pid %s (no longer running)",
                            self.run_dir, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise RunDirBusy(f"run dir {self.run_dir}: could not take {self.path}")

    def release(self) -> None:
        if self.held and _holder(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
