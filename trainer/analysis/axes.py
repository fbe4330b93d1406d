"""Which knobs a sweep moved, which metric is the capability, and the order runs are shown in."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

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


# Config keys that say what a run studies: runs that differ in one of them are separate
# experiments unless every run's command line set it (a sweep over it, or over its group).
EXPERIMENT_KEYS = ("tags", "model._target_", "data._target_", "data.source.kind", "data.seq_len",
                   "budget.tokens", "batch.global_size")


def _runs_phrase(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} runs)" if len(names) > limit else "")


def _by_value(runs: Sequence[Run], value) -> str:
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(str(value(run)), []).append(run.name)
    return "; ".join(f"{v} in {_runs_phrase(names)}" for v, names in groups.items())


def _launch_folder(run_dir: Path, top: Path) -> Path:
    """The sweep dir a job was launched into: the nearest folder above it holding Hydra's
    ``multirun.yaml`` (jobs may be nested below it), else the job's own parent."""
    for folder in run_dir.parents:
        if (folder / "multirun.yaml").is_file():
            return folder
        if folder == top or top not in folder.parents:
            break
    return run_dir.parent


def experiment_mismatch(runs: Sequence[Run]) -> list[str]:
    """Why these runs are not one experiment, one line per key (empty when they are).

    Two signs: a key of :data:`EXPERIMENT_KEYS` (model family, data source, budget, ...) that
    differs while not every run's command line set it or its group (``model=...`` sets
    ``model._target_``); and a swept knob that is constant within each launch folder but differs
    between them (two sweeps at different budgets analysed together; a launch folder is the
    nearest one holding Hydra's ``multirun.yaml``).
    """
    lines = []
    for key in EXPERIMENT_KEYS:
        values = {str(run.config_value(key)) for run in runs if run.config_value(key) is not None}
        set_by_all = all(any(key == o or key.startswith(f"{o}.") for o in run.overrides)
                         for run in runs)
        if len(values) > 1 and not set_by_all:
            lines.append(f"{key} differs and is not a swept axis: "
                         f"{_by_value(runs, lambda run, k=key: run.config_value(k))}")
    folders: dict[Path, list[Run]] = {}
    top = Path(os.path.commonpath([run.path for run in runs]))
    for run in runs:
        folders.setdefault(_launch_folder(run.path, top), []).append(run)
    if len(folders) > 1:
        for axis in swept_axes(runs):
            if all(len({run.knob(axis) for run in group}) == 1 for group in folders.values()):
                lines.append(f"{axis} is constant within each launch folder and differs between "
                             f"them: {_by_value(runs, lambda run, a=axis: run.knob(a))}")
    return lines
