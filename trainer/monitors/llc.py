"""The local learning coefficient on a schedule: ``llc/...`` during training (``LLCMonitor``).

The estimator and its diagnostics live in :mod:`trainer.measures.llc`; this module decides when it
runs, on which data, and where the results go:

- a log + linear schedule (:func:`trainer.monitors.trail.log_linear_steps`): the LLC moves most early on
  and an SGLD estimate costs hundreds of forward/backward passes, so it runs on few steps;
- fixed batches of the *training* distribution (the LLC is a property of the training loss at
  w*), drawn from steps no run reaches so they never coincide with a training batch and are the
  same at every evaluation;
- ``llc/mean``, ``llc/std``, ``llc/rhat``, ``llc/init_loss`` and ``llc/chain<i>`` to the loggers
  at the step of the model measured (the step convention of ``trainer.monitors``), each
  evaluation's chain traces and problems to ``<run dir>/llc/traces.jsonl``, and a warning in the
  log when chains diverged or did not mix (a diverged estimate is not logged as a number).

``elab-retro`` computes the same estimate on the checkpoint trail with :func:`llc_batches`,
:func:`lm_loss` and the settings of this callback's config entry.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from trainer.errors import ConfigError
from trainer.measures.llc import sample_llc
from trainer.module import masked_cross_entropy
from trainer.monitors.bus import Attached
from trainer.monitors.trail import log_linear_steps
from trainer.run_dir import RunDir
from trainer.schema import check_settings
from trainer.steps import log_step

log = logging.getLogger("emergence_lab")

#: The sampler step the LLC batches are drawn from: far beyond any run's length, so never a
#: training batch (the topology probe takes 2**62; these sit just above it).
LLC_BATCH_STEP = 2**62 + 1000


def llc_batches(sampler: Any, n_batches: int, batch_size: int, device: torch.device | str = "cpu"
                ) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` fixed batches of ``batch_size`` rows of the training distribution, as tensors."""
    batches = []
    for i in range(n_batches):
        rows = sampler.batch(LLC_BATCH_STEP + i, batch_size)
        batches.append({k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in rows.items()})
    return batches


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of one batch (masked next-token cross-entropy), as the model is trained."""
    logits = model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"))
    return masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])


class LLCMonitor(Attached, L.Callback):
    """``llc/...`` every few steps on a log + linear schedule (see the module docstring).

    Schedule: ``log_per_octave`` estimates per doubling of the step and one every
    ``every_n_steps`` (0: none), from ``first_step`` on, and at the last step. Data:
    ``n_batches`` x ``batch_size`` rows of the training distribution, n = their number of rows.
    Sampler: ``chains`` SGLD chains of ``steps`` steps (the first ``burn_in`` discarded), step size
    ``lr``, ``localization``, and ``n_beta`` (null: n / log n). Calibrate ``lr`` and ``n_beta`` on
    a checkpoint with ``elab-retro RUN_DIR --calibrate-llc`` before trusting a trajectory.
    """

    def __init__(self, log_per_octave: int = 1, every_n_steps: int = 0, first_step: int = 32,
                 n_batches: int = 4, batch_size: int = 64, chains: int = 2, steps: int = 100,
                 burn_in: int = 20, lr: float = 3e-4, localization: float = 100.0,
                 n_beta: float | None = 100.0, seed: int = 0) -> None:
        check_settings("callbacks.LLCMonitor", "callbacks.llc", {
            "log_per_octave": log_per_octave, "every_n_steps": every_n_steps,
            "first_step": first_step, "n_batches": n_batches, "batch_size": batch_size,
            "chains": chains, "steps": steps, "burn_in": burn_in, "lr": lr,
            "localization": localization, "n_beta": n_beta})
        if not burn_in < steps - 3:
            raise ConfigError(f"callbacks.llc.burn_in={burn_in!r} must lie in [0, steps - 3)")
        self.log_per_octave, self.every_n_steps, self.first_step = log_per_octave, every_n_steps, first_step
        self.n_batches, self.batch_size = n_batches, batch_size
        self.settings = {"steps": steps, "burn_in": burn_in, "lr": lr, "localization": localization,
                         "chains": chains, "seed": seed}
        self.n_beta = n_beta
        self.schedule: set[int] = set()
        self.batches: list[dict[str, torch.Tensor]] = []
        self.seconds = 0.0

    def estimate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]):
        """The LLC of ``model`` on ``batches`` with this monitor's settings (also used offline)."""
        n = sum(len(b["input_ids"]) for b in batches)
        beta = None if self.n_beta is None else self.n_beta / n
        return sample_llc(model, lm_loss, batches, dataset_size=n, beta=beta, **self.settings)

    def on_train_start(self, trainer, pl_module) -> None:
        self.schedule = log_linear_steps(trainer.max_steps, self.log_per_octave, self.every_n_steps,
                                         first=self.first_step)
        if trainer.is_global_zero:
            self.batches = llc_batches(trainer.datamodule.sampler, self.n_batches, self.batch_size,
                                       pl_module.device)
            self.traces_path = RunDir(trainer.default_root_dir).llc_traces_path
            self.traces_path.parent.mkdir(parents=True, exist_ok=True)
            if self.traces_path.exists():  # a resume keeps the evaluations up to its checkpoint
                kept = [line for line in self.traces_path.read_text().splitlines()
                        if line and json.loads(line)["step"] < trainer.global_step]
                self.traces_path.write_text("".join(line + "\n" for line in kept))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and trainer.global_step in self.schedule):
            return
        start = time.perf_counter()
        step = log_step(trainer.global_step)
        # sample_llc works on a deep copy with its own generators: the training weights and RNGs
        # are untouched.
        estimate = self.estimate(pl_module.model, self.batches)
        for problem in estimate.problems:
            log.warning("step %d: LLC %s", step, problem)
        values = {} if estimate.diverged else estimate.metrics()
        # The chains, spread, R-hat and initial loss are diagnostics of one estimate: logged, but
        # only llc/mean is a series for the jump detector.
        self.bus.publish(trainer, values, unwatched={k for k in values if k != "llc/mean"})
        with self.traces_path.open("a") as f:
            f.write(json.dumps({"step": step, **estimate.trace_dict()}) + "\n")
        self.seconds += time.perf_counter() - start
