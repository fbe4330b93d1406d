"""``retro/.lock``: one ``elab-retro`` pass at a time on a run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from trainer.config import ConfigError


class RetroBusy(ConfigError):
    """Another elab-retro is measuring this run."""


def lock_retro(out_dir: Path) -> IO[str]:
    """Hold ``retro/.lock`` for this pass: two passes at once on one run would measure the same
    checkpoints twice and each rewrite ``metrics.csv`` without the other's rows. An ``flock``:
    atomic, and released by the kernel when the process dies. Returns the open file (the lock
    lives as long as it)."""
    handle = (out_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RetroBusy(f"{out_dir.parent}: another elab-retro (pid {holder}) is measuring this "
                        "run; wait for it to finish (its results are kept, and a rerun measures "
                        "only what is missing)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
