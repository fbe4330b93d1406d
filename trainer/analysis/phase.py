"""The phase diagram: seed-averaged capability and tokens-to-jump over one or two swept axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trainer.analysis.axes import axis_values, swept_axes
from trainer.analysis.plots import PNG_METADATA
from trainer.analysis.runs import Run, budget_tokens
from trainer.analysis.stats import INTERVAL, Estimate, estimate, repeats_phrase


@dataclass
class PhaseGrid:
    """Seed-averaged capability and tokens-to-jump on the grid of two swept axes.

    Arrays are indexed ``[y, x]``. Only completed runs count: a failed run's last values describe
    where it crashed, not where the knobs lead. Tokens-to-jump averages the runs that jumped;
    ``n_jumped`` against ``n_completed`` says how many did. ``metric_est`` and ``tokens_est`` hold
    each cell's mean with its 95% interval and n.
    """

    x: str | None
    y: str | None
    x_values: list[str]
    y_values: list[str]
    metric: np.ndarray
    tokens_to_jump: np.ndarray
    n_runs: np.ndarray
    n_completed: np.ndarray
    n_jumped: np.ndarray
    metric_est: list[list[Estimate]]
    tokens_est: list[list[Estimate]]


def phase_grid(runs: Sequence[Run], metric: str, x: str | None, y: str | None) -> PhaseGrid:
    x_values, y_values = axis_values(runs, x), axis_values(runs, y)
    shape = (len(y_values), len(x_values))
    finals: list[list[list[float]]] = [[[] for _ in x_values] for _ in y_values]
    tokens: list[list[list[int]]] = [[[] for _ in x_values] for _ in y_values]
    n_runs = np.zeros(shape, dtype=int)
    n_completed = np.zeros(shape, dtype=int)
    for run in runs:
        i, j = y_values.index(run.knob(y)), x_values.index(run.knob(x))
        n_runs[i, j] += 1
        if not run.completed:
            continue
        n_completed[i, j] += 1
        if not math.isnan(final := run.final(metric)):
            finals[i][j].append(final)
        if (jump := run.tokens_to_jump(metric)) is not None:
            tokens[i][j].append(jump)

    metric_est = [[estimate(c) for c in row] for row in finals]
    tokens_est = [[estimate(c) for c in row] for row in tokens]

    def mean(cells: list[list[Estimate]]) -> np.ndarray:
        return np.array([[e.mean for e in row] for row in cells], dtype=float)

    return PhaseGrid(
        x=x,
        y=y,
        x_values=x_values,
        y_values=y_values,
        metric=mean(metric_est),
        tokens_to_jump=mean(tokens_est),
        n_runs=n_runs,
        n_completed=n_completed,
        n_jumped=np.array([[len(c) for c in row] for row in tokens], dtype=int),
        metric_est=metric_est,
        tokens_est=tokens_est,
    )


def format_tokens(tokens: float) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(tokens) >= scale:
            return f"{tokens / scale:.3g}{suffix}"
    return f"{tokens:.0f}"


def _cell_labels(grid: PhaseGrid, tokens: bool) -> np.ndarray:
    """What each cell says: its mean, 95% interval and n, why it has none, and for jumps how many
    runs jumped."""
    estimates = grid.tokens_est if tokens else grid.metric_est
    fmt = format_tokens if tokens else (lambda v: f"{v:.3g}")
    labels = np.empty(grid.metric.shape, dtype=object)
    for (i, j), _ in np.ndenumerate(labels):
        cell = estimates[i][j]
        if grid.n_completed[i, j] == 0:
            labels[i, j] = "none completed" if grid.n_runs[i, j] else ""
        elif cell.n == 0:
            labels[i, j] = "no jump" if tokens else "n/a"
        else:
            labels[i, j] = cell.text(fmt, sep="\n")
            if tokens and grid.n_jumped[i, j] < grid.n_completed[i, j]:
                labels[i, j] += f" of {grid.n_completed[i, j]} runs"
    return labels


def no_jump_note(ax: Axes, runs: Sequence[Run]) -> None:
    """An empty tokens-to-jump panel says why it is empty, and within how many tokens."""
    budget = budget_tokens(runs)
    within = f" within {format_tokens(budget)} tokens" if budget else ""
    ax.text(0.5, 0.5, f"no jump detected{within}", transform=ax.transAxes, ha="center",
            va="center", fontsize=11, color="0.3",
            bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})


def _heatmap(ax: Axes, grid: PhaseGrid, values: np.ndarray, labels: np.ndarray, cmap: str) -> None:
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.92")
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        origin="lower",
        aspect="auto",
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
    )
    ax.set_xticks(range(len(grid.x_values)), labels=grid.x_values)
    ax.set_yticks(range(len(grid.y_values)), labels=grid.y_values)
    ax.set_xlabel(grid.x)
    ax.set_ylabel(grid.y)
    for (i, j), value in np.ndenumerate(values):
        red, green, blue, _ = (
            image.cmap(image.norm(value)) if math.isfinite(value) else (1.0, 1.0, 1.0, 1.0)
        )
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        ax.text(
            j,
            i,
            labels[i, j],
            ha="center",
            va="center",
            fontsize=8,
            color="white" if dark else "black",
        )
    ax.figure.colorbar(image, ax=ax)


def axis_positions(values: Sequence[str]) -> tuple[list[float], bool]:
    """Numeric knobs on a numeric axis (log when they span two decades), others as categories."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return list(range(len(values))), False
    positive = all(n > 0 for n in numbers)
    return numbers, positive and max(numbers) / min(numbers) >= 100


