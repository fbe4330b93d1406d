"""Which knobs a sweep moved, which metric is the capability, and the order runs are shown in."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from trainer.analysis.runs import SEED_KEYS, AnalysisError, Run, natural_key


def value_order(value: str) -> tuple:
    """Numbers in numeric order, then everything else alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def swept_axes(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values differ across runs, seeds excluded, in command-line order."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    return [
        key
        for key in keys
        if key not in SEED_KEYS
        and not key.startswith("hydra.")
        and len({run.knob(key) for run in runs}) > 1
    ]


def axis_values(runs: Sequence[Run], axis: str | None) -> list[str]:
    return sorted({run.knob(axis) for run in runs}, key=value_order)


def choose_axes(
    runs: Sequence[Run], x: str | None = None, y: str | None = None
) -> tuple[str | None, str | None]:
    """The phase diagram's axes: the ones asked for, else the first swept axes in order.

    ``y`` is None for a one-axis sweep (a line plot), ``x`` too when nothing was swept.
    """
    axes = swept_axes(runs)
    for requested in (x, y):
        if requested is not None and requested not in axes:
            raise AnalysisError(
                f"{requested} is not a swept axis of these runs; swept axes: "
                f"{', '.join(axes) or 'none'}"
            )
    if x is not None and x == y:
        raise AnalysisError(f"--x and --y are both {x}; choose two different swept axes")
    if x is None:
        x, y = y, None
    rest = [axis for axis in axes if axis not in (x, y)]
    if x is None and rest:
        x = rest.pop(0)
    if y is None and rest:
        y = rest.pop(0)
    return x, y


def available_metrics(runs: Sequence[Run]) -> list[str]:
    return sorted(set().union(*(run.metric_names() for run in runs)))


def choose_metric(runs: Sequence[Run], metric: str | None = None) -> str:
    """The capability metric: the one asked for, else the first ``probe/*/acc`` any run has."""
    available = available_metrics(runs)
    if metric is None:
        accuracies = fnmatch.filter(available, "probe/*/acc")
        if accuracies:
            return accuracies[0]
        raise AnalysisError(
            "no run has a probe/*/acc metric; choose one with --metric from: "
            f"{', '.join(available) or 'none (no run logged anything)'}"
        )
    if metric not in available:
        raise AnalysisError(
            f"no run has the metric {metric!r}; available: {', '.join(available) or 'none'}"
        )
    return metric


def sort_runs(runs: Sequence[Run], axes: Sequence[str]) -> list[Run]:
    """By knob values, then seed, then folder: neighbours in the table are neighbours in the grid."""
    return sorted(
        runs,
        key=lambda run: (
            [value_order(run.knob(axis)) for axis in axes],
            value_order(run.overrides.get("seed", "")),
            natural_key(run.name),
        ),
    )
