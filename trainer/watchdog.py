"""A job process that a sweep launcher started dies with the launcher.

joblib's loky workers (``hydra/launcher=local_parallel``) are children of the ``elab-train -m``
process but keep running a job when it is killed (``kill -9``, a closed terminal): orphans that
train on and hold their run locks, so the rerun with ``ckpt_path=last`` is refused. Each job
process therefore watches its parent and ends itself (``os._exit``, like a kill) once the parent
is gone; the kernel then drops its run lock (:mod:`trainer.runlock`).

Polling ``os.getppid()`` rather than ``PR_SET_PDEATHSIG``: that signal fires when the *thread*
that forked the worker ends, and loky forks from a manager thread that may end first.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_watched_pid: int | None = None  # the process whose watchdog runs: one thread per process


def die_with_parent(interval_s: float = 0.5) -> None:
    """Start (once per process) a daemon thread that ends this process within ``interval_s`` of
    its parent's death."""
    global _watched_pid
    if _watched_pid == os.getpid():
        return
    _watched_pid = os.getpid()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        print(f"elab-train: the launcher (pid {parent}) is gone: stopping job process "
              f"{os.getpid()}; rerun the sweep with ckpt_path=last to resume it",
              file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
