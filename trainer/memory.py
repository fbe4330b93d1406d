"""A run too large for the machine is refused before anything is built, naming the size knobs.

Without this, ``model.d_model=100000`` or ``batch.global_size=10000000`` fails deep inside the
model's constructor or the first step ("DefaultCPUAllocator: can't allocate memory"), or the
kernel kills the process with no message at all. The estimate is a floor, so only a run that
clearly cannot fit is refused: the model is built on the ``meta`` device (shapes, no memory) for
its exact parameter count; training holds fp32 weights, gradients and AdamW's two moments (16
bytes a parameter) plus the activations kept for the backward pass (at least ~34 bytes per token,
layer and unit of width; Korthikanti et al. 2022) and the logits with their gradient.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.config import ConfigError

GIB = 2**30


def available_bytes() -> int:
    """Memory this process may still use: the least of what the machine has available, the
    address-space limit (``ulimit -v``) and the cgroup's limit (a container, a batch job)."""
    import psutil

    limits = [psutil.virtual_memory().available]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - psutil.Process().memory_info().vms)
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible
    return max(0, min(limits))


def _size_knobs(cfg: DictConfig, model: Any) -> str:
    config = model.config
    return (f"model.d_model={config.d_model}, model.n_layer={config.n_layer}, "
            f"batch.global_size={cfg.batch.global_size}, data.seq_len={config.max_seq_len}")


def check_fits_memory(cfg: DictConfig, build_model: Callable[[], Any], seq_len: int) -> None:
    """Refuse a run whose training state alone (see the module docstring) exceeds the memory of
    the device it trains on; ``build_model`` builds the run's model (here on ``meta``)."""
    import torch

    with torch.device("meta"):
        model = build_model()
    config = model.config
    n_params = model.num_params()
    devices = cfg.pl.get("devices", 1)
    per_device = cfg.batch.global_size // (devices if isinstance(devices, int) and devices > 0 else 1)
    activations = per_device * seq_len * (
        34 * config.d_model * config.n_layer * config.n_loops + 8 * config.vocab_size)
    need = 16 * n_params + activations
    on_gpu = torch.cuda.is_available() and cfg.pl.get("accelerator") in ("gpu", "cuda", "auto")
    if on_gpu:
        have, where = torch.cuda.mem_get_info()[1], "the GPU"
        need_host = 4 * n_params  # the model is built on the CPU first
        if need_host > available_bytes():
            need, have, where = need_host, available_bytes(), "this machine"
    else:
        have, where = available_bytes(), "this machine"
    if need > have:
        raise ConfigError(
            f"the run needs at least {need / GIB:.1f} GiB ({n_params:,} parameters x 16 "
            f"bytes for weights, gradients and AdamW, plus activations), more than the "
            f"{have / GIB:.1f} GiB {where} has available: make it smaller "
            f"({_size_knobs(cfg, model)})")


@contextmanager
def allocation_refused(cfg: DictConfig, what: str) -> Iterator[None]:
    """An allocation the estimate let through but the machine refused: the size knobs, exit 2."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "can't allocate" not in str(exc):
            raise
        raise ConfigError(f"out of memory while building {what} ({' '.join(str(exc).split())[:120]}):"
                          f" make the run smaller (model.d_model={cfg.model.get('d_model')}, "
                          f"model.n_layer={cfg.model.get('n_layer')}, "
                          f"batch.global_size={cfg.batch.global_size})") from None
