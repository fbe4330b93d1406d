"""Diversity or scale? How much each of two swept axes moves the capability, with seed spread.

The phase diagram (``phase.py``) shows seed means on a grid; this module answers the question the
lab was built for: at a fixed token budget, does a step along the model-size axis or a step along a
data axis move the capability (and its time to emerge) more? It works for any pair of axes; when
one of them is a model knob (``model``, ``model.*``, ``model_scale``) it is put on the x axis and
read as the parameter count the trainer measured (``summary.json``'s ``n_params``), or as FLOPs per
token when the parameters do not change along it (a looped model: same weights, more compute),
never as its name.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trainer.analysis.axes import axis_values, swept_axes
from trainer.analysis.phase import format_tokens
from trainer.analysis.plots import PNG_METADATA
from trainer.analysis.runs import DEFAULT_VALUE, Run
from trainer.analysis.stats import INTERVAL, Estimate, estimate, repeats_phrase

# Summary facts that measure a model, in the order they are preferred as its size.
SIZE_MEASURES = ("n_params", "flops_per_token")


def is_model_axis(key: str | None) -> bool:
    return key is not None and (key in ("model", "model_scale") or key.startswith("model."))


def scale_axes(x: str, y: str) -> tuple[str, str]:
    """(size axis, other axis): the model axis goes first, whichever way it was asked for."""
    return (y, x) if is_model_axis(y) and not is_model_axis(x) else (x, y)


# The outcomes compared across the grid: (ScaleGrid attribute, effect-table column, what it is).
OUTCOMES = (
    ("finals", "capability", "final {metric}"),
    ("tokens", "tokens_to_jump", "tokens to the first flagged jump of {metric}"),
    ("reach", "tokens_to_level", "tokens until {metric} first >= {level:.3g}"),
)


@dataclass
class ScaleGrid:
    """Per-seed outcomes on the grid ``[other level][size level]``, completed runs only.

    ``finals`` maps a seed to its run's final capability; ``tokens`` to the tokens at the first
    jump the detector flagged; ``reach`` to the tokens at which the logged capability curve first
    reached ``level`` (a time-to-emergence that does not depend on the detector). Runs without a
    jump, or that never reach the level, are absent from those two and counted in ``n_completed``.
    ``position`` is where a cell sits on the size axis: the mean of ``measure`` over its runs.
    """

    size: str
    other: str
    size_values: list[str]
    other_values: list[str]
    measure: str
    position: np.ndarray
    finals: list[list[dict[str, float]]]
    tokens: list[list[dict[str, float]]]
    reach: list[list[dict[str, float]]]
    level: float
    n_completed: np.ndarray

    def mean(self, which: str) -> np.ndarray:
        return np.array([[statistics.fmean(c.values()) if c else np.nan for c in row]
                         for row in getattr(self, which)])

    def estimates(self, which: str) -> list[list[Estimate]]:
        """Each cell's mean with its 95% interval and n."""
        return [[estimate(c.values()) for c in row] for row in getattr(self, which)]


def tokens_to_level(run: Run, metric: str, level: float) -> float | None:
    """Tokens seen when ``metric``'s logged curve first reached ``level`` (a value logged at step s
    comes after s + 1 optimizer steps, as the trainer counts a jump's tokens)."""
    tokens_per_step = run.summary.get("tokens_per_step")
    if metric not in run.series or tokens_per_step is None:
        return None
    steps, values = run.series[metric]
    reached = np.flatnonzero(values >= level)
    return None if reached.size == 0 else float((int(steps[reached[0]]) + 1) * tokens_per_step)


