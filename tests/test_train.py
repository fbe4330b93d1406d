"""End-to-end CPU runs through the real entry point: the run contract, resume, data parallelism,
wandb offline, the CLI and multirun."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from data_mixers.samplers.modular_arithmetic import ModularArithmetic
from tests.conftest import REPO, compose_cfg
from trainer.train import train


def read_series(run_dir: Path, key: str) -> dict[int, float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


class CrashAt(L.Callback):
    """Simulates a job killed mid-run (node failure, time limit)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_cpu_run_writes_the_run_contract_and_learns(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    overrides = [*tiny_overrides, "budget.tokens=25600", "data.train_fraction=0.9",
                 "model.n_layer=2", "model.d_model=64", "optim.lr=1e-2",
                 "checkpoint_every_n_steps=150",
                 "optim.weight_decay=0.0", "optim.warmup_steps=10"]
    summary = train(compose_cfg(overrides, run))
    for name in (".hydra/config.yaml", "summary.json", "events.jsonl", "checkpoints/last.ckpt",
                 "csv/metrics.csv"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary and summary["status"] == "completed"
    assert summary["steps"] == 400 and summary["tokens_seen"] == 25600
    assert summary["tokens_per_s"] > 0 and summary["n_params"] > 0
    assert set(summary["versions"]) >= {"torch", "lightning", "hydra-core"}
    loss = read_series(run, "train/loss")
    assert sorted(loss) == list(range(400))
    first, last = [loss[s] for s in range(40)], [loss[s] for s in range(360, 400)]
    assert sum(last) < 0.7 * sum(first), "the model should fit the training pairs"
    assert read_series(run, "train/tokens_seen")[399] == 25600
    # 400 is no multiple of checkpoint_every_n_steps: the final weights are saved all the same.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 400


def test_resume_gives_the_same_curves(tmp_path, tiny_overrides):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    tiny_overrides = [*tiny_overrides, "callbacks.probes.every_n_steps=2",
                      "callbacks.topology.every_n_steps=3"]
    train(compose_cfg(tiny_overrides, straight))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg(tiny_overrides, crashed), callbacks=[CrashAt(12)])
    assert json.loads((crashed / "summary.json").read_text())["status"] == "failed"
    # A fresh start in that dir would overwrite its checkpoint: refused.
    with pytest.raises(ValueError, match="ckpt_path=last"):
        train(compose_cfg(tiny_overrides, crashed))
    summary = train(compose_cfg([*tiny_overrides, "ckpt_path=last"], crashed))
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 20
    expected, resumed = read_series(straight, "train/loss"), read_series(crashed, "train/loss")
    assert sorted(resumed) == list(range(20))
    for step in range(20):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step
    # The monitors' curves continue too: no hole at the checkpoint, no duplicate after it.
    for series in ("probe/heldout/logprob", "topo/layer1/erank"):
        expected, resumed = read_series(straight, series), read_series(crashed, series)
        assert sorted(resumed) == sorted(expected) and len(expected) >= 6, series
        assert resumed == pytest.approx(expected, rel=1e-5), series
    assert (crashed / "events.jsonl").read_text() == (straight / "events.jsonl").read_text()
    invalid = [json.loads((d / "summary.json").read_text())["invalid_metrics"] for d in (straight, crashed)]
    assert invalid[0] == invalid[1] and invalid[0], "undefined metrics are counted across the resume"


class PartlyMaskedArithmetic(ModularArithmetic):
    """The first quarter of every global batch counts no position: with 2 processes, rank 0
    holds half as many counted positions as rank 1 (as padded text windows do)."""

    def rows(self, step: int, start: int, stop: int) -> dict:
        batch = super().rows(step, start, stop)
        batch["loss_mask"][np.arange(start, stop) < 4] = 0.0
        return batch


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path, tiny_overrides):
    masked = [*tiny_overrides, f"data._target_={__name__}.PartlyMaskedArithmetic"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(compose_cfg(masked, one))
    train(compose_cfg([*masked, "pl=ddp_cpu"], two))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20
    expected, got = read_series(one, "train/loss"), read_series(two, "train/loss")
    assert sorted(got) == sorted(expected) == list(range(20))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def test_wandb_runs_offline_without_a_key(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "run"
    summary = train(compose_cfg([*tiny_overrides, "logger=wandb"], run))
    assert summary["status"] == "completed"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert (run / "csv" / "metrics.csv").is_file()
    import wandb

    assert wandb.run is None, "the wandb run must be finished"
    wandb.teardown()


def _cli(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(cwd),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "trainer.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_cli_debug_run_prints_progress_and_run_dir(tmp_path):
    result = _cli(["debug=fast", "progress=tqdm"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "run dir:" in out and re.search(r"\d+/\d+ \[", out), "a progress bar with a total"
    run_dirs = list((tmp_path / "logs" / "runs").iterdir())
    assert len(run_dirs) == 1 and str(run_dirs[0].name) in out
    assert (run_dirs[0] / ".hydra" / "config.yaml").is_file()
    assert json.loads((run_dirs[0] / "summary.json").read_text())["overrides"] == ["debug=fast", "progress=tqdm"]


@pytest.mark.slow
def test_multirun_keeps_going_past_a_failed_job(tmp_path):
    result = _cli(["-m", "debug=fast", "progress=none", "data=modular_arithmetic", "data.p=11,12,13",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode != 0  # the sweep reports the failure at the end...
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")}
    assert sorted(summaries) == ["0", "1", "2"]  # ...after running every job
    assert summaries["0"]["status"] == "completed" and summaries["2"]["status"] == "completed"
    assert summaries["1"]["status"] == "failed" and "data.p=12" in summaries["1"]["error"]
    # The sweep's analysis: phase line (one swept axis), per-run curves, table, offline report.
    from trainer.analysis import analyze_sweep_main

    assert analyze_sweep_main([str(tmp_path / "sweep"), "--metric", "probe/heldout/acc"]) == 0
    out = tmp_path / "sweep" / "analysis"
    for name in ("phase_diagram.png", "runs.png", "runs.csv", "runs.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "runs.csv").read_text().splitlines()
    assert len(table) == 4 and sum("failed" in row for row in table) == 1


@pytest.mark.slow
def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path):
    result = _cli(["budget.tokens=lots", "optim.lr=fast"], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2
    assert "budget.tokens='lots'" in out and "optim.lr='fast'" in out
    assert "Traceback" not in out
    assert not list(tmp_path.glob("logs/runs/*/checkpoints"))
