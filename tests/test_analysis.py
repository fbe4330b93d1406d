"""The analysis reads run dirs exactly as the trainer writes them and turns a sweep into a phase
diagram, per-run curves, a table and an offline report; bad input gets an error that says why."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest
import yaml

from trainer.analysis import (
    AnalysisError,
    analyze_sweep_main,
    load_run,
    load_sweep,
    phase_grid,
    plot_run,
    plot_run_main,
    swept_axes,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 1024
CAPABILITY_JUMP_STEP = 600
TOPOLOGY_JUMP_STEP = 400
# Where the detector dates the jumps' onsets; the analysis dates a jump by its onset, as lead-lag does.
CAPABILITY_ONSET_STEP = 550
TOPOLOGY_ONSET_STEP = 350


def write_run(run_dir, overrides, *, jumps: bool, status: str = "completed", steps: int = 1000):
    """A run dir following the contract: .hydra/, summary.json, events.jsonl, sparse metrics.csv.

    With ``jumps`` the capability steps up at CAPABILITY_JUMP_STEP and a topology series
    TOPOLOGY_JUMP_STEP earlier; without, both stay flat. A failed run stops halfway with no events.
    """
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "data": {}}))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    last_step = steps if status == "completed" else steps // 2
    rows = []
    for step in range(0, last_step + 1, 50):
        rows.append({"step": step, "train/loss": 3.0 - step / 1000})
        if step % 100 == 0:
            jumped = jumps and step >= CAPABILITY_JUMP_STEP
            rows.append(
                {
                    "step": step,
                    "probe/icl/acc": 0.9 if jumped else 0.1,
                    "probe/icl/logprob": -0.2 if jumped else -2.0,
                    "topo/layer1/eff_rank": 4.0 if jumps and step >= TOPOLOGY_JUMP_STEP else 12.0,
                    "topo/layer0/eff_rank": 10.0,
                    "data/domain_entropy": 1.5,
                }
            )
    (run_dir / "csv").mkdir()
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as f:
        columns = [
            "epoch",
            "step",
            "train/loss",
            "probe/icl/acc",
            "probe/icl/logprob",
            "topo/layer0/eff_rank",
            "topo/layer1/eff_rank",
            "data/domain_entropy",
        ]
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({"epoch": 0, **row} for row in rows)
    events = []
    if jumps and status == "completed":
        events = [
            {
                "series": "topo/layer1/eff_rank",
                "step": TOPOLOGY_JUMP_STEP,
                "onset_step": TOPOLOGY_ONSET_STEP,
                "size": -8.0,
                "score": 7.5,
                "before": 12.0,
                "after": 4.0,
            },
            {
                "series": "probe/icl/acc",
                "step": CAPABILITY_JUMP_STEP,
                "onset_step": CAPABILITY_ONSET_STEP,
                "size": 0.8,
                "score": 9.1,
                "before": 0.1,
                "after": 0.9,
            },
        ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    metrics = {}
    for row in rows:
        metrics.update({k: v for k, v in row.items() if k != "step"})
    summary = {
        "status": status,
        "error": None if status == "completed" else "RuntimeError: loss is NaN\nTraceback ...",
        "run_dir": str(run_dir),
        "overrides": overrides,
        "metrics": metrics,
        "tokens_seen": last_step * TOKENS_PER_STEP,
        "steps": last_step,
        "tokens_per_step": TOKENS_PER_STEP,
        "tokens_per_s": 10000.0,
        "wall_time_s": 12.5,
        "n_params": 500_000,
        "flops_per_token": 3_000_000,
        "jumps": events,
        "lead_lag": [],
        "versions": {"python": "3.11"},
        "git_sha": None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2x2 grid (n_classes x p_bursty) x 2 seeds, jobs nested one level as Hydra may do.

    Only n_classes=512 jumps; the last job (n_classes=512, p_bursty=0.9, seed=1) failed.
    """
    root = tmp_path_factory.mktemp("sweep")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for n_classes in (64, 512):
        for p_bursty in (0.5, 0.9):
            for seed in (0, 1):
                overrides = [
                    f"data.n_classes={n_classes}",
                    f"data.p_bursty={p_bursty}",
                    f"seed={seed}",
                ]
                failed = job == 7
                write_run(
                    root / f"batch{job // 4}" / str(job),
                    overrides,
                    jumps=n_classes == 512,
                    status="failed" if failed else "completed",
                )
                job += 1
    return root