def _phase_lines(fig: Figure, runs: Sequence[Run], metric: str, grid: PhaseGrid,
                 unit: str) -> None:
    """The one-axis phase diagram: every completed run as a dot, the mean as a line with its 95%
    interval as error bars (none where a point has a single run)."""
    positions, log_scale = axis_positions(grid.x_values)
    at = dict(zip(grid.x_values, positions))
    completed = [run for run in runs if run.completed]
    panels = (
        (metric, [(at[r.knob(grid.x)], r.final(metric)) for r in completed], grid.metric_est[0],
         lambda v: f"{v:.3g}"),
        (f"tokens to first jump of {metric}",
         [(at[r.knob(grid.x)], jump) for r in completed
          if (jump := r.tokens_to_jump(metric)) is not None],
         grid.tokens_est[0], format_tokens),
    )
    for ax, (title, points, cells, fmt) in zip(fig.subplots(1, 2), panels):
        if points:
            ax.scatter(*zip(*points), color="0.6", s=14, label="runs")
        if any(c.n for c in cells):
            errors = [[c.mean - c.lo if c.has_interval else 0.0 for c in cells],
                      [c.hi - c.mean if c.has_interval else 0.0 for c in cells]]
            ax.errorbar(positions, [c.mean for c in cells], yerr=errors, marker="o", color="C0",
                        capsize=3, label=f"mean over {repeats_phrase((c.n for c in cells), unit)}"
                                         f", {INTERVAL}")
            ax.legend(fontsize=8)
        for position, cell in zip(positions, cells):
            if cell.n:
                ax.annotate(cell.text(fmt), (position, cell.mean), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7)
        if not points and title.startswith("tokens"):
            no_jump_note(ax, runs)
        if log_scale:
            ax.set_xscale("log")
        ax.set_xticks(positions, labels=grid.x_values)
        ax.set_xlabel(grid.x or "(no swept axis)")
        ax.set_ylabel(title if title == metric else "tokens")
        ax.set_title(title, fontsize=10)


def plot_phase_diagram(
    runs: Sequence[Run], metric: str, x: str | None, y: str | None, out_png: str | Path
) -> PhaseGrid:
    """Heatmaps of the final capability and of tokens-to-jump over two swept axes (a line plot
    over one), averaged over seeds and over any swept axis that is not shown; every cell with its
    95% interval and n."""
    grid = phase_grid(runs, metric, x, y)
    hidden = [axis for axis in swept_axes(runs) if axis not in (x, y)]
    # n counts runs; they are seeds only when no other swept axis is averaged into a cell.
    unit = "runs" if hidden else "seeds"
    averaged = ", ".join([repeats_phrase(grid.n_completed.ravel(), unit), *hidden])
    fig = Figure(figsize=(12, 5), layout="constrained")
    if y is None:
        _phase_lines(fig, runs, metric, grid, unit)
    else:
        metric_ax, tokens_ax = fig.subplots(1, 2)
        _heatmap(metric_ax, grid, grid.metric, _cell_labels(grid, False), "viridis")
        metric_ax.set_title(f"final {metric}", fontsize=10)
        _heatmap(tokens_ax, grid, grid.tokens_to_jump, _cell_labels(grid, True), "viridis_r")
        tokens_ax.set_title(f"tokens to first jump of {metric}", fontsize=10)
        if not grid.n_jumped.any():
            no_jump_note(tokens_ax, runs)
    n_failed = sum(not run.completed for run in runs)
    failed = f" ({n_failed} not completed, left out)" if n_failed else ""
    fig.suptitle(f"{len(runs)} runs{failed}; each cell: mean over {averaged} "
                 f"[{INTERVAL}] n")
    fig.savefig(out_png, dpi=100, metadata=PNG_METADATA)
    return grid
