"""Curves: one run's series in panels (``elab-plot``) and every run of a sweep side by side.

Plots use matplotlib's object-oriented ``Figure`` without pyplot, so nothing touches the global
backend or leaks open figures when this runs inside a notebook or a test session.
"""

from __future__ import annotations

import fnmatch
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from trainer.analysis.axes import sort_runs
from trainer.analysis.runs import AnalysisError, Run, load_run

# PNG metadata normally carries matplotlib's URL; dropping it keeps the report free of links and
# the images byte-stable across matplotlib versions.
PNG_METADATA = {"Software": None}


def _topology_series(run: Run, metric: str) -> str | None:
    """The topology series worth showing beside the capability: the one that led its jump, else
    one that jumped at all, else the first logged."""
    lead = run.lead_lag(metric)
    if lead:
        return lead[0]
    topology = sorted(name for name in run.series if name.startswith("topo/"))
    jumped = [name for name in topology if run.jump_steps(name)]
    return (jumped or topology or [None])[0]


def _cells(runs: Sequence[Run], axes: Sequence[str]) -> list[list[Run]]:
    """The sweep's runs grouped by their swept knobs (seeds together), in table order."""
    cells: dict[tuple, list[Run]] = {}
    for run in sort_runs(runs, axes):
        cells.setdefault(tuple(run.knob(axis) for axis in axes), []).append(run)
    return list(cells.values())


def plot_runs(runs: Sequence[Run], metric: str, axes: Sequence[str], out_png: str | Path) -> None:
    """One panel per cell of the swept axes: each seed's capability (left axis, solid jump lines)
    and one topology series (right axis, dashed jump lines) in the seed's colour, so the order of
    the two jumps reads off each panel and the seeds' spread is in view. A panel per cell rather
    than per run keeps a 200-run sweep one readable figure (and seconds, not a minute, to draw)."""
    cells = _cells(runs, axes)
    n_columns = min(4, len(cells))
    n_rows = math.ceil(len(cells) / n_columns)
    fig = Figure(figsize=(max(4.2 * n_columns, 10.0), 3.2 * n_rows), layout="constrained")
    panels = fig.subplots(n_rows, n_columns, squeeze=False, sharey=True).ravel()
    for ax, cell in zip(panels, cells):
        knobs = ", ".join(f"{axis}={cell[0].knob(axis)}" for axis in axes) or "all runs"
        seeds = [run.overrides.get("seed", "") for run in cell]
        shown = f"seeds {', '.join(seeds)}" if all(seeds) else f"{len(cell)} runs"
        ax.set_title(textwrap.fill(f"{knobs} ({shown})", 60), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        failed = [f"{run.name}: {run.status}: {run.error}" for run in cell if not run.completed]
        if failed:
            ax.text(0.5, 0.5, textwrap.fill("; ".join(failed), 50), transform=ax.transAxes,
                    ha="center", va="center", fontsize=7, color="C3")
        topology = _topology_series(cell[0], metric)
        twin = ax.twinx() if any(topology in run.series for run in cell) else None
        for index, run in enumerate(cell):
            color = f"C{index % 10}"
            if metric in run.series:
                ax.plot(*run.series[metric], color=color, linewidth=1.2,
                        label=f"seed {seeds[index]}" if seeds[index] else run.name)
            for step in run.jump_steps(metric):
                ax.axvline(step, color=color, linewidth=1.0)
            if twin is not None and topology in run.series:
                twin.plot(*run.series[topology], color=color, linewidth=0.8, alpha=0.5,
                          linestyle=":")
                for step in run.jump_steps(topology):
                    twin.axvline(step, color=color, linewidth=0.8, linestyle="--")
        if twin is not None:
            twin.tick_params(labelsize=7, colors="0.4")
            twin.set_ylabel(f"{topology} (dotted)", fontsize=7, color="0.4")
        ax.set_ylabel(metric, fontsize=7)
        ax.tick_params(labelsize=7)
        if len(cell) > 1:
            ax.legend(fontsize=6, loc="upper left")
    for ax in panels[len(cells) :]:
        ax.set_visible(False)
    fig.savefig(out_png, dpi=80, metadata=PNG_METADATA)


def default_panels(series_names: Iterable[str]) -> list[str]:
    """What ``plot_run`` shows unless told: loss, every probe, one panel per topology metric with
    all layers overlaid (layers are compared, metrics are not), and every data statistic."""
    names = sorted(series_names)
    topology_metrics = sorted({n.rsplit("/", 1)[-1] for n in names if n.startswith("topo/")})
    return (
        [n for n in names if n == "train/loss"]
        + [n for n in names if n.startswith("probe/")]
        + [f"topo/*/{m}" for m in topology_metrics]
        + [n for n in names if n.startswith("data/")]
    )


def plot_run(
    run_dir: str | Path, out_png: str | Path, series: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Plot a run's series in panels with a line at each detected jump.

    ``series`` are names or glob patterns (``topo/*/eff_rank``); each becomes one panel with all
    its matches overlaid. A jump of a series in the panel is a dashed line in its colour; jumps of
    series elsewhere are faint dotted lines, so coincidences across panels stand out.

    Returns the steps marked for each plotted series, i.e. what a reader sees as its jumps.
    """
    run = load_run(run_dir)
    if not run.series:
        raise AnalysisError(f"{run.path} has no logged series (csv/metrics.csv missing or empty)")
    names = sorted(run.series)
    patterns = list(series) if series else default_panels(names)
    panels = [(pattern, fnmatch.filter(names, pattern)) for pattern in patterns]
    missing = [pattern for pattern, matched in panels if not matched]
    if missing:
        raise AnalysisError(
            f"{run.path} has no series matching {', '.join(missing)}; available: {', '.join(names)}"
        )
    n_columns = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_columns)
    fig = Figure(figsize=(5.0 * n_columns, 3.0 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_columns, squeeze=False).ravel()
    marked: dict[str, list[int]] = {}
    for ax, (pattern, matched) in zip(axes, panels):
        for index, name in enumerate(matched):
            color = f"C{index % 10}"
            ax.plot(*run.series[name], color=color, linewidth=1.2, label=name)
            marked[name] = run.jump_steps(name)
            for step in marked[name]:
                ax.axvline(step, color=color, linewidth=1.2, linestyle="--")
        for event in run.events:
            if event.get("series") not in matched:
                ax.axvline(int(event["step"]), color="0.5", linewidth=0.8, linestyle=":", alpha=0.5)
        ax.set_title(pattern, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(matched) > 1:
            ax.legend(fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no overrides"
    fig.suptitle(textwrap.fill(f"{run.name} [{run.status}]: {overrides}", 140), fontsize=10)
    fig.savefig(out_png, dpi=100, metadata=PNG_METADATA)
    return marked