def _size_levels(runs: Sequence[Run], size: str) -> tuple[str, list[str]]:
    """The summary fact that changes along the size axis, and the axis's levels in its order (a
    config named "small" may well be bigger than one named "large"); the knob itself and its
    values in their own order when no fact changes (or the axis is not a model knob)."""
    values = axis_values(runs, size)
    if is_model_axis(size):
        for fact in SIZE_MEASURES:
            by_level: dict[str, list[float]] = {}
            for run in runs:
                if run.summary.get(fact) is not None:
                    by_level.setdefault(run.knob(size), []).append(float(run.summary[fact]))
            if len(by_level) == len(values):
                means = {value: statistics.fmean(by_level[value]) for value in values}
                if len(set(means.values())) > 1:
                    return fact, sorted(values, key=lambda value: means[value])
    return size, values


def scale_grid(runs: Sequence[Run], metric: str, size: str, other: str,
               level: float | None = None) -> ScaleGrid:
    """Runs at one grid cell are told apart by their seed and by any other swept knob (averaged
    over here, as in the phase diagram); the same key in two cells is what pairs them.

    ``level``: the capability whose first crossing times emergence; default halfway between the
    worst and the best cell's mean final capability (a level some cells reach and some do not).
    """
    hidden = [axis for axis in swept_axes(runs) if axis not in (size, other)]
    measure, size_values = _size_levels(runs, size)
    other_values = axis_values(runs, other)
    shape = (len(other_values), len(size_values))
    finals: list[list[dict[str, float]]] = [[{} for _ in size_values] for _ in other_values]
    tokens: list[list[dict[str, float]]] = [[{} for _ in size_values] for _ in other_values]
    reach: list[list[dict[str, float]]] = [[{} for _ in size_values] for _ in other_values]
    keyed: list[tuple[int, int, str, Run]] = []
    positions: list[list[list[float]]] = [[[] for _ in size_values] for _ in other_values]
    n_completed = np.zeros(shape, dtype=int)
    for run in runs:
        if not run.completed:
            continue
        i, j = other_values.index(run.knob(other)), size_values.index(run.knob(size))
        seed = " ".join([run.overrides.get("seed", DEFAULT_VALUE)]
                        + [f"{axis}={run.knob(axis)}" for axis in hidden])
        n_completed[i, j] += 1
        keyed.append((i, j, seed, run))
        if not math.isnan(final := run.final(metric)):
            finals[i][j][seed] = final
        if (jump := run.tokens_to_jump(metric)) is not None:
            tokens[i][j][seed] = float(jump)
        if measure != size and run.summary.get(measure) is not None:
            positions[i][j].append(float(run.summary[measure]))
    if measure == size:
        position = np.tile(np.array(_numeric(size_values)), (len(other_values), 1))
    else:
        position = np.array([[statistics.fmean(p) if p else np.nan for p in row]
                             for row in positions])
    if level is None:
        means = [statistics.fmean(c.values()) for row in finals for c in row if c]
        level = (min(means) + max(means)) / 2 if means else math.nan
    for i, j, seed, run in keyed:
        if (reached := tokens_to_level(run, metric, level)) is not None:
            reach[i][j][seed] = reached
    return ScaleGrid(size, other, size_values, other_values, measure, position, finals, tokens,
                     reach, level, n_completed)


# --- the table: how much one step on each axis moves the outcome --------------------------------


