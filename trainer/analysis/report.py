"""The sweep analysis end to end: every figure and table of a sweep, and one offline HTML page."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.analysis.axes import choose_axes, choose_metric, swept_axes
from trainer.analysis.phase import plot_phase_diagram
from trainer.analysis.plots import plot_runs
from trainer.analysis.runs import AnalysisError, Run, load_sweep
from trainer.analysis.scale import (
    EFFECT_COLUMNS,
    axis_effects,
    is_model_axis,
    measured_diversity,
    plot_scale,
    scale_axes,
    scale_grid,
    size_to_reach,
)
from trainer.analysis.tables import runs_table, table_html, table_markdown, write_table_csv
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
"""


def write_report(
    path: Path,
    title: str,
    facts: Sequence[tuple[str, str]],
    images: Sequence[tuple[str, Path]],
    tables: Sequence[tuple[str, str]],
) -> None:
    """A single HTML file with the PNGs inlined as data URIs: it opens offline and can be mailed
    or attached to a paper's supplement without its folder."""

    def image(caption: str, png: Path) -> str:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (
            f"<h2>{html.escape(caption)}</h2>"
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        )

    facts_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_REPORT_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><dl>{facts_html}</dl>"
        + "".join(image(caption, png) for caption, png in images)
        + "".join(f"<h2>{html.escape(caption)}</h2>{table}" for caption, table in tables)
        + "</body></html>\n"
    )


@dataclass
class SweepAnalysis:
    """Where ``analyze_sweep`` wrote its outputs, and the table it printed."""

    phase_diagram: Path
    runs_plot: Path
    table_csv: Path
    table_md: Path
    report: Path
    markdown: str
    # The diversity-vs-scale figure and axis-effect tables: only for sweeps with two swept axes.
    scale_plot: Path | None = None
    scale_csv: Path | None = None
    scale_md: Path | None = None
    scale_markdown: str = ""
    # Earlier or sharper: the capability's transition midpoint and width per cell.
    transitions_plot: Path | None = None
    transitions_markdown: str = ""
    # "name: status (why)" for every run that did not complete, so a killed job is seen, not lost.
    not_completed: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        scale = [p for p in (self.scale_plot, self.scale_csv, self.scale_md, self.transitions_plot)
                 if p is not None]
        return [self.phase_diagram, self.runs_plot, self.table_csv, self.table_md, *scale,
                self.report]


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
        report=out_dir / "report.html",
        markdown="",
        not_completed=[f"{run.name}: {run.status} ({run.error})" for run in runs
                       if not run.completed],
    )
    plot_phase_diagram(runs, metric, x, y, result.phase_diagram)
    plot_runs(runs, metric, axes, result.runs_plot)
    columns, rows = runs_table(runs, metric, axes)
    write_table_csv(result.table_csv, columns, rows)
    result.markdown = table_markdown(columns, rows)
    result.table_md.write_text(result.markdown)
    images = [("Phase diagram", result.phase_diagram), ("Runs", result.runs_plot)]
    tables = [("Runs", table_html(columns, rows))]
    result.transitions_plot, result.transitions_markdown, transitions_html = write_transition_analysis(
        out_dir, runs, metric, axes, x, y)
    images.append((f"{metric}: earlier or sharper? (transition midpoint and width)", result.transitions_plot))
    tables.append((f"{metric}: transitions per cell (mean, sd over seeds)", transitions_html))
    if y is not None:
        size, other = scale_axes(x, y)
        tables = _write_scale(result, runs, metric, size, other, level, out_dir) + tables
        images.insert(1, (f"{size} x {other}: how much each axis moves {metric}",
                          result.scale_plot))
    n_failed = sum(not run.completed for run in runs)
    write_report(
        result.report,
        title=title or "Sweep",
        facts=[
            ("source", source),
            ("runs", f"{len(runs)} ({len(runs) - n_failed} completed, {n_failed} not)"),
            ("capability metric", metric),
            ("swept axes", ", ".join(axes) or "none"),
            ("phase diagram axes", " x ".join(a for a in (x, y) if a) or "none"),
        ],
        images=images,
        tables=tables,
    )
    return result


def _write_scale(result: SweepAnalysis, runs: Sequence[Run], metric: str, size: str, other: str,
                 level: float | None, out_dir: Path) -> list[tuple[str, str]]:
    """The diversity-vs-scale figure, its tables as CSV and Markdown; returns them as HTML."""
    grid = scale_grid(runs, metric, size, other, level)
    result.scale_plot = out_dir / "diversity_vs_scale.png"
    result.scale_csv = out_dir / "axis_effects.csv"
    result.scale_md = out_dir / "axis_effects.md"
    plot_scale(grid, metric, result.scale_plot)
    effects = axis_effects(grid)
    write_table_csv(result.scale_csv, EFFECT_COLUMNS, effects)
    sections = [
        (f"How much one step on each axis moves {metric} (seed-paired differences: mean, sd)",
         EFFECT_COLUMNS, effects),
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
