"""Transitions as measured quantities: where a capability rises, how sharply, with intervals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import compose_cfg
from trainer.config import ConfigError, validate
from trainer.measures.transitions import (
    LN9,
    breakthroughness,
    capability_series,
    fit_transition,
    series_from_rows,
)

STEPS = np.arange(0, 2001, 50, dtype=float)  # 41 evaluations, every 50 steps
RISE_KEYS = {"direction", "onset_step", "midpoint_step", "end_step", "width_steps", "width_tokens",
             "midpoint_tokens", "height", "before", "after", "midpoint_ci", "width_steps_ci",
             "width_tokens_ci", "complete", "breakthroughness"}


def logistic(t, before, height, midpoint, width):
    """``width`` is the 10-90% width: scale = width / (2 ln 9)."""
    return before + height / (1.0 + np.exp(-(t - midpoint) / (width / (2 * LN9))))


def test_noisy_logistic_rises_are_recovered_within_their_intervals():
    covered = {"midpoint": 0, "width": 0}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = logistic(STEPS, 0.25, 0.7, 820.0, 300.0) + rng.normal(0, 0.03, len(STEPS))
        fit = fit_transition(STEPS, y, tokens_per_step=1000)
        assert fit["verdict"] == "one rise" and fit["fit"]["delta_bic_vs_no_rise"] > 10
        (rise,) = fit["rises"]
        assert set(rise) == RISE_KEYS and rise["direction"] == "rise" and rise["complete"]
        covered["midpoint"] += rise["midpoint_ci"][0] <= 820 <= rise["midpoint_ci"][1]
        covered["width"] += rise["width_steps_ci"][0] <= 300 <= rise["width_steps_ci"][1]
        assert rise["midpoint_ci"][1] - rise["midpoint_ci"][0] < 100  # an interval, not the whole run
        assert rise["onset_step"] < rise["midpoint_step"] < rise["end_step"]
        assert rise["width_steps"] == pytest.approx(rise["end_step"] - rise["onset_step"], abs=0.2)
        assert rise["height"] == pytest.approx(0.7, abs=0.1) and rise["before"] == pytest.approx(0.25, abs=0.05)
        assert rise["width_tokens"] == pytest.approx(rise["width_steps"] * 1000, rel=1e-3)
    # Nominal 95%: 19 of 20 expected; an interval that ignored the fit's uncertainty covers far fewer.
    assert covered["midpoint"] >= 17 and covered["width"] >= 17, covered


@pytest.mark.parametrize("seed", range(5))
def test_a_flat_noisy_curve_reports_no_rise(seed):
    rng = np.random.default_rng(100 + seed)
    y = 0.25 + rng.normal(0, 0.04, len(STEPS))
    fit = fit_transition(STEPS, y, tokens_per_step=1000)
    assert fit["verdict"] == "no rise" and fit["rises"] == []
    assert fit["model"] in ("flat", "linear") and fit["fit"]["bic"]["one rise"] is not None


def test_a_falling_capability_is_a_fall_and_a_transient_is_a_rise_then_a_fall():
    rng = np.random.default_rng(7)
    falling = logistic(STEPS, 0.9, -0.6, 1200.0, 200.0) + rng.normal(0, 0.02, len(STEPS))
    (fall,) = fit_transition(STEPS, falling)["rises"]
    assert fall["direction"] == "fall" and fall["height"] == pytest.approx(-0.6, abs=0.06)
    assert fall["midpoint_ci"][0] <= 1200 <= fall["midpoint_ci"][1] and fall["width_tokens"] is None
    # Transient in-context learning: up around step 500, back down around step 1400.
    transient = (logistic(STEPS, 0.2, 0.6, 500.0, 150.0) + logistic(STEPS, 0.0, -0.5, 1400.0, 250.0)
                 + rng.normal(0, 0.02, len(STEPS)))
    fit = fit_transition(STEPS, transient)
    assert fit["verdict"] == "two rises"
    up, down = fit["rises"]
    assert up["direction"] == "rise" and down["direction"] == "fall"
    assert up["midpoint_ci"][0] <= 500 <= up["midpoint_ci"][1]
    assert down["midpoint_ci"][0] <= 1400 <= down["midpoint_ci"][1]
    assert up["after"] == pytest.approx(down["before"])


def test_the_bootstrap_is_seeded_and_short_or_constant_series_do_not_crash():
    y = logistic(STEPS, 0.0, 1.0, 1000.0, 400.0) + np.random.default_rng(3).normal(0, 0.05, len(STEPS))
    assert fit_transition(STEPS, y) == fit_transition(STEPS, y)
    assert fit_transition([0, 50, 100], [0.1, 0.5, 0.9])["verdict"] == "no rise"
    assert fit_transition(STEPS, np.full(len(STEPS), 1.0))["why"] == "constant"
    # A step between two evaluations: the width is only bounded by the spacing, never 0 or NaN.
    y = np.where(STEPS > 1010, 1.0, 0.0) + np.random.default_rng(4).normal(0, 0.02, len(STEPS))
    (rise,) = fit_transition(STEPS, y)["rises"]
    assert 1000 <= rise["midpoint_step"] <= 1050 and 0 < rise["width_steps"] <= 50


def test_breakthroughness_is_big_benchs():
    # Steps 0.1, 0.1, 1.0, 0.1, 0.1: root median square 0.1, I(y) = +1.4.
    assert breakthroughness([0.0, 0.1, 0.2, 1.2, 1.3, 1.4]) == pytest.approx(14.0)
    assert breakthroughness([1.4, 1.3, 1.2, 0.2, 0.1, 0.0]) == pytest.approx(-14.0)
    assert breakthroughness([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]) is None  # median step 0
    assert breakthroughness([0.0, 1.0]) is None


def test_capability_series_and_rows_from_csv_strings_or_floats():
    columns = ["step", "train/loss", "probe/icl/acc", "probe/icl/logprob", "topo/attn0/head0/entropy"]
    assert capability_series(columns, ["topo/attn0/head0/entropy", "probe/icl/acc"]) == [
        "probe/icl/acc", "probe/icl/logprob", "topo/attn0/head0/entropy"]
    rows = [{"step": "0", "probe/icl/acc": "0.5"}, {"step": "10", "probe/icl/acc": ""},
            {"step": 20, "probe/icl/acc": 0.75}, {"step": "30", "probe/icl/acc": "nan"}]
    steps, values = series_from_rows(rows, ["probe/icl/acc", "absent"])["probe/icl/acc"]
    assert steps.tolist() == [0, 20] and values.tolist() == [0.5, 0.75]


def test_transitions_series_must_be_a_list_of_names(tmp_path):
    with pytest.raises(ConfigError, match="transitions.series=.*list of series names"):
        validate(compose_cfg(["transitions.series=topo/x"], tmp_path))
    with pytest.raises(ConfigError, match="unknown config key 'transitions.serie'"):
        validate(compose_cfg(["+transitions.serie=[a]"], tmp_path))


@pytest.mark.slow
def test_a_tiny_run_writes_transitions_json_and_its_summary(tmp_path, tiny_overrides):
    from trainer.retro import main as retro_main
    from trainer.run_dir import RunDir
    from trainer.train import train

    run = tmp_path / "run"
    summary = train(compose_cfg([*tiny_overrides, "budget.tokens=6400", "callbacks.probes.every_n_steps=5",
                                 "transitions.series=[train/loss,not/logged]"], run))
    on_disk = json.loads((run / "transitions.json").read_text())
    assert on_disk["probe/heldout/acc"]["rises"] is not None  # a series' fit is a top-level key
    report = RunDir(run).read_transitions()
    assert report["tokens_per_step"] == summary["tokens_per_step"]
    assert "wild bootstrap" in report["interval_method"] and report["missing_series"] == ["not/logged"]
    assert {"probe/heldout/acc", "probe/heldout/logprob", "train/loss"} <= set(report["series"])
    for name, fit in report["series"].items():
        assert {"n_points", "model", "verdict", "rises", "breakthroughness", "fit"} <= set(fit)
        assert fit["verdict"] in ("no rise", "one rise", "two rises") and fit["n_points"] >= 20
        assert all(set(rise) == RISE_KEYS for rise in fit["rises"])
        # summary.json carries each rise's midpoint and width with their intervals.
        assert [r["midpoint_ci"] for r in summary["transitions"][name]] == [r["midpoint_ci"] for r in fit["rises"]]

    # elab-retro fits its own grid into retro/transitions.json.
    assert retro_main([str(run), "--all", "--no-progress", "--monitors", "probes"]) == 0
    retro = RunDir(run).read_transitions("retro/transitions.json")
    assert retro["source"] == "retro/metrics.csv" and retro["missing_series"] == ["train/loss", "not/logged"]
    assert {"probe/heldout/acc", "probe/heldout/logprob"} == set(retro["series"])


def test_the_analysis_tabulates_and_draws_midpoint_and_width_per_cell(tmp_path, capsys):
    from tests.test_analysis import PNG_MAGIC, write_run
    from trainer.analysis import analyze_sweep_main

    sweep = tmp_path / "sweep"
    for job, (n_classes, seed) in enumerate([(64, 0), (64, 1), (512, 0), (512, 1)]):
        write_run(sweep / str(job), [f"data.n_classes={n_classes}", f"seed={seed}"], jumps=n_classes == 512)
    # The 512 runs record their transitions in summary.json, as the trainer does; the 64 runs
    # (written before transitions were measured) are fitted from their CSV: flat, no rise.
    for job, midpoint, width in ((2, 500_000, 1000), (3, 700_000, 3000)):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        summary["transitions"] = {"probe/icl/acc": [
            {"direction": "rise", "midpoint_step": midpoint / 1024 - 1, "midpoint_tokens": midpoint,
             "width_steps": width / 1024, "width_tokens": width, "height": 0.8, "breakthroughness": 9.0}]}
        (sweep / str(job) / "summary.json").write_text(json.dumps(summary))
    assert analyze_sweep_main([str(sweep), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "out" / "transitions.png") in printed
    assert (tmp_path / "out" / "transitions.png").read_bytes().startswith(PNG_MAGIC)
    with (tmp_path / "out" / "transitions.csv").open() as f:
        rows = {row["data.n_classes"]: row for row in csv.DictReader(f)}
    assert rows["64"]["n"] == "2" and rows["64"]["n_rise"] == "0" and rows["64"]["midpoint_tokens"] == ""
    assert rows["512"]["n_rise"] == "2" and float(rows["512"]["midpoint_tokens"]) == 600_000
    assert float(rows["512"]["width_tokens"]) == 2000 and float(rows["512"]["width_sd"]) == pytest.approx(1414.2, abs=0.1)
    assert (tmp_path / "out" / "transitions.md").read_text() in printed
