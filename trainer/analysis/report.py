"""The sweep analysis end to end: every figure and table of a sweep, and one offline HTML page."""

from __future__ import annotations

import base64
import html
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.analysis.axes import choose_axes, choose_metric, experiment_mismatch, swept_axes
from trainer.analysis.phase import format_tokens, plot_phase_diagram
from trainer.analysis.plots import plot_runs
from trainer.analysis.runs import SEED_KEYS, AnalysisError, Run, budget_tokens, load_sweep
from trainer.analysis.scale import (
    EFFECT_COLUMNS,
    axis_effects,
    effects_json,
    effects_text,
    is_model_axis,
    measured_diversity,
    plot_scale,
    scale_axes,
    scale_grid,
    size_to_reach,
)
from trainer.analysis.stats import INTERVAL
from trainer.analysis.tables import (
    GLOSSARY,
    cells_table,
    runs_table,
    table_html,
    table_markdown,
    write_table_csv,
)
from trainer.analysis.transitions import write_transition_analysis

_REPORT_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; }
tr.failed td, tr.incomplete td { background: #fde8e8; }
dt { font-weight: bold; float: left; width: 12em; }
dd { margin-left: 13em; }
.warning { border: 2px solid #c00; background: #fde8e8; padding: 0.5em 1em; }
"""


def write_report(
    path: Path,
    title: str,
    facts: Sequence[tuple[str, str]],
    images: Sequence[tuple[str, Path]],
    tables: Sequence[tuple[str, str]],
    warnings: Sequence[str] = (),
    glossary: Sequence[tuple[str, str]] = (),
) -> None:
    """A single HTML file with the PNGs inlined as data URIs: it opens offline and can be mailed
    or attached to a paper's supplement without its folder. ``warnings`` open the page in a red
    box; ``glossary`` (column, meaning) closes it."""

    def image(caption: str, png: Path) -> str:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (
            f"<h2>{html.escape(caption)}</h2>"
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        )

    def items(pairs: Sequence[tuple[str, str]]) -> str:
        return "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in pairs)

    warning = "".join(f"<p>{html.escape(line)}</p>" for line in warnings)
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_REPORT_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + (f"<div class='warning'>{warning}</div>" if warnings else "")
        + f"<dl>{items(facts)}</dl>"
        + "".join(image(caption, png) for caption, png in images)
        + "".join(f"<h2>{html.escape(caption)}</h2>{table}" for caption, table in tables)
        + (f"<h2>What the columns mean</h2><dl>{items(glossary)}</dl>" if glossary else "")
        + "</body></html>\n"
    )


@dataclass
class SweepAnalysis:
    """Where ``analyze_sweep`` wrote its outputs, and the table it printed."""

    phase_diagram: Path
    runs_plot: Path
    table_csv: Path
    table_md: Path
    cells_csv: Path
    cells_md: Path
    report: Path
    markdown: str
    # The diversity-vs-scale figure and axis-effect tables: only for sweeps with two swept axes.
    scale_plot: Path | None = None
    scale_csv: Path | None = None
    scale_md: Path | None = None
    effects_json: Path | None = None
    scale_markdown: str = ""
    # Why these runs are not one experiment (keys that differ, with their runs); empty when they are.
    warnings: list[str] = field(default_factory=list)
    # What an empty panel means ("no jump of ... detected within N tokens").
    notes: list[str] = field(default_factory=list)
    # Earlier or sharper: the capability's transition midpoint and width per cell.
    transitions_plot: Path | None = None
    transitions_markdown: str = ""
    # "name: status (why)" for every run that did not complete, so a killed job is seen, not lost.
    not_completed: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        scale = [p for p in (self.scale_plot, self.scale_csv, self.scale_md, self.effects_json,
                                 self.transitions_plot) if p is not None]
        return [self.phase_diagram, self.runs_plot, self.table_csv, self.table_md,
                self.cells_csv, self.cells_md, *scale, self.report]


def analyze_sweep(
    sweep_dir: str | Path | None,
    out_dir: str | Path | None = None,
    metric: str | None = None,
    x: str | None = None,
    y: str | None = None,
    runs: Sequence[Run] | None = None,
    title: str | None = None,
    level: float | None = None,
) -> SweepAnalysis:
    """Phase diagram, per-run curves, table of runs and the HTML report of one sweep dir (or of
    ``runs`` loaded elsewhere, e.g. :func:`load_wandb_group`, written to ``out_dir``).

    Writes into ``out_dir`` (default ``<sweep_dir>/analysis``) and validates every input before
    drawing anything, so a typo in ``metric`` or an axis costs no time. With two swept axes it also
    writes the diversity-vs-scale figure and tables (``level``: the capability the "smallest size
    reaching it" table asks for; default halfway between the worst and best cell).
    """
    if runs is None:
        sweep_dir = Path(sweep_dir)
        runs = load_sweep(sweep_dir)
        title = title or f"Sweep {sweep_dir.resolve().name}"
        source = str(sweep_dir.resolve())
        out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "analysis"
    else:
        if out_dir is None:
            raise AnalysisError("give an output directory (-o) for runs that are not a sweep dir")
        source = title or "runs"
        out_dir = Path(out_dir)
    metric = choose_metric(runs, metric)
    x, y = choose_axes(runs, x, y)
    axes = swept_axes(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = SweepAnalysis(
        phase_diagram=out_dir / "phase_diagram.png",
        runs_plot=out_dir / "runs.png",
        table_csv=out_dir / "runs.csv",
        table_md=out_dir / "runs.md",
        cells_csv=out_dir / "cells.csv",
        cells_md=out_dir / "cells.md",
        report=out_dir / "report.html",
        markdown="",
        not_completed=[f"{run.name}: {run.status} ({run.error})" for run in runs
                       if not run.completed],
        warnings=_mismatch_warning(runs),
    )
    for line in result.warnings:  # before the minutes of drawing, not after
        print(f"warning: {line}", file=sys.stderr)
    for run in runs:  # parse the curves once, before the fork, so neither process does it twice
        run.series.get(metric)
    join_runs_plot = _in_background(lambda: plot_runs(runs, metric, axes, result.runs_plot))
    plot_phase_diagram(runs, metric, x, y, result.phase_diagram)
    columns, rows = runs_table(runs, metric, axes)
    write_table_csv(result.table_csv, columns, rows)
    result.table_md.write_text(table_markdown(columns, rows))
    cell_columns, cell_rows, cell_numbers = cells_table(runs, metric, axes, columns, rows)
    write_table_csv(result.cells_csv, list(cell_numbers[0]), cell_numbers)
    result.cells_md.write_text(table_markdown(cell_columns, cell_rows))
    result.markdown = (f"### Cells: mean [{INTERVAL}] n\n\n{result.cells_md.read_text()}\n"
                       f"### Table of runs\n\n{result.table_md.read_text()}")
    images = [("Phase diagram", result.phase_diagram),
              ("Curves of every run, one panel per cell", result.runs_plot)]
    tables = [(f"Cells: mean [{INTERVAL}] n", table_html(cell_columns, cell_rows)),
              ("Table of runs", table_html(columns, rows))]
    result.transitions_plot, result.transitions_markdown, transitions_html = write_transition_analysis(
        out_dir, runs, metric, axes, x, y)
    images.append((f"{metric}: earlier or sharper? (transition midpoint and width)", result.transitions_plot))
    tables.append((f"{metric}: transitions per cell (mean, sd over seeds)", transitions_html))
    if y is not None:
        size, other = scale_axes(x, y)
        tables = _write_scale(result, runs, metric, size, other, level, out_dir) + tables
        images.insert(1, (f"{size} x {other}: how much each axis moves {metric}",
                          result.scale_plot))
    if not any(run.tokens_to_jump(metric) is not None for run in runs if run.completed):
        budget = budget_tokens(runs)
        within = f" within {format_tokens(budget)} tokens" if budget else ""
        result.notes.append(f"no jump of {metric} detected{within} in any completed run: the "
                            "tokens-to-jump panels are empty")
    join_runs_plot()
    write_report(result.report, title=title or "Sweep",
                 facts=_facts(runs, source, metric, axes, x, y)
                 + [("note", note) for note in result.notes], images=images, tables=tables,
                 warnings=result.warnings, glossary=list(GLOSSARY.items()))
    return result


def _in_background(draw: Callable[[], None]) -> Callable[[], None]:
    """Run ``draw`` in a forked process and return the function that waits for it: the figure of
    every run is the slowest output of a big sweep, and the second core draws it while this one
    draws the rest. Where there is no fork (or one core) it simply runs here."""
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        draw()
        return lambda: None
    pid = os.fork()
    if pid == 0:  # the child: draw, and leave without running the parent's exit handlers
        code = 0
        try:
            draw()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)

    def join() -> None:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise AnalysisError("drawing the figure of every run failed (traceback above)")

    return join


def _mismatch_warning(runs: Sequence[Run]) -> list[str]:
    reasons = experiment_mismatch(runs)
    if not reasons:
        return []
    return [f"these {len(runs)} runs look like more than one experiment, so their axis tables "
            "compare unlike runs; analyse each experiment's folder on its own:", *reasons]


def _facts(runs: Sequence[Run], source: str, metric: str, axes: Sequence[str], x: str | None,
           y: str | None) -> list[tuple[str, str]]:
    """The report's header: what was run, for how long, on how many seeds."""
    n_failed = sum(not run.completed for run in runs)
    budget = budget_tokens(runs)
    steps = sorted({int(run.summary["steps"]) for run in runs if run.summary.get("steps")})
    seeds = sorted({run.overrides[key] for run in runs for key in SEED_KEYS
                    if key in run.overrides}, key=lambda v: (len(v), v))
    return [
        ("source", source),
        ("runs", f"{len(runs)} ({len(runs) - n_failed} completed, {n_failed} not)"),
        ("budget", f"{format_tokens(budget)} tokens" if budget else "unknown"),
        ("steps", "-".join(map(str, steps[:: max(len(steps) - 1, 1)])) if steps else "unknown"),
        ("seeds", f"{len(seeds)} ({', '.join(seeds)})" if seeds else "1 (not swept)"),
        ("capability metric", metric),
        ("swept axes", ", ".join(axes) or "none"),
        ("phase diagram axes", " x ".join(a for a in (x, y) if a) or "none"),
        ("intervals", f"{INTERVAL}; n=1: no interval"),
    ]


def _write_scale(result: SweepAnalysis, runs: Sequence[Run], metric: str, size: str, other: str,
                 level: float | None, out_dir: Path) -> list[tuple[str, str]]:
    """The diversity-vs-scale figure, its tables as CSV and Markdown; returns them as HTML."""
    grid = scale_grid(runs, metric, size, other, level)
    result.scale_plot = out_dir / "diversity_vs_scale.png"
    result.scale_csv = out_dir / "axis_effects.csv"
    result.scale_md = out_dir / "axis_effects.md"
    result.effects_json = out_dir / "axis_effects.json"
    plot_scale(grid, metric, result.scale_plot, budget_tokens(runs))
    effects = axis_effects(grid)
    write_table_csv(result.scale_csv, EFFECT_COLUMNS, effects)
    result.effects_json.write_text(json.dumps(effects_json(effects, metric), indent=1) + "\n")
    effect_columns, effect_rows = effects_text(effects)
    sections = [
        (f"How much one step on each axis moves {metric} (seed-paired differences: mean "
         f"[{INTERVAL}] n)", effect_columns, effect_rows),
        (f"Smallest {size} reaching {metric} >= {grid.level:.3g} at each {other}", None,
         size_to_reach(grid)),
    ]
    for axis in (other, size):
        diversity = measured_diversity(runs, axis)
        if diversity and not is_model_axis(axis):
            sections.append((f"{axis}: configured vs measured data statistics", None, diversity))
    markdown, html_tables = [], []
    for caption, columns, rows in sections:
        columns = columns or list(rows[0])
        markdown.append(f"### {caption}\n\n{table_markdown(columns, rows)}")
        html_tables.append((caption, table_html(columns, rows)))
    result.scale_markdown = "\n".join(markdown)
    result.scale_md.write_text(result.scale_markdown)
    return html_tables
