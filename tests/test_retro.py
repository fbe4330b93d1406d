"""The checkpoint trail and ``elab-retro``: schedule, disk budget, resume, the retro pass on a
tiny run, and lead-lag from retro series."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import compose_cfg
from trainer.monitors import MonitorBus
from trainer.monitors.trail import CheckpointTrail, log_linear_steps, trail_steps
from trainer.retro import choose_steps, detect_onsets, lead_lag_report, llc_steps
from trainer.retro import main as retro_main
from trainer.schema import callback_defaults

TRAIL = callback_defaults("trail")  # conf/callbacks/default.yaml: the defaults a run gets


def test_schedule_is_log_spaced_early_and_linear_later():
    steps = sorted(log_linear_steps(1838, log_per_octave=2, every_n_steps=25))
    assert steps[:8] == [1, 2, 3, 4, 6, 8, 11, 16]
    assert steps[-1] == 1838 and {450, 475, 500, 525, 550, 575, 600, 625, 650} <= set(steps)
    assert sorted(log_linear_steps(100, 0, 0)) == [100]  # only the final step
    assert min(log_linear_steps(3906, 2, 0, first=16)) == 16


def _fake_trail(tmp_path: Path, steps, size: int = 2**20) -> Path:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for step in steps:
        (directory / f"step-{step}.ckpt").write_bytes(b"\0" * size)
    (directory / "last.ckpt").write_bytes(b"\0" * size)
    return directory


def test_over_budget_the_trail_thins_evenly_spares_jump_onsets_and_keeps_last(tmp_path):
    directory = _fake_trail(tmp_path, [1, 2, 3, 4, 50, 100, 150, 200, 250, 300])
    trail = CheckpointTrail(str(directory), **{**TRAIL, "budget_mb": 6.0, "protect_window": 10})
    bus = MonitorBus()
    bus.attach([trail])
    bus.publish_jumps([{"series": "probe/x/acc", "onset_step": 99}])  # as the jump watch does
    trail._thin()
    kept = sorted(trail_steps(directory))
    assert len(kept) == 6 and kept[0] == 1 and kept[-1] == 300
    assert 100 in kept  # within 10 steps of the onset (log step 99 = global step 100)
    assert not {2, 3} <= set(kept)  # the densest stretch lost checkpoints first
    assert (directory / "last.ckpt").exists()


def test_resume_keeps_the_trail_up_to_its_checkpoint(tmp_path):
    directory = _fake_trail(tmp_path, [5, 10, 15, 20], size=10)
    trainer = SimpleNamespace(max_steps=40, global_step=10, is_global_zero=True)
    CheckpointTrail(str(directory), **{**TRAIL, "every_n_steps": 5}).on_train_start(trainer, None)
    assert sorted(trail_steps(directory)) == [5, 10]  # 15, 20 are about to be trained again


def test_bad_trail_settings_name_their_key():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="callbacks.trail.every_n_steps"):
        CheckpointTrail("x", **{**TRAIL, "every_n_steps": -1})
    with pytest.raises(ConfigError, match="callbacks.trail.budget_mb"):
        CheckpointTrail("x", **{**TRAIL, "budget_mb": 0})


def test_steps_are_dense_around_onsets_and_sparse_elsewhere():
    available = sorted(log_linear_steps(1838, 2, 25))
    chosen = choose_steps(available, onsets=[549], window=100, sparse=8)
    assert {s for s in available if 450 <= s <= 650} <= set(chosen)
    elsewhere = [s for s in chosen if not 450 <= s <= 650]
    assert 1 in elsewhere and 1838 in elsewhere and len(elsewhere) <= 9


def test_the_llc_runs_on_a_few_checkpoints_half_of_them_near_the_jump():
    chosen = choose_steps(sorted(log_linear_steps(1838, 2, 25)), onsets=[549], window=100, sparse=8)
    picked = llc_steps(chosen, onsets=[549], window=100, points=8)
    assert len(picked) == 8 and len({s for s in picked if 450 <= s <= 650}) == 4
    assert llc_steps(chosen, [549], 100, points=0) == set(chosen)


def test_lead_lag_from_retro_series_finds_the_series_that_moved_first():
    # Checkpoints every 25 steps; a topology series steps up at 300, the capability at 400.
    rng = np.random.default_rng(0)
    rows = {}
    for global_step in range(25, 801, 25):
        step = global_step - 1
        rows[global_step] = {
            "step": step, "global_step": global_step,
            "probe/icl/acc": (0.9 if step >= 400 else 0.2) + 0.01 * rng.normal(),
            "topo/layer1/erank": (8.0 if step >= 300 else 4.0) + 0.05 * rng.normal(),
            "topo/layer2/erank": 5.0 + 0.05 * rng.normal(),
        }
    cfg = {"callbacks": {"jumps": {"min_history": 6}}}
    events = detect_onsets(rows, cfg, {"probe/icl/acc": 512})
    assert {e["series"] for e in events} == {"probe/icl/acc", "topo/layer1/erank"}
    report = lead_lag_report(events, online_events=[], window=100)
    (jump,) = report
    assert jump["series"] == "probe/icl/acc" and jump["onset_step"] == 424
    (led,) = jump["before"]
    assert led["series"] == "topo/layer1/erank" and led["lead_steps"] == 100
    assert led["resolution"] == 25 and led["source"] == "retro"


@pytest.mark.slow
def test_retro_on_a_tiny_run_writes_metrics_and_lead_lag_and_resumes(tmp_path, tiny_overrides):
    from trainer.train import train

    run = tmp_path / "run"
    train(compose_cfg([*tiny_overrides, "budget.tokens=2560", "callbacks.trail.every_n_steps=10"], run))
    trail = trail_steps(run / "checkpoints")
    assert sorted(trail) == [1, 2, 3, 4, 6, 8, 10, 11, 16, 20, 23, 30, 32, 40]
    checkpoint = torch.load(trail[40], weights_only=True)
    assert checkpoint["global_step"] == 40 and "optimizer_states" not in checkpoint

    assert retro_main([str(run), "--all", "--no-progress"]) == 0  # the default pass: no LLC
    with (run / "retro" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["global_step"]) for r in rows] == sorted(trail)
    assert {"probe/heldout/acc", "topo/layer1/h1_total", "topo/layer1/knn_fiedler"} <= set(rows[0])
    assert not any(k.startswith("llc/") for k in rows[0]), "the LLC runs only when asked (--llc)"
    # The same model at the same step: the retro probe equals the online one.
    with (run / "csv" / "metrics.csv").open() as f:
        online = {int(r["step"]): float(r["probe/heldout/logprob"]) for r in csv.DictReader(f)
                  if r.get("probe/heldout/logprob")}
    assert float(rows[-1]["probe/heldout/logprob"]) == pytest.approx(online[39], abs=1e-5)
    report = json.loads((run / "retro" / "lead_lag.json").read_text())
    assert report["checkpoints"] == [s - 1 for s in sorted(trail)] and "lead_lag" in report
    assert (run / "retro" / "retro.png").stat().st_size > 0

    # Resumable: a second pass measures nothing again; a monitor not run yet adds its columns.
    before = (run / "retro" / "metrics.csv").stat().st_mtime_ns
    assert retro_main([str(run), "--all", "--no-progress", "--monitors", "probes"]) == 0
    assert (run / "retro" / "metrics.csv").stat().st_mtime_ns == before
    assert retro_main([str(run), "--steps", "20,40", "--no-progress", "--llc"]) == 0
    with (run / "retro" / "metrics.csv").open() as f:
        rows = {int(r["global_step"]): r for r in csv.DictReader(f)}
    assert rows[40]["llc/mean"] and rows[40]["probe/heldout/acc"] and not rows[30]["llc/mean"]
    assert rows[40]["llc/valid"] in ("0.0", "1.0"), "each estimate says whether its diagnostics passed"


def _llc_rows(valid_means: list[float], invalid_at: dict[int, float]) -> dict[int, dict[str, float]]:
    rows = {}
    for i, mean in enumerate(valid_means):
        step = 25 * i
        bad = step in invalid_at
        rows[step + 1] = {"step": step, "global_step": step + 1, "llc/std": 1.0,
                          "llc/mean": invalid_at.get(step, mean), "llc/valid": 0.0 if bad else 1.0}
    return rows


def test_an_llc_estimate_that_failed_its_diagnostics_is_neither_a_jump_nor_a_drawn_value():
    from matplotlib.figure import Figure

    from trainer.retro_plot import _draw_llc

    # A flat LLC of ~40 with one failed estimate of -150 (chains not mixed): no jump, no -150 drawn.
    means = [40.0 + 0.1 * (i % 3) for i in range(24)]
    rows = _llc_rows(means, {450: -150.0, 475: -150.0, 500: -150.0, 525: -150.0, 550: -150.0})
    cfg = {"callbacks": {"jumps": {}}}
    assert detect_onsets(rows, cfg, {}) == []
    flagged = {**rows, **{k: {**v, "llc/valid": 1.0} for k, v in rows.items()}}
    assert [e["series"] for e in detect_onsets(flagged, cfg, {})] == ["llc/mean"], \
        "the same values, counted valid, are a jump: the flag is what keeps them out"
    ax = Figure().subplots()
    _draw_llc(ax, [rows[k] for k in sorted(rows)])
    drawn = [y for line in ax.get_lines() if line.get_transform() == ax.transData for y in line.get_ydata()]
    assert drawn and -150.0 not in drawn and min(drawn) > 39
    assert "5 estimate(s) failed diagnostics" in ax.get_legend().get_texts()[0].get_text()


def test_retro_refuses_bad_input_with_exit_2_and_a_message(tmp_path, capsys):
    assert retro_main([str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert retro_main([str(tmp_path), "--monitors", "probes,nonsense"]) == 2
    assert "--monitors nonsense" in capsys.readouterr().err