@pytest.fixture(scope="module")
def analysis(sweep, tmp_path_factory):
    """The real CLI run once on the sweep; the tests below read what it wrote and printed."""
    out_dir = tmp_path_factory.mktemp("analysis")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert analyze_sweep_main([str(sweep), "-o", str(out_dir)]) == 0
    return out_dir, printed.getvalue()


def read_rows(out_dir):
    with (out_dir / "runs.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_cli_writes_every_output_and_prints_paths_and_table(analysis):
    out_dir, printed = analysis
    for name in ("phase_diagram.png", "runs.png", "runs.csv", "runs.md", "report.html"):
        assert str(out_dir / name) in printed
    for name in ("phase_diagram.png", "runs.png"):
        assert (out_dir / name).read_bytes().startswith(PNG_MAGIC)
    markdown = (out_dir / "runs.md").read_text()
    assert markdown.splitlines()[0].startswith("| run | status | data.n_classes | data.p_bursty |")
    assert markdown in printed


def test_table_has_one_row_per_run_with_knobs_tokens_to_jump_and_lead(analysis):
    rows = read_rows(analysis[0])
    assert len(rows) == 8
    assert [(r["data.n_classes"], r["data.p_bursty"], r["seed"]) for r in rows] == [
        (n, p, s) for n in ("64", "512") for p in ("0.5", "0.9") for s in ("0", "1")
    ]
    for row in rows:
        jumped = row["data.n_classes"] == "512" and row["status"] == "completed"
        assert row["tokens_to_jump"] == (
            str((CAPABILITY_ONSET_STEP + 1) * TOKENS_PER_STEP) if jumped else ""
        )
        assert row["n_jumps"] == ("2" if jumped else "0")
        assert row["lead_series"] == ("topo/layer1/eff_rank" if jumped else "")
        assert row["lead_steps"] == (
            str(CAPABILITY_ONSET_STEP - TOPOLOGY_ONSET_STEP) if jumped else ""
        )
        assert float(row["probe/icl/acc"]) == pytest.approx(0.9 if jumped else 0.1)
        assert float(row["data/domain_entropy"]) == 1.5
        assert "probe/icl/logprob" in row and "train/loss" in row


def test_failed_run_is_listed_as_failed_and_left_out_of_the_averages(analysis, sweep):
    failed = [r for r in read_rows(analysis[0]) if r["status"] == "failed"]
    assert [(r["run"], r["data.n_classes"], r["data.p_bursty"], r["seed"]) for r in failed] == [
        ("batch1/7", "512", "0.9", "1")
    ]
    assert failed[0]["error"] == "RuntimeError: loss is NaN"

    runs = load_sweep(sweep)
    grid = phase_grid(runs, "probe/icl/acc", "data.n_classes", "data.p_bursty")
    assert grid.x_values == ["64", "512"] and grid.y_values == ["0.5", "0.9"]
    np.testing.assert_allclose(grid.metric, [[0.1, 0.9], [0.1, 0.9]])
    expected_tokens = (CAPABILITY_ONSET_STEP + 1) * TOKENS_PER_STEP  # after batch `step`: step + 1 seen
    np.testing.assert_array_equal(grid.tokens_to_jump, [[np.nan, expected_tokens]] * 2)
    np.testing.assert_array_equal(grid.n_completed, [[2, 2], [2, 1]])
    np.testing.assert_array_equal(grid.n_jumped, [[0, 2], [0, 1]])


def test_swept_axes_follow_the_command_line_and_exclude_the_seed(sweep):
    assert swept_axes(load_sweep(sweep)) == ["data.n_classes", "data.p_bursty"]


def test_report_embeds_the_images_and_links_nowhere(analysis):
    report = (analysis[0] / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report)
    assert len(images) == 4  # phase diagram, diversity vs scale, runs, transitions
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert "<table>" in report and "batch1/7" in report
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report)
    assert not re.search(r"https?:", without_images)