def _paired(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """b - a for every seed both cells have: the seed is held fixed, so its luck cancels."""
    return [b[seed] - a[seed] for seed in a if seed in b]


def _step_rows(axis: str, values: list[str], k: int, at: str, deltas: dict[str, list[float]]) -> dict:
    row = _effect_row(axis, f"{values[k]} -> {values[k + 1]}", at, deltas)
    row.update({"from": values[k], "to": values[k + 1]})
    return row


EFFECT_COLUMNS = ["axis", "step", "at"] + [
    f"{prefix}{column}{suffix}" for _, column, _ in OUTCOMES
    for prefix, suffix in (("d_", ""), ("d_", "_lo"), ("d_", "_hi"), ("n_", ""),
                           ("d_", "_excludes_0"))
]


def axis_effects(grid: ScaleGrid) -> list[dict]:
    """One row per step on each axis at each level of the other and averaged over them, then one
    row per axis over all its steps: the change of each outcome (final capability, tokens to the
    first jump, tokens to the level) as the mean of the seed-paired differences, its 95%
    t-interval over seeds, whether that excludes 0, and how many seeds paired (a run without a
    jump or that never reached the level pairs with nothing).

    Averaged rows average each seed's differences first, so their interval is over seeds, not
    over the grid: comparable between the two axes.
    """
    rows = []
    for axis in (grid.size, grid.other):
        along_size = axis == grid.size
        values = grid.size_values if along_size else grid.other_values
        levels = grid.other_values if along_size else grid.size_values
        other = grid.other if along_size else grid.size
        per_seed: dict[str, dict[str, list[float]]] = {which: {} for which, _, _ in OUTCOMES}
        for k in range(len(values) - 1):
            step_per_seed: dict[str, dict[str, list[float]]] = {w: {} for w, _, _ in OUTCOMES}
            for level_index, level in enumerate(levels):
                deltas = {}
                for which, _, _ in OUTCOMES:
                    cells = getattr(grid, which)
                    a, b = (cells[level_index][index] if along_size else cells[index][level_index]
                            for index in (k, k + 1))
                    deltas[which] = _paired(a, b)
                    for seed in (seed for seed in a if seed in b):
                        per_seed[which].setdefault(seed, []).append(b[seed] - a[seed])
                        step_per_seed[which].setdefault(seed, []).append(b[seed] - a[seed])
                rows.append(_step_rows(axis, values, k, f"{other}={level}", deltas))
            if len(levels) > 1:
                rows.append(_step_rows(axis, values, k, f"mean over {other}",
                                       {which: [statistics.fmean(v) for v in seeds.values()]
                                        for which, seeds in step_per_seed.items()}))
        rows.append(_effect_row(axis, "mean of one step", "all levels",
                                {which: [statistics.fmean(v) for v in seeds.values()]
                                 for which, seeds in per_seed.items()}))
        rows.append(_effect_row(axis, "range (max - min)", "all levels",
                                {which: _ranges(getattr(grid, which), along_size)
                                 for which, _, _ in OUTCOMES}))
    return rows


def effects_json(effects: Sequence[dict], metric: str) -> list[dict]:
    """``axis_effects.json``: every step of the capability with a seed pair, as
    ``{"axis", "from", "to", "at", "metric", "mean", "ci_lo", "ci_hi", "n", "excludes_0"}``
    (``ci_lo``/``ci_hi`` null for a single pair)."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    return [
        {"axis": row["axis"], "from": row["from"], "to": row["to"], "at": row["at"],
         "metric": metric, "mean": float(row["d_capability"]),
         "ci_lo": number(row["d_capability_lo"]), "ci_hi": number(row["d_capability_hi"]),
         "n": int(row["n_capability"]), "excludes_0": row["d_capability_excludes_0"]}
        for row in effects if "from" in row and row["n_capability"] > 0
    ]


def effects_text(effects: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """The effect table for reading: one cell per outcome, ``mean [lo, hi] n=k``, and a note
    when the interval excludes 0."""
    columns = ["axis", "step", "at"] + [column for _, column, _ in OUTCOMES]
    rows = []
    for row in effects:
        text = {key: row[key] for key in ("axis", "step", "at")}
        for _, column, _ in OUTCOMES:
            fmt = (lambda v: f"{v:+.3g}") if column == "capability" else _signed_tokens
            cell = Estimate(row[f"d_{column}"], row[f"d_{column}_lo"], row[f"d_{column}_hi"],
                            row[f"n_{column}"])
            text[column] = cell.text(fmt) + (", excludes 0" if cell.excludes_zero else "")
        rows.append(text)
    return columns, rows


def _signed_tokens(value: float) -> str:
    return ("+" if value > 0 else "-" if value < 0 else "") + format_tokens(abs(value))


def _ranges(cells: list[list[dict[str, float]]], along_size: bool) -> list[float]:
    """Per seed, how far the outcome moves anywhere along the axis (its max minus its min at each
    level of the other axis, averaged over those levels): unlike the mean step, a rise followed by
    a fall does not cancel out."""
    lines = cells if along_size else [list(column) for column in zip(*cells)]
    per_seed: dict[str, list[float]] = {}
    for line in lines:
        for seed in {seed for cell in line for seed in cell}:
            values = [cell[seed] for cell in line if seed in cell]
            if len(values) > 1:
                per_seed.setdefault(seed, []).append(max(values) - min(values))
    return [statistics.fmean(v) for v in per_seed.values()]


def _effect_row(axis: str, step: str, at: str, deltas: dict[str, list[float]]) -> dict:
    row: dict = {"axis": axis, "step": step, "at": at}
    for which, column, _ in OUTCOMES:
        cell = estimate(deltas[which])
        row.update({f"d_{column}": cell.mean, f"d_{column}_lo": cell.lo,
                    f"d_{column}_hi": cell.hi, f"n_{column}": cell.n,
                    f"d_{column}_excludes_0": cell.excludes_zero})
    return row


def size_to_reach(grid: ScaleGrid) -> list[dict]:
    """At each level of the other axis, the smallest size whose seed-mean final capability reaches
    the grid's level: how much model each amount of diversity needs (blank where no size does)."""
    level, means, cells = grid.level, grid.mean("finals"), grid.estimates("finals")
    rows = []
    for i, other in enumerate(grid.other_values):
        reached = [j for j in range(len(grid.size_values)) if means[i, j] >= level]
        j = reached[0] if reached else None
        rows.append({
            grid.other: other,
            "level": level,
            f"smallest {grid.size}": None if j is None else grid.size_values[j],
            grid.measure if grid.measure != grid.size else "position":
                None if j is None else grid.position[i, j],
            "capability there": None if j is None else cells[i][j].text(),
            "best capability": float(np.nanmax(means[i])) if np.isfinite(means[i]).any()
            else None,
        })
    return rows


def measured_diversity(runs: Sequence[Run], axis: str) -> list[dict]:
    """Configured level beside the mean of every ``data/*`` statistic the runs measured, so a knob
    that promises diversity can be checked against what the data actually had."""
    names = sorted({n for run in runs for n in (run.summary.get("metrics") or {})
                    if n.startswith("data/")})
    rows = []
    for value in axis_values(runs, axis):
        at_level = [run for run in runs if run.knob(axis) == value and run.completed]
        row: dict = {f"{axis} (configured)": value, "runs": len(at_level)}
        for name in names:
            row[name] = estimate(run.final(name) for run in at_level).text() or None
        rows.append(row)
    return rows if names else []


# --- the figure --------------------------------------------------------------------------------


def _lines(ax: Axes, grid: ScaleGrid, which: str, along_size: bool, empty: str) -> bool:
    """Mean over seeds with its 95% interval as error bar (none for a single seed), one line per
    level of the axis not on x; each seed's run as a small dot so the spread is visible even with
    two seeds. For the times, a cell where some runs never jumped (or never reached the level)
    says how many did. ``empty``: what the panel says when no run has a value. Returns whether
    any run had a value to draw."""
    cells = getattr(grid, which)
    estimates = grid.estimates(which)
    n_lines = len(grid.other_values) if along_size else len(grid.size_values)
    n_points = len(grid.size_values) if along_size else len(grid.other_values)
    other_positions = range(len(grid.other_values))  # evenly spaced: levels like 1, 16, 0 (fresh)
    for line in range(n_lines):
        index = [(line, p) if along_size else (p, line) for p in range(n_points)]
        x = [grid.position[i, j] if along_size else other_positions[i] for i, j in index]
        color = f"C{line % 10}"
        label = (f"{grid.other}={grid.other_values[line]}" if along_size
                 else f"{grid.size}={grid.size_values[line]}")
        points = [estimates[i][j] for i, j in index]
        errors = [[c.mean - c.lo if c.has_interval else 0.0 for c in points],
                  [c.hi - c.mean if c.has_interval else 0.0 for c in points]]
        ax.errorbar(x, [c.mean for c in points], yerr=errors, color=color, marker="o", capsize=3,
                    label=label)
        dots = [(position, value) for (i, j), position in zip(index, x)
                for value in cells[i][j].values()]
        if dots:  # one artist per line: a plot call per run costs seconds on a big sweep
            ax.plot(*zip(*dots), ".", color=color, alpha=0.45, markersize=5)
        for (i, j), position in zip(index, x):
            n_missing = grid.n_completed[i, j] - len(cells[i][j])
            if which != "finals" and n_missing > 0 and any(map(len, sum(cells, []))):
                ax.annotate(f"{len(cells[i][j])}/{grid.n_completed[i, j]}", (position, 0),
                            xycoords=("data", "axes fraction"), xytext=(0, 4 + 9 * line),
                            textcoords="offset points", ha="center", fontsize=7, color=color)
    if along_size:
        finite = grid.position[np.isfinite(grid.position)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() >= 8:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xlim(finite.min() / 1.3, finite.max() * 1.3)
        if grid.measure != grid.size:  # each tick: the level's name and what the runs measured
            ticks = np.nanmean(grid.position, axis=0)
            ax.set_xticks(ticks, labels=[f"{value}\n{format_tokens(tick)}" for value, tick
                                         in zip(grid.size_values, ticks)], fontsize=7)
            ax.set_xlabel(f"{grid.size}: {grid.measure} measured by the runs", fontsize=9)
        else:
            ax.set_xticks(grid.position[0], labels=grid.size_values)
            ax.set_xlabel(grid.size, fontsize=9)
    else:
        ax.set_xticks(other_positions, labels=grid.other_values)
        ax.set_xlabel(grid.other, fontsize=9)
    ax.legend(fontsize=7)
    if any(map(len, sum(cells, []))):
        return True
    ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", fontsize=10,
            color="0.3", wrap=True)
    ax.set_yticks([])
    return False


def _numeric(values: Sequence[str]) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        return [float(i) for i in range(len(values))]


def plot_scale(grid: ScaleGrid, metric: str, out_png: str | Path,
               budget: int | None = None) -> None:
    """Six panels: final capability, tokens to the first flagged jump and tokens to the level,
    against the size axis (a line per level of the other axis) and against the other axis (a line
    per size). Time panels count, under each point, the runs that have the time (k/n); an empty
    one says that nothing happened within ``budget`` tokens."""
    within = f" within {format_tokens(budget)} tokens" if budget else ""
    empty = {"finals": "no run has one", "tokens": f"no jump detected{within}",
             "reach": f"no run reached {grid.level:.3g}{within}"}
    fig = Figure(figsize=(17, 9), layout="constrained")
    panels = fig.subplots(2, 3)
    for row, along_size in enumerate((True, False)):
        for column, (which, _, title) in enumerate(OUTCOMES):
            ax = panels[row, column]
            drawn = _lines(ax, grid, which, along_size, empty[which])
            ax.set_title(title.format(metric=metric, level=grid.level), fontsize=10)
            ax.set_ylabel(metric if which == "finals" else "tokens", fontsize=9)
            if which != "finals" and drawn:
                ax.yaxis.set_major_formatter(lambda value, _: format_tokens(value))
    seeds = repeats_phrase(len(c) for row in grid.finals for c in row)
    fig.suptitle(f"{grid.size} x {grid.other}: mean over {seeds}, bars {INTERVAL} (none for one "
                 f"seed), dots = runs ({int(grid.n_completed.sum())} completed runs)", fontsize=11)
    fig.savefig(out_png, dpi=90, metadata=PNG_METADATA)
