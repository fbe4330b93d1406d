"""The process's memory allocator: keep freed memory for reuse instead of handing it back to the
operating system after every training step (``malloc: reuse``, the default; ``malloc: system``
leaves the C library's defaults).

Why: a CPU training step allocates and frees its activations and gradients, some of them
megabytes each. glibc's malloc returns the freed top of its heap to the kernel whenever more
than twice its (adaptive) mmap threshold lies free there, which at the end of a step is almost
always; the next step then takes a page fault on every 4 KiB page it touches again, and zeroes
it. On this project's default model (a ~7 ms step) ``reuse`` gives ~20% more tokens/s (14-31%
in the rounds measured) and ~1,000 page faults a step become ~2, for 2% more resident memory;
on ``gpt_small`` (longer steps) ~1% (``scripts/bench_malloc.py``, whole runs side by side).
``reuse`` fixes the two thresholds (mallopt), which also turns off the adaptation:

- ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum on 64-bit): smaller blocks come from the heap;
- ``M_TRIM_THRESHOLD`` = 1 GiB: the heap's free top is kept up to that size.

The cost is that memory a process has freed stays with it (its peak, which a training loop
reaches again on every step anyway). What data preparation freed (building a token store from a
corpus can free hundreds of megabytes) is handed back once, before training starts
(``release_free_memory``), so a run holds its training working set, not its ingest peak.

Other C libraries (musl, macOS) are left alone: the setting then reports itself as not applied.
It acts on the process that trains, so every worker of a sweep applies it for itself and forked
DataLoader workers inherit it; ``pl.strategy=ddp_spawn`` workers (spawned, not forked) keep
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import platform

MODES = ("reuse", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


_applied = False  # reuse was set in this process (mallopt cannot be undone)


def configure_malloc(mode: str) -> str:
    """Apply ``mode`` to this process; returns what took effect, for the run's records:
    ``"reuse"``, ``"system"``, or ``"system (...)"`` / ``"reuse (...)"`` saying why not.

    ``reuse`` cannot be taken back: a later ``system`` in the same process (the basic launcher
    runs a sweep's jobs one after another in one process) says so instead of claiming glibc's
    defaults."""
    global _applied
    if mode not in MODES:
        raise ValueError(f"malloc={mode!r} is not one of {list(MODES)}")
    if mode == "system":
        return "reuse (set earlier in this process: mallopt cannot be undone)" if _applied else "system"
    if _applied:
        return "reuse"
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return f"system (reuse needs glibc: this is {platform.system()} {libc_name or 'without glibc'})"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as exc:
        return f"system (reuse needs glibc's mallopt: {exc})"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "system (glibc refused M_MMAP_THRESHOLD)"
    _applied = True  # from here on glibc's adaptive thresholds are off, whatever follows
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "reuse (half: glibc refused M_TRIM_THRESHOLD, the mmap threshold is set)"
    return "reuse"


def release_free_memory() -> bool:
    """Give the memory this process has freed back to the kernel now (glibc's ``malloc_trim``);
    with ``reuse`` nothing else ever does. Called once after the data is prepared. Returns
    whether anything was released."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
