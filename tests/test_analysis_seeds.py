"""Seeds in every answer: elab-analyze gives every cell its mean, 95% interval and n, says how
many seeds a legend averages, says why a tokens-to-jump panel is empty, and warns when the runs
it is given are not one experiment."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
from matplotlib.figure import Figure

from tests.test_analysis import write_run
from trainer.analysis import analyze_sweep_main
from trainer.analysis.stats import estimate, t_quantile

T_2 = 4.302653  # Student's t, two-sided 95%, 2 degrees of freedom (3 seeds)


def analyse(sweep, out_dir, *args):
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        assert analyze_sweep_main([str(sweep), "-o", str(out_dir), *args]) == 0
    return printed.getvalue(), errors.getvalue()


def set_summary(run_dir, **fields):
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure elab-analyze saves, so a test can read its legends, titles and notes."""
    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def figure_texts(figure) -> str:
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    return "\n".join(texts)


def test_the_t_interval_matches_scipy_and_one_seed_has_none():
    from scipy.special import stdtrit

    for dof in (1, 2, 5, 30, 31, 100, 1000):
        assert t_quantile(dof) == pytest.approx(stdtrit(dof, 0.975), abs=1e-5)
    cell = estimate([0.5, 0.6, 0.7])
    assert (cell.mean, cell.n) == (pytest.approx(0.6), 3)
    assert cell.hi - cell.mean == pytest.approx(T_2 * 0.1 / 3 ** 0.5)
    assert cell.text() == "0.6 [0.352, 0.848] n=3" and cell.excludes_zero
    single = estimate([0.5])
    assert single.text() == "0.5 n=1 (no interval)" and single.excludes_zero is None


def test_each_cell_has_its_mean_interval_and_n_and_a_failed_run_leaves_one(tmp_path):
    """3 seeds per cell with a known spread: 0.1 * (1 + seed) at p_bursty 0.9 (0.1, 0.2, 0.3)."""
    for job, (p_bursty, seed) in enumerate((p, s) for p in (0.5, 0.9) for s in (0, 1, 2)):
        run_dir = tmp_path / "sweep" / str(job)
        failed = p_bursty == 0.5 and seed > 0
        write_run(run_dir, [f"data.p_bursty={p_bursty}", f"seed={seed}"], jumps=False,
                  status="failed" if failed else "completed")
        if p_bursty == 0.9:
            metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
            set_summary(run_dir, metrics={**metrics, "probe/icl/acc": 0.1 * (1 + seed)})
    printed, _ = analyse(tmp_path / "sweep", tmp_path / "out")
    cells = (tmp_path / "out" / "cells.md").read_text()
    assert "| 0.5 | 1/3 | 0.1 n=1 (no interval) |" in cells
    half = T_2 * 0.1 / 3 ** 0.5
    assert f"| 0.9 | 3/3 | 0.2 [{0.2 - half:.3g}, {0.2 + half:.3g}] n=3 |" in cells
    assert cells in printed
    with (tmp_path / "out" / "cells.csv").open(newline="") as f:
        rows = {row["data.p_bursty"]: row for row in csv.DictReader(f)}
    assert float(rows["0.9"]["probe/icl/acc hi"]) == pytest.approx(0.2 + half)
    assert rows["0.9"]["probe/icl/acc n"] == "3" and rows["0.5"]["probe/icl/acc lo"] == ""
    report = (tmp_path / "out" / "report.html").read_text()
    assert "95% t-interval over seeds" in report and "What the columns mean" in report
    assert report.count("<h2>Table of runs</h2>") == 1 and "<h2>Runs</h2>" not in report
    assert "<dt>seeds</dt><dd>3 (0, 1, 2)</dd>" in report and "<dt>steps</dt><dd>500-1000</dd>" in report  # the failed runs stopped halfway


def test_legends_count_the_real_seeds_and_an_empty_jump_panel_says_why(tmp_path, saved_figures):
    """One seed per point and no jump anywhere: "mean over 1 seed", and the tokens-to-jump panel
    says that nothing jumped within the budget rather than standing empty."""
    for job, n_classes in enumerate((16, 256)):
        write_run(tmp_path / "sweep" / str(job), [f"data.n_classes={n_classes}", "seed=0"],
                  jumps=False, steps=200)
    printed, _ = analyse(tmp_path / "sweep", tmp_path / "out")
    phase = figure_texts(saved_figures[0])
    assert "mean over 1 seed, 95% t-interval over seeds" in phase
    assert "mean over seeds" not in phase
    within = "no jump detected within 205k tokens"  # tokens_seen: 200 steps x 1024
    assert within in phase
    assert "note: no jump of probe/icl/acc detected within 205k" \
        in printed
    assert "no jump of probe/icl/acc detected" in (tmp_path / "out" / "report.html").read_text()