def test_one_swept_axis_draws_a_line_plot(tmp_path):
    for job, n_classes in enumerate((16, 256, 4096)):
        write_run(
            tmp_path / "sweep" / str(job),
            [f"data.n_classes={n_classes}"],
            jumps=n_classes > 16,
            steps=200,
        )
    runs = load_sweep(tmp_path / "sweep")
    assert swept_axes(runs) == ["data.n_classes"]
    assert analyze_sweep_main([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "phase_diagram.png").read_bytes().startswith(PNG_MAGIC)
    assert len(read_rows(tmp_path / "out")) == 3


def test_a_killed_job_without_summary_is_listed_as_incomplete(tmp_path, capsys):
    """Hydra writes .hydra/ when a job starts; a job killed before its summary (OOM killer, a
    cancelled Slurm job) must show up as incomplete, not vanish from the sweep."""
    write_run(tmp_path / "sweep" / "0", ["data.n_classes=16"], jumps=False, steps=200)
    write_run(tmp_path / "sweep" / "1", ["data.n_classes=256"], jumps=True, steps=200)
    (tmp_path / "sweep" / "1" / "summary.json").unlink()
    (tmp_path / "sweep" / "2" / ".hydra").mkdir(parents=True)  # killed before logging anything
    (tmp_path / "sweep" / "2" / ".hydra" / "overrides.yaml").write_text("- data.n_classes=4096\n")
    assert analyze_sweep_main([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")]) == 0
    rows = read_rows(tmp_path / "out")
    assert [(r["run"], r["data.n_classes"], r["status"]) for r in rows] == [
        ("0", "16", "completed"), ("1", "256", "incomplete"), ("2", "4096", "incomplete")
    ]
    assert rows[1]["error"].startswith("no summary.json")
    printed = capsys.readouterr().out
    assert "2 run(s) not completed:" in printed and "  2: incomplete (no summary.json" in printed


def test_plot_run_marks_each_series_jumps(sweep, tmp_path):
    out = tmp_path / "run.png"
    marked = plot_run(sweep / "batch1" / "4", out, all_series=True)
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert marked["probe/icl/acc"] == [CAPABILITY_ONSET_STEP]
    assert marked["topo/layer1/eff_rank"] == [TOPOLOGY_ONSET_STEP]
    assert marked["topo/layer0/eff_rank"] == []
    assert {"train/loss", "probe/icl/logprob", "data/domain_entropy"} <= set(marked)

    chosen = plot_run(sweep / "batch1" / "4", out, series=["topo/*/eff_rank"])
    assert set(chosen) == {"topo/layer0/eff_rank", "topo/layer1/eff_rank"}


def test_the_default_plot_is_the_capability_its_twin_the_loss_and_what_led_it(sweep, tmp_path):
    """At most 8 panels: no data statistics, no topology series that did not move with the jump."""
    marked = plot_run(sweep / "batch1" / "4", tmp_path / "run.png")
    assert list(marked) == ["probe/icl/acc", "probe/icl/logprob", "train/loss",
                            "topo/layer1/eff_rank"]
    assert marked["topo/layer1/eff_rank"] == [TOPOLOGY_ONSET_STEP]
    everything = plot_run(sweep / "batch1" / "4", tmp_path / "all.png", all_series=True)
    assert len(everything) > len(marked) and "data/domain_entropy" in everything


def test_plot_run_cli_writes_the_png_and_reports_the_jumps(sweep, tmp_path, capsys):
    out = tmp_path / "acc.png"
    assert (
        plot_run_main([str(sweep / "batch1" / "4"), "-o", str(out), "--series", "probe/icl/acc"])
        == 0
    )
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"jumps of probe/icl/acc at steps {CAPABILITY_ONSET_STEP}" in capsys.readouterr().out


def test_a_failed_run_loads_and_plots(sweep, tmp_path):
    run = load_run(sweep / "batch1" / "7")
    assert run.status == "failed" and run.events == []
    assert run.series["train/loss"][0][-1] == 500
    assert plot_run(sweep / "batch1" / "7", tmp_path / "failed.png")["probe/icl/acc"] == []


def test_a_dir_that_is_not_a_run_is_named_in_the_error(tmp_path, capsys):
    with pytest.raises(AnalysisError, match=f"{tmp_path} is not a run dir"):
        load_run(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        analyze_sweep_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"{tmp_path} is not a sweep or run dir" in capsys.readouterr().err


def test_an_unknown_metric_lists_the_available_ones(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        analyze_sweep_main([str(sweep), "-o", str(tmp_path), "--metric", "probe/nope/acc"])
    error = capsys.readouterr().err
    assert "'probe/nope/acc'" in error and "probe/icl/acc" in error and "train/loss" in error
    assert not (tmp_path / "phase_diagram.png").exists()


def test_an_axis_that_was_not_swept_lists_the_swept_ones(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        analyze_sweep_main([str(sweep), "-o", str(tmp_path), "--x", "seed"])
    assert "swept axes: data.n_classes, data.p_bursty" in capsys.readouterr().err


def test_a_series_that_matches_nothing_lists_the_available_ones(sweep, tmp_path):
    with pytest.raises(AnalysisError, match=r"no series matching topo/\*/betti.*train/loss"):
        plot_run(sweep / "batch0" / "0", tmp_path / "x.png", series=["topo/*/betti"])


class _FakeWandbRun:
    """What wandb's public API returns for one run of a sweep logged with logger=wandb."""

    def __init__(self, name, n_classes, jump_step):
        self.name, self.state = name, "finished"
        self.config = {"overrides": [f"data.n_classes={n_classes}", "seed=0"], "tokens_per_step": 100}
        self.summary = {"probe/icl/acc": 0.9 if jump_step else 0.2, "_step": 40}
        self.jump_step = jump_step

    def scan_history(self):
        for step in range(0, 400, 10):
            acc = 0.9 if self.jump_step and step >= self.jump_step else 0.2
            row = {"trainer/global_step": step, "probe/icl/acc": acc, "_runtime": 1.0}
            if step == self.jump_step:
                row["jump/probe/icl/acc"] = 0.7
            yield row


class _FakeWandbApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = None

    def runs(self, path, filters):
        self.asked = (path, filters)
        return self._runs


def test_a_wandb_group_is_analysed_like_a_sweep_dir(tmp_path):
    from trainer.analysis import analyze_sweep, load_wandb_group

    api = _FakeWandbApi([_FakeWandbRun("a", 64, None), _FakeWandbRun("b", 2048, 200)])
    runs = load_wandb_group("sweep-1", project="p", entity="me", api=api)
    assert api.asked == ("me/p", {"group": "sweep-1"})
    by_name = {r.name: r for r in runs}
    assert by_name["b"].tokens_to_jump("probe/icl/acc") == 201 * 100
    assert by_name["a"].tokens_to_jump("probe/icl/acc") is None
    assert list(by_name["b"].series["probe/icl/acc"][0][:3]) == [0, 10, 20]
    result = analyze_sweep(None, tmp_path / "out", runs=runs, title="wandb group sweep-1")
    rows = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and "2048" in "".join(rows)
    assert result.report.read_text().count("data:image/png;base64,") == 3  # + transitions
