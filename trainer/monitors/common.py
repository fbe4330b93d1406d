"""What every monitor shares: when it is due, how its time is counted and how it measures without
disturbing training (its values reach the loggers and the jump detector through the bus,
:mod:`trainer.monitors.bus`)."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch

from data_mixers.base import StepSampler
from trainer import steps


def sampler_of(trainer: L.Trainer) -> StepSampler:
    return trainer.datamodule.sampler


def due(trainer: L.Trainer, every: int) -> bool:
    """After the first step, after every ``every`` steps, and after the last step."""
    step = trainer.global_step
    return step == 1 or step % every == 0 or step == trainer.max_steps


def previous_due(step: int, every: int) -> int:
    """The global step of the evaluation before the one at ``step`` on the :func:`due` grid (0
    before the first): a pure function of the step, so a resumed run keeps the same grid."""
    if step <= 1:
        return 0
    return max(1, (step - 1) // every * every)


def log_step(trainer: L.Trainer) -> int:
    """The step a measurement after this training step is logged at (see :mod:`trainer.steps`)."""
    return steps.log_step(trainer.global_step)


def timed(hook):
    """Adds the hook's wall time to ``self.seconds``: what the monitor costs, measured where it is
    spent (summary.json's ``monitor_seconds``)."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    return wrapper


class Measurement:
    """Eval mode, no grad and a forked RNG for the duration; train mode is restored after."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.rng = torch.random.fork_rng(devices=devices)
        self.rng.__enter__()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.module.eval()
        return self

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        self.no_grad.__exit__(*exc)
        self.rng.__exit__(*exc)
        return False


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def forward(model, batch: dict[str, torch.Tensor], **kwargs):
    return model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"), **kwargs)


@contextmanager
def readout_at(model: torch.nn.Module, rows: torch.Tensor, positions: torch.Tensor):
    """Within the block, the model's output ``head`` reads only the residual stream at
    (``rows``, ``positions``), so its logits come out [n, vocab] instead of [B, T, vocab].

    The readout is half the cost of a forward pass of the small models at probe time, and an
    answer probe reads one position per row. A model without a ``head`` module, or a compiled
    one, is left alone (its logits stay [B, T, vocab]; :func:`gather_logits` handles both).
    """
    head = getattr(model, "head", None)
    # A compiled model (compile=true) would recompile whenever a hook comes and goes: left alone.
    if not isinstance(head, torch.nn.Module) or getattr(model, "_compiled_call_impl", None) is not None:
        yield
        return

    def only_there(module, args):
        x = args[0]
        return (x[rows, positions], *args[1:]) if x.ndim == 3 else None

    handle = head.register_forward_pre_hook(only_there)
    try:
        yield
    finally:
        handle.remove()


def gather_logits(logits: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The logits at (rows, positions), whether or not :func:`readout_at` already took them."""
    return logits if logits.ndim == 2 else logits[rows, positions]
