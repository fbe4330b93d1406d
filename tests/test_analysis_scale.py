"""Diversity or scale? On a two-axis sweep elab-analyze draws both axes with seed spread, reads the
model axis as the parameter count the runs measured (not the config's name), and says how much one
step on each axis moves the capability."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import yaml

from trainer.analysis import analyze_sweep_main, load_sweep
from trainer.analysis.scale import axis_effects, scale_grid, size_to_reach

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC = "probe/icl/acc"
# Config names sort large < medium < small; the parameter counts say the opposite.
SIZES = {"attn_small": 10_000, "attn_medium": 100_000, "attn_large": 400_000}
SEEDS = (0, 1, 2)


def write_job(job_dir, overrides, *, final, jump_tokens, n_params, flops, data_metrics,
              rise_step=None):
    """The parts of the run-dir contract the scale analysis reads: .hydra/, summary.json, the
    capability's jump event, and its curve (0.1, then ``final`` from ``rise_step`` on)."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / "csv").mkdir()
    (job_dir / "csv" / "metrics.csv").write_text("step," + METRIC + "\n" + "".join(
        f"{step},{final if rise_step is not None and step >= rise_step else 0.1}\n"
        for step in range(0, 1000, 50)))
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    events = [] if jump_tokens is None else [
        {"series": METRIC, "step": jump_tokens // 1000, "tokens": jump_tokens, "size": 0.5}
    ]
    (job_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (job_dir / "summary.json").write_text(json.dumps({
        "status": "completed", "overrides": overrides, "tokens_per_step": 1000,
        "n_params": n_params, "flops_per_token": flops,
        "metrics": {METRIC: final, "train/loss": 1.0, **data_metrics},
    }))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """model (3 sizes) x data.label_mapping_diversity (fresh 0 / fixed 1) x 3 seeds.

    With fresh mappings the capability is 0.5 + 0.2 per size rank, plus 0.02 * seed * rank (so the
    size effect differs by seed); with a fixed mapping it is 0.1 + 0.02 * seed * rank and never
    jumps. Jumps come 200k tokens earlier per size rank, and so does the rise of the curve.
    """
    root = tmp_path_factory.mktemp("scale_sweep")
    job = 0
    for rank, (model, n_params) in enumerate(sorted(SIZES.items(), key=lambda kv: kv[1])):
        for diversity in (0, 1):
            for seed in SEEDS:
                fresh = diversity == 0
                write_job(
                    root / str(job),
                    [f"model={model}", f"data.label_mapping_diversity={diversity}", f"seed={seed}"],
                    final=(0.5 + 0.2 * rank if fresh else 0.1) + 0.02 * seed * rank,
                    jump_tokens=1_000_000 - 200_000 * rank if fresh else None,
                    n_params=n_params,
                    flops=6 * n_params,
                    data_metrics={"data/label_conflict_rate": 0.9 if fresh else 0.0},
                    rise_step=600 - 200 * rank if fresh else None,
                )
                job += 1
    return root


@pytest.fixture(scope="module")
def analysed(sweep, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("scale_analysis")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert analyze_sweep_main([str(sweep), "-o", str(out_dir), "--level", "0.6"]) == 0
    return out_dir, printed.getvalue()


def effect_rows(out_dir):
    with (out_dir / "axis_effects.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_cli_writes_the_figure_and_prints_the_effect_table(analysed):
    out_dir, printed = analysed
    assert (out_dir / "diversity_vs_scale.png").read_bytes().startswith(PNG_MAGIC)
    for name in ("diversity_vs_scale.png", "axis_effects.csv", "axis_effects.md"):
        assert str(out_dir / name) in printed
    assert (out_dir / "axis_effects.md").read_text() in printed
    report = (out_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4 and "How much one step" in report


def test_the_model_axis_is_read_as_measured_parameters_in_size_order(sweep):
    grid = scale_grid(load_sweep(sweep), METRIC, "model", "data.label_mapping_diversity")
    assert grid.measure == "n_params"
    assert grid.size_values == ["attn_small", "attn_medium", "attn_large"]
    assert grid.position[0].tolist() == [10_000, 100_000, 400_000]


# Student's t quantile for a two-sided 95% interval over 3 seeds (2 degrees of freedom).
T_2 = 4.302653


def test_one_step_on_each_axis_is_reported_with_its_95_interval_over_seeds(analysed):
    rows = effect_rows(analysed[0])
    overall = {r["axis"]: r for r in rows if r["step"] == "mean of one step"}
    # A size step adds 0.2 + 0.02 * seed with fresh mappings and 0.02 * seed with a fixed one:
    # per seed (0.1 + 0.02 * seed), i.e. 0.12, sd 0.02 over seeds 0, 1, 2.
    half = T_2 * 0.02 / 3 ** 0.5
    assert float(overall["model"]["d_capability"]) == pytest.approx(0.12)
    assert float(overall["model"]["d_capability_lo"]) == pytest.approx(0.12 - half)
    assert float(overall["model"]["d_capability_hi"]) == pytest.approx(0.12 + half)
    assert overall["model"]["n_capability"] == "3"
    assert overall["model"]["d_capability_excludes_0"] == "True"
    # The range over the axis does not let a rise and a fall cancel: per seed (0.4 + 0.04 * seed
    # with fresh mappings, 0.04 * seed with a fixed one) / 2 -> 0.24, sd 0.04.
    spans = {r["axis"]: r for r in rows if r["step"] == "range (max - min)"}
    assert float(spans["model"]["d_capability"]) == pytest.approx(0.24)
    assert float(spans["model"]["d_capability_hi"]) == pytest.approx(0.24 + 2 * half)
    # Fresh (0) -> fixed (1) loses 0.4 + 0.2 * rank whatever the seed: -0.6, a zero-width interval.
    data = overall["data.label_mapping_diversity"]
    assert float(data["d_capability"]) == pytest.approx(-0.6)
    assert float(data["d_capability_hi"]) == pytest.approx(-0.6)
    # Tokens-to-jump: only runs that jumped pair up (fresh mappings), 200k earlier per size step.
    assert float(overall["model"]["d_tokens_to_jump"]) == pytest.approx(-200_000)
    assert data["d_tokens_to_jump"] == "" and data["n_tokens_to_jump"] == "0"
    # Tokens until the curve first reaches 0.6: only the medium and large models with fresh
    # mappings get there (steps 400 and 200), one size step apart.
    assert float(overall["model"]["d_tokens_to_level"]) == pytest.approx(-200_000)
    assert overall["model"]["n_tokens_to_level"] == "3"
    steps = [(r["step"], r["at"]) for r in rows if r["axis"] == "model"][:3]
    assert steps == [("attn_small -> attn_medium", "data.label_mapping_diversity=0"),
                     ("attn_small -> attn_medium", "data.label_mapping_diversity=1"),
                     ("attn_small -> attn_medium", "mean over data.label_mapping_diversity")]


def test_axis_effects_json_gives_each_step_its_seed_paired_interval(analysed):
    effects = json.loads((analysed[0] / "axis_effects.json").read_text())
    assert all(set(e) >= {"axis", "from", "to", "at", "mean", "ci_lo", "ci_hi", "n"}
               for e in effects)
    by_key = {(e["axis"], e["from"], e["to"], e["at"]): e for e in effects}
    # small -> medium with fresh maps: +0.2 + 0.02 * seed -> 0.22 [0.22 -+ t * 0.02 / sqrt 3], n 3.
    fresh = by_key[("model", "attn_small", "attn_medium", "data.label_mapping_diversity=0")]
    half = T_2 * 0.02 / 3 ** 0.5
    assert (fresh["mean"], fresh["ci_lo"], fresh["ci_hi"], fresh["n"]) == pytest.approx(
        (0.22, 0.22 - half, 0.22 + half, 3))
    assert fresh["excludes_0"] is True and fresh["metric"] == METRIC
    # With a fixed map a size step adds only 0.02 * seed: 0.02 [-0.03, 0.07], which includes 0.
    fixed = by_key[("model", "attn_small", "attn_medium", "data.label_mapping_diversity=1")]
    assert fixed["mean"] == pytest.approx(0.02) and fixed["excludes_0"] is False
    assert fixed["ci_lo"] < 0 < fixed["ci_hi"]
    # Averaged over both maps, per seed: (0.2 + 0.04 * seed) / 2 = 0.1 + 0.02 * seed.
    both = by_key[("model", "attn_small", "attn_medium",
                   "mean over data.label_mapping_diversity")]
    assert both["mean"] == pytest.approx(0.12) and both["n"] == 3
    # Every step of both axes at every level, plus the averaged rows: (2 x 2 + 2) + (1 x 3 + 1).
    assert len(effects) == 10 and all(e["n"] == 3 for e in effects)


def test_the_printed_effect_table_shows_intervals_and_says_what_excludes_0(analysed):
    markdown = (analysed[0] / "axis_effects.md").read_text()
    assert "| model | attn_small -> attn_medium | data.label_mapping_diversity=1 | +0.02 [" in markdown
    line = next(ln for ln in markdown.splitlines()
                if "| data.label_mapping_diversity | 0 -> 1 | model=attn_small |" in ln)
    assert "-0.4 [-0.4, -0.4] n=3, excludes 0" in line
    assert "95% t-interval over seeds" in markdown


def test_smallest_size_reaching_a_level_per_data_level(sweep, analysed):
    grid = scale_grid(load_sweep(sweep), METRIC, "model", "data.label_mapping_diversity", 0.6)
    assert sorted(grid.reach[0][2].values()) == [201_000] * 3  # (step 200 + 1) * 1000 tokens
    fresh, fixed = size_to_reach(grid)
    assert fresh["smallest model"] == "attn_medium" and fresh["n_params"] == 100_000
    assert fixed["smallest model"] is None
    assert "Smallest model reaching probe/icl/acc >= 0.6" in analysed[1]


def test_configured_and_measured_diversity_are_side_by_side(analysed):
    markdown = (analysed[0] / "axis_effects.md").read_text()
    assert "data.label_mapping_diversity: configured vs measured" in markdown
    assert "| data.label_mapping_diversity (configured) | runs | data/label_conflict_rate |" in markdown
    assert "| 0 | 9 | 0.9 [0.9, 0.9] n=9 |" in markdown and "| 1 | 9 | 0 [0, 0] n=9 |" in markdown


def test_a_looped_model_axis_is_read_as_flops_when_parameters_do_not_change(tmp_path):
    """Loops reuse the same weights: the size that moves is compute per token."""
    for job, (loops, seed) in enumerate([(1, 0), (4, 0), (1, 1), (4, 1)]):
        write_job(tmp_path / str(job), [f"model.n_loops={loops}", "data.n_classes=64",
                                        f"seed={seed}"] if job < 2 else
                  [f"model.n_loops={loops}", "data.n_classes=512", f"seed={seed}"],
                  final=0.5, jump_tokens=None, n_params=50_000, flops=loops * 300_000,
                  data_metrics={})
    runs = load_sweep(tmp_path)
    grid = scale_grid(runs, METRIC, "model.n_loops", "data.n_classes")
    assert grid.measure == "flops_per_token"
    assert grid.position[:, 1].tolist() == [1_200_000, 1_200_000]
    assert all(r["n_capability"] == 0 for r in axis_effects(grid) if r["axis"] == "data.n_classes")
