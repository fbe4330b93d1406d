"""experiment=lr_transfer: the preset sweeps what the question needs, and elab-analyze turns the
sweep into the best learning rate per width and parametrization (lr_transfer.json / .png)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_sweep_presets import compose_with_hydra
from trainer.analysis.lr_transfer import best_lrs, final_loss


def test_lr_transfer_preset_sweeps_lr_width_parametrization_and_seeds():
    cfg = compose_with_hydra(["experiment=lr_transfer"])
    params = cfg.hydra.sweeper.params
    lrs = sorted(float(v) for v in str(params["optim.lr"]).split(","))
    widths = sorted(int(v) for v in str(params["model.d_model"]).split(","))
    assert len(lrs) >= 6 and all(b / a == pytest.approx(2.0) for a, b in zip(lrs, lrs[1:]))
    assert len(widths) >= 4 and widths[-1] >= 8 * widths[0]
    assert set(str(params["model.parametrization"]).split(",")) == {"sp", "mup"}
    assert len(str(params.seed).split(",")) >= 2
    assert cfg.data._target_.endswith("BurstyClasses") and cfg.model._target_.endswith("AttnOnly")


class _Run:
    def __init__(self, losses, completed=True):
        self.completed = completed
        self.series = {"train/loss": (np.arange(0, 10 * len(losses), 10), np.array(losses))}


def test_best_lr_is_the_lowest_mean_final_loss_and_a_diverged_seed_rules_its_lr_out():
    assert final_loss(_Run([9.0] * 8 + [2.0, 1.0])) == pytest.approx(1.5)  # the last fifth
    assert final_loss(_Run([1.0], completed=False)) == math.inf
    grid = {"sp": {64: {0.001: [2.0, 2.2], 0.002: [1.0, math.inf], 0.004: [3.0, 3.0]}}}
    assert best_lrs(grid) == {"sp": {"64": 0.001}}


@pytest.mark.slow
def test_lr_transfer_preset_runs_tiny_and_writes_the_best_lr_per_width(tmp_path):
    from trainer.analysis import analyze_sweep_main

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", "-m", "experiment=lr_transfer",
         "model.d_model=16,32", "optim.lr=0.001,0.002", "seed=0", "budget.tokens=5440",
         "optim.warmup_steps=2", "progress=none", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert analyze_sweep_main([str(sweep), "-o", str(tmp_path / "out")]) == 0
    best = json.loads((tmp_path / "out" / "lr_transfer.json").read_text())
    assert set(best) == {"sp", "mup"}
    for param in best:
        assert set(best[param]) == {"16", "32"} and set(best[param].values()) <= {0.001, 0.002}
    assert (tmp_path / "out" / "lr_transfer.png").stat().st_size > 10_000
