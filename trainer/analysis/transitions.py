"""Earlier or sharper? A sweep's capability transitions per cell, over the swept axes.

Each run's main transition of the capability is its rise (or fall) of largest height among those
its ``summary.json`` records (``transitions``, from :mod:`trainer.measures.transitions`); a run
written before transitions were measured is fitted here from its CSV. Per cell of the swept axes
(seeds pooled, completed runs only) the table gives how many runs rose, and the midpoint (tokens
seen) and 10-90% width (tokens) of the main transition: mean and spread (sd) over seeds. The
figure draws both over the sweep's x axis, one line per value of the y axis: a diversity that
makes a capability appear *earlier* moves the midpoint down, one that makes it *sharper* moves
the width down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from trainer.analysis.axes import axis_values, sort_runs
from trainer.analysis.phase import axis_positions
from trainer.analysis.plots import PNG_METADATA
from trainer.analysis.runs import ALL_RUNS, Run
from trainer.analysis.tables import table_html, table_markdown, write_table_csv

COLUMNS = ["n", "n_rise", "midpoint_tokens", "midpoint_sd", "width_tokens", "width_sd", "height",
           "breakthroughness"]


def main_transition(run: Run, metric: str) -> dict | None:
    """The run's rise or fall of ``metric`` with the largest height, with its midpoint in tokens
    seen; None when the fit found no rise (or the run never logged ``metric``)."""
    tokens_per_step = run.summary.get("tokens_per_step")
    rises = (run.summary.get("transitions") or {}).get(metric)
    if rises is None and metric in run.series:
        from trainer.measures.transitions import fit_transition

        rises = fit_transition(*run.series[metric], tokens_per_step)["rises"]
    if not rises:
        return None
    rise = dict(max(rises, key=lambda r: abs(r["height"])))
    if rise.get("midpoint_tokens") is None and tokens_per_step:
        rise["midpoint_tokens"] = (rise["midpoint_step"] + 1) * tokens_per_step
    return rise


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def main_transitions(runs: Sequence[Run], metric: str) -> dict[str, dict | None]:
    """:func:`main_transition` of every completed run, by run name (fitted once per run)."""
    return {run.name: main_transition(run, metric) for run in runs if run.completed}


def transition_rows(runs: Sequence[Run], mains: dict[str, dict | None], axes: Sequence[str]) -> tuple[list[str], list[dict]]:
    """One row per cell of ``axes`` (``mains``: :func:`main_transitions`): the columns of
    :data:`COLUMNS` after the axes' values."""
    cells: dict[tuple[str, ...], list[dict | None]] = {}
    for run in sort_runs([r for r in runs if r.name in mains], axes):
        cells.setdefault(tuple(run.knob(a) for a in axes), []).append(mains[run.name])
    rows = []
    for key, found in cells.items():
        rises = [r for r in found if r is not None]
        midpoint, midpoint_sd = _mean_sd([r.get("midpoint_tokens") for r in rises])
        width, width_sd = _mean_sd([r.get("width_tokens") for r in rises])
        rows.append({**dict(zip(axes, key)), "n": len(found), "n_rise": len(rises),
                     "midpoint_tokens": midpoint, "midpoint_sd": midpoint_sd,
                     "width_tokens": width, "width_sd": width_sd,
                     "height": _mean_sd([r["height"] for r in rises])[0],
                     "breakthroughness": _mean_sd([r.get("breakthroughness") for r in rises])[0]})
    return [*axes, *COLUMNS], rows


def plot_transitions(runs: Sequence[Run], mains: dict[str, dict | None], metric: str, x: str | None,
                     y: str | None, out_png: str | Path) -> None:
    """Midpoint and width of the main transition over ``x``, a line per ``y`` value: seeds as
    dots, their mean as the line with +-sd bars."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    panels = fig.subplots(1, 2)
    x_values = axis_values(runs, x)
    positions, log_x = axis_positions(x_values)
    where = dict(zip(x_values, positions))
    for index, y_value in enumerate(axis_values(runs, y)):
        label = ALL_RUNS if y is None else f"{y}={y_value}"
        chosen = [r for r in runs if r.name in mains and r.knob(y) == y_value]
        for ax, field in zip(panels, ("midpoint_tokens", "width_tokens")):
            xs, means, sds = [], [], []
            for x_value in x_values:
                values = [mains[r.name][field] for r in chosen if r.knob(x) == x_value
                          and mains[r.name] and mains[r.name].get(field) is not None]
                ax.plot([where[x_value]] * len(values), values, ".", color=f"C{index}", alpha=0.4)
                if values:
                    mean, sd = _mean_sd(values)
                    xs.append(where[x_value])
                    means.append(mean)
                    sds.append(sd or 0.0)
            if xs:
                ax.errorbar(xs, means, yerr=sds, color=f"C{index}", marker="o", capsize=3, label=label)
    for ax, title in zip(panels, ("midpoint (tokens seen): earlier?", "10-90% width (tokens): sharper?")):
        ax.set_title(f"{metric}: {title}", fontsize=9)
        ax.set_xlabel(x or ALL_RUNS, fontsize=8)
        ax.tick_params(labelsize=7)
        if log_x:
            ax.set_xscale("log")
        if not all(isinstance(p, float) for p in positions):
            ax.set_xticks(positions, x_values)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no rise in any run", transform=ax.transAxes, ha="center", fontsize=8)
    fig.savefig(out_png, dpi=80, metadata=PNG_METADATA)


def write_transition_analysis(out_dir: Path, runs: Sequence[Run], metric: str, axes: Sequence[str],
                              x: str | None, y: str | None) -> tuple[Path, str, str]:
    """``transitions.png``, ``transitions.csv`` and ``transitions.md`` in ``out_dir``; returns the
    figure's path, the table as Markdown and as HTML."""
    mains = main_transitions(runs, metric)
    columns, rows = transition_rows(runs, mains, axes)
    write_table_csv(out_dir / "transitions.csv", columns, rows)
    markdown = table_markdown(columns, rows)
    (out_dir / "transitions.md").write_text(markdown)
    plot_transitions(runs, mains, metric, x, y, out_dir / "transitions.png")
    return out_dir / "transitions.png", markdown, table_html(columns, rows)