def test_a_sweep_of_three_seeds_writes_axis_effects_with_intervals(tmp_path):
    """2 x 2 grid x 3 seeds; p_bursty 0.5 -> 0.9 adds 0.3 + 0.05 * seed, n_classes adds 0."""
    job = 0
    for n_classes in (64, 512):
        for p_bursty in (0.5, 0.9):
            for seed in (0, 1, 2):
                run_dir = tmp_path / "sweep" / str(job)
                write_run(run_dir, [f"data.n_classes={n_classes}", f"data.p_bursty={p_bursty}",
                                    f"seed={seed}"], jumps=False)
                acc = 0.1 + (0.3 + 0.05 * seed if p_bursty == 0.9 else 0.0)
                metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
                set_summary(run_dir, metrics={**metrics, "probe/icl/acc": acc})
                job += 1
    analyse(tmp_path / "sweep", tmp_path / "out")
    effects = json.loads((tmp_path / "out" / "axis_effects.json").read_text())
    burst = [e for e in effects if e["axis"] == "data.p_bursty"]
    assert {(e["from"], e["to"]) for e in burst} == {("0.5", "0.9")}
    half = T_2 * 0.05
    for effect in burst:  # sd of (0.30, 0.35, 0.40) is 0.05: half-width t * 0.05 / sqrt 3 * ...
        assert effect["n"] == 3 and effect["mean"] == pytest.approx(0.35)
        assert effect["ci_hi"] - effect["mean"] == pytest.approx(half / 3 ** 0.5)
        assert effect["excludes_0"] is True
    classes = [e for e in effects if e["axis"] == "data.n_classes"]
    assert classes and all(e["mean"] == pytest.approx(0.0, abs=1e-12) for e in classes)
    assert all(e["excludes_0"] is False for e in classes)


def test_runs_of_unrelated_experiments_are_named_with_the_keys_that_differ(tmp_path):
    """Two sweeps at different budgets in one folder, and a run of another model family: the
    warning names budget.tokens and model._target_ with their runs, on the console and in the
    report, instead of an axis table reading 'budget.tokens 5120 -> 300000' without a word."""
    for sweep, budget in (("a", 5120), ("b", 300000)):
        (tmp_path / "mixed" / sweep).mkdir(parents=True)
        (tmp_path / "mixed" / sweep / "multirun.yaml").write_text("hydra: {}\n")
        for seed in (0, 1):
            run_dir = tmp_path / "mixed" / sweep / str(seed)
            write_run(run_dir, [f"budget.tokens={budget}", f"seed={seed}"], jumps=False)
            family = "trainer.models.GPT" if sweep == "b" and seed == 1 else "trainer.models.AttnOnly"
            set_summary(run_dir, config={"budget": {"tokens": budget},
                                         "model": {"_target_": family}})
    printed, errors = analyse(tmp_path / "mixed", tmp_path / "out")
    assert "look like more than one experiment" in errors
    assert "budget.tokens is constant within each launch folder and differs between them: " \
           "5120 in a/0, a/1; 300000 in b/0, b/1" in errors
    assert "model._target_ differs and is not a swept axis: trainer.models.AttnOnly in a/0, " \
           "a/1, b/0; trainer.models.GPT in b/1" in errors
    assert "budget.tokens is constant within each launch folder" in \
        (tmp_path / "out" / "report.html").read_text()


def test_one_sweep_of_one_experiment_raises_no_warning(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    for job, budget in enumerate((5120, 300000)):
        run_dir = tmp_path / "sweep" / str(job)
        write_run(run_dir, [f"budget.tokens={budget}", "seed=0"], jumps=False)
        set_summary(run_dir, config={"budget": {"tokens": budget},
                                     "model": {"_target_": "trainer.models.AttnOnly"}})
    _, errors = analyse(tmp_path / "sweep", tmp_path / "out")
    assert "warning" not in errors
