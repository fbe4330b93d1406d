"""What a run prints, kept quiet and readable: no third-party adverts, log lines that never share
a line with the progress bar, and one line that says how to resume an interrupted run."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

# Lightning's adverts for its cloud products ("💡 Tip: ... litlogger / litmodels"): not about the run.
_ADVERTS = ("💡 Tip",)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERTS)


def drop_adverts() -> None:
    """Filter Lightning's tips out of its info messages (its loggers propagate to the root)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in target.filters):
            target.addFilter(_NoAdverts())


class _AboveTheBar(logging.StreamHandler):
    """A console handler that writes each record on a line of its own while tqdm bars are drawn:
    on a terminal the bar is cleared, the line written and the bar redrawn (``tqdm.write``); in a
    file or pipe (where the bar is text ending in a carriage return) the line starts on a new line."""

    def __init__(self, original: logging.StreamHandler) -> None:
        super().__init__(original.stream)
        self.setFormatter(original.formatter)
        self.setLevel(original.level)
        for f in original.filters:
            self.addFilter(f)
        self._bars_at_last_line: tuple = ()

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            message = self.format(record)
            bars = tuple((id(b), b.n, str(b.postfix)) for b in list(getattr(tqdm, "_instances", ())))
            if not bars:
                self.stream.write(message + "\n")
            elif self.stream.isatty():
                tqdm.write(message, file=self.stream)
            else:  # a new line only when a bar has drawn since this handler's last line
                self.stream.write(("" if bars == self._bars_at_last_line else "\n") + message + "\n")
            self._bars_at_last_line = bars
            self.flush()
        except Exception:  # logging's own contract: a broken handler never breaks the run
            self.handleError(record)


@contextlib.contextmanager
def log_above_progress_bar() -> Iterator[None]:
    """While training: the root logger's console handlers (Hydra's) write around the bar."""
    root = logging.getLogger()
    swapped = [(i, h) for i, h in enumerate(root.handlers)
               if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]
    for i, handler in swapped:
        root.handlers[i] = _AboveTheBar(handler)
    try:
        yield
    finally:
        for i, handler in swapped:
            root.handlers[i] = handler


def close_progress_bars() -> None:
    """End the bars an interrupted fit left open, so that nothing is drawn after the last line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def resume_command(run_dir: Path, overrides: list[str], resumable: bool = True) -> str:
    """The command that resumes this run (the same overrides, this run dir, ``ckpt_path=last``),
    or that starts it again when it has no checkpoint yet."""
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    words = ["elab-train", *kept, f"hydra.run.dir={Path(run_dir).resolve()}"]
    words += ["ckpt_path=last"] if resumable else []
    return " ".join(shlex.quote(w) for w in words)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the summary says 'interrupted' and ``elab-train`` exits 130."""


def interrupted(run_dir: Path, overrides: list[str], step: int) -> RunInterrupted:
    """Log the run's last line -- the command that resumes it (or, before its first checkpoint,
    starts it again) -- and return the exception that ends ``elab-train`` with 130."""
    resumable = (Path(run_dir) / "checkpoints" / "last.ckpt").is_file()
    command = resume_command(run_dir, overrides, resumable)
    what = "resume with" if resumable else "no checkpoint to resume: start again with"
    logging.getLogger("emergence_lab").warning("interrupted at step %d; %s: %s", step, what, command)
    return RunInterrupted(command)
