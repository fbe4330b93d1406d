"""Curves: one run's series in panels (``elab-plot``) and every run of a sweep side by side.

Plots use matplotlib's object-oriented ``Figure`` without pyplot, so nothing touches the global
backend or leaks open figures when this runs inside a notebook or a test session.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trainer.analysis.axes import sort_runs
from trainer.analysis.panels import all_panels, compact_panels, pattern_panels, y_label
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
    """One panel per cell of the swept axes: each seed's capability curve with solid lines at its
    flagged jumps, and dashed lines at the jumps of the topology series that led it (named in the
    title), all in the seed's colour: the order of the two jumps reads off each panel and the
    seeds' spread is in view. A panel per cell rather than per run keeps a 200-run sweep one
    readable figure, drawn in seconds."""
    cells = _cells(runs, axes)
    n_columns = min(4, len(cells))
    n_rows = math.ceil(len(cells) / n_columns)
    width, height = max(4.2 * n_columns, 10.0), 3.0 * n_rows + 1.0
    fig = Figure(figsize=(width, height))
    # Fixed margins rather than a layout engine: measuring every tick label of many axes to place
    # them took most of the time on big sweeps.
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.2 / width, bottom=0.6 / height,
                        top=1 - 1.0 / height, wspace=0.15, hspace=0.5)
    panels = fig.subplots(n_rows, n_columns, squeeze=False, sharex=True, sharey=True).ravel()
    seed_colors: dict[str, str] = {}
    for ax, cell in zip(panels, cells):
        knobs = ", ".join(f"{axis}={cell[0].knob(axis)}" for axis in axes) or "all runs"
        topology = _topology_series(cell[0], metric)
        lines = f"; dashed: {topology}" if topology else ""
        ax.set_title(textwrap.fill(f"{knobs} (n={len(cell)}){lines}", 64), fontsize=7)
        failed = [f"{run.name}: {run.status}: {run.error}" for run in cell if not run.completed]
        if failed:
            ax.text(0.5, 0.5, textwrap.fill("; ".join(failed), 50), transform=ax.transAxes,
                    ha="center", va="center", fontsize=7, color="C3")
        jumps: list[tuple[int, str, str]] = []
        for run in cell:
            seed = run.overrides.get("seed", run.name if len(cell) > 1 else "")
            color = seed_colors.setdefault(seed, f"C{len(seed_colors) % 10}")
            if metric in run.series:
                ax.plot(*run.series[metric], color=color, linewidth=1.2)
            jumps += [(step, color, "solid") for step in run.jump_steps(metric)]
            if topology:
                jumps += [(step, color, "dashed") for step in run.jump_steps(topology)]
        if jumps:  # one collection: an axvline per jump costs seconds on a 200-run sweep
            steps, colors, styles = zip(*jumps)
            ax.vlines(steps, 0, 1, transform=ax.get_xaxis_transform(), colors=list(colors),
                      linestyles=list(styles), linewidth=1.0)
        ax.tick_params(labelsize=7)
    for ax in panels[:: n_columns]:
        ax.set_ylabel(metric, fontsize=7)
    for ax in panels[len(cells) - n_columns: len(cells)]:  # the lowest panel of each column
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelbottom=True)
    for ax in panels[len(cells) :]:
        ax.set_visible(False)
    named = {seed: color for seed, color in seed_colors.items() if seed}
    if named:  # one legend for the figure: a seed has one colour in every panel
        handles = [Line2D([], [], color=color, label=f"seed {seed}" if seed.isdigit() else seed)
                   for seed, color in list(named.items())[:10]]
        fig.legend(handles=handles, loc="upper right", ncol=min(len(handles), 10), fontsize=7,
                   title="colour = seed; solid lines: capability jumps, dashed: the leading "
                         "series' jumps", title_fontsize=7)
    fig.savefig(out_png, dpi=100, metadata=PNG_METADATA)


def plot_run(
    run_dir: str | Path, out_png: str | Path, series: Sequence[str] | None = None,
    all_series: bool = False,
) -> dict[str, list[int]]:
    """Plot a run's series in panels, each jump's onset window shaded.

    By default the compact figure of :func:`trainer.analysis.panels.compact_panels`; ``series``
    (names or glob patterns such as ``topo/*/eff_rank``, one panel each, matches overlaid) or
    ``all_series`` (every series) instead. A jump of a series in the panel is shaded in its colour
    from its onset to its confirmation, a capability jump's window in grey in every other panel,
    so coincidences across panels stand out; chance levels (summary.json ``chance``) are lines.

    Returns the steps marked for each plotted series, i.e. what a reader sees as its jumps.
    """
    run = load_run(run_dir)
    if not run.series:
        raise AnalysisError(f"{run.path} has no logged series (csv/metrics.csv missing or empty)")
    names = sorted(run.series)
    if series or all_series:
        panels = pattern_panels(names, list(series) if series else all_panels(names))
    else:
        panels = compact_panels(run)
    missing = [pattern for pattern, matched in panels if not matched]
    if missing:
        raise AnalysisError(
            f"{run.path} has no series matching {', '.join(missing)}; available: {', '.join(names)}"
        )
    n_columns = min(2 if len(panels) <= 4 else 3, len(panels))
    n_rows = math.ceil(len(panels) / n_columns)
    fig = Figure(figsize=(4.6 * n_columns, 2.8 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_columns, squeeze=False).ravel()
    marked: dict[str, list[int]] = {}
    capability_windows = [(int(e["onset_step"]), int(e["step"])) for e in run.events
                          if str(e.get("series", "")).startswith("probe/") and "onset_step" in e]
    chance = run.summary.get("chance") or {}
    for ax, (title, matched) in zip(axes, panels):
        for start, stop in capability_windows:
            ax.axvspan(start, stop, color="0.5", alpha=0.12, linewidth=0)
        for index, name in enumerate(matched):
            color = f"C{index % 10}"
            ax.plot(*run.series[name], color=color, linewidth=1.2, label=name)
            marked[name] = run.jump_steps(name)
            for event in run.events:
                if event.get("series") == name and "onset_step" in event:
                    ax.axvspan(int(event["onset_step"]), int(event["step"]), color=color,
                               alpha=0.25, linewidth=0)
                    ax.axvline(int(event["onset_step"]), color=color, linewidth=1.0, linestyle="--")
            _chance_lines(ax, chance.get(name))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(y_label(title), fontsize=8)
        ax.tick_params(labelsize=7)
        if len(matched) > 1 or chance.get(matched[0]) is not None:
            ax.legend(fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "no overrides"
    shading = "shaded: each jump from onset to confirmation (grey: a capability's)"
    fig.suptitle(textwrap.fill(f"{run.name} [{run.status}]: {overrides}; {shading}", 120),
                 fontsize=9)
    fig.savefig(out_png, dpi=100, metadata=PNG_METADATA)
    return marked


def _chance_lines(ax, level) -> None:
    """summary.json's chance of one series: a number, or ``{"value", "plateau"}``."""
    if isinstance(level, (int, float)):
        level = {"value": level}
    if not isinstance(level, dict):
        return
    if "value" in level:
        ax.axhline(level["value"], color="0.3", linewidth=0.9, linestyle=":", label="chance")
    if "plateau" in level:
        ax.axhline(level["plateau"], color="0.6", linewidth=0.9, linestyle="-.",
                   label="copy plateau")
