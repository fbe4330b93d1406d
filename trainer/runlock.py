"""One run per run dir: the process training there holds ``<run dir>/.lock`` locked.

Two runs writing one run dir interleave their CSV rows and overwrite each other's summary, so the
second is refused (exit 2, naming the dir and the holder's host and pid).

The lock is ``fcntl.flock`` on an open file, held for the whole job: the test and the taking are
one atomic call, and the kernel drops the lock when the holder dies (``kill -9`` included), so a
killed run can always be resumed with no stale-lock takeover to race on. The file's text (host,
pid, start time) only serves the messages; a file nobody holds locked is free whatever it says.
Taking it: open, lock, then check that the path still names the file locked (a releasing holder
unlinks it while still holding it), else start again.

On NFS, Linux turns ``flock`` into a POSIX lock that the server arbitrates (NFSv4, or NFSv3 with
lockd): runs on two nodes exclude each other, and a crashed node's lock is freed when its lease
runs out (about 90 s on NFSv4). A filesystem mounted with ``nolock`` only sees this node's locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from trainer.config import ConfigError
from trainer.run_dir import RunDir


class RunDirBusy(ConfigError):
    """Another live process holds the run dir's lock."""


def is_launcher_process() -> bool:
    """True in the process that owns the run: not a DDP/SLURM worker of rank > 0, which runs the
    same command line into the same run dir while the launcher holds the lock."""
    for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: 'pid P on host H, started T'."""
    try:
        fields = dict(f.split("=", 1) for f in os.pread(fd, 4096, 0).decode().split() if "=" in f)
    except (OSError, UnicodeDecodeError, ValueError):
        fields = {}
    if "pid" not in fields:  # written by an older version, or not yet written: nobody to name
        return "a process that has not said who it is"
    return (f"pid {fields['pid']} on host {fields.get('host', '?')}, "
            f"started {fields.get('started', '?')}")


class RunLock:
    """``with RunLock(run_dir):`` -- taken at once or refused (:class:`RunDirBusy`), released on
    exit or by the kernel when the process dies."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).lock_path
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise ConfigError(
                    f"{self.path} is a directory, not a run lock: remove it (no run uses it) "
                    f"and run again"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ConfigError(
                    f"{self.path} cannot be opened ({exc.strerror}): it belongs to another user "
                    f"or is not readable; fix its permissions or remove it, or choose another "
                    f"hydra.run.dir"
                ) from None
            raise

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirBusy(
                    f"run dir {self.run_dir} is in use by another run ({holder}; {self.path}): "
                    f"wait for it to finish or stop it, or choose another hydra.run.dir"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # its holder unlinked it while we waited for it: take the new file
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()} started={stamp}\n"
                      .encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still held: a starter that opened the old file sees it is gone and
        # starts again on a new one, so no two processes ever hold "the" lock at once.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
