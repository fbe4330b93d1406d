"""Turn run dirs and sweeps into plots, tables and a one-page offline report.

Everything here reads only the run-directory contract the trainer writes (``summary.json``,
``events.jsonl``, ``csv/metrics.csv``, ``.hydra/overrides.yaml``), so it works on completed, failed
and still-running runs alike. It never imports torch or lightning: analysing a sweep should start
in well under a second, on a machine that has none of the training stack.

Plots use matplotlib's object-oriented ``Figure`` without pyplot, so nothing touches the global
backend or leaks open figures when this runs inside a notebook or a test session.
"""

from __future__ import annotations

import argparse
import base64
import csv
import fnmatch
import html
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Override keys that repeat an experiment rather than move it: runs differing only here are
# averaged, never treated as a point of the phase diagram.
SEED_KEYS = frozenset({"seed"})

# The value of a knob in a run that did not override it: the config's default applies.
DEFAULT_VALUE = "default"

# Without a swept axis every run sits at this one point of the phase diagram.
ALL_RUNS = "all runs"

# PNG metadata normally carries matplotlib's URL; dropping it keeps the report free of links and
# the images byte-stable across matplotlib versions.
_PNG_METADATA = {"Software": None}

Series = tuple[np.ndarray, np.ndarray]


class AnalysisError(ValueError):
    """Bad input to the analysis; the message names the path or lists what is available."""


@dataclass
class Run:
    """One run dir as the analysis sees it: what the trainer wrote, nothing recomputed."""

    path: Path
    name: str
    summary: dict
    events: list[dict]
    series: dict[str, Series]
    overrides: dict[str, str]

    @property
    def status(self) -> str:
        """summary.json's status ("completed", "failed"); "incomplete" until the trainer writes it."""
        return self.summary.get("status", "incomplete")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def error(self) -> str:
        """The first line of the failure message: enough to tell an OOM from a config error."""
        error = self.summary.get("error") or ""
        return error.strip().splitlines()[0] if error.strip() else ""

    def metric_names(self) -> set[str]:
        return set(self.summary.get("metrics") or {}) | set(self.series)

    def final(self, name: str) -> float:
        """Last value of a series: summary.json's when it has one, else the CSV's last cell."""
        value = (self.summary.get("metrics") or {}).get(name)
        if value is not None:
            return float(value)
        if name in self.series:
            return float(self.series[name][1][-1])
        return math.nan

    def jump_steps(self, name: str) -> list[int]:
        return sorted(int(event["step"]) for event in self.events if event.get("series") == name)

    def tokens_to_jump(self, name: str) -> int | None:
        """Tokens seen when ``name`` first jumped: the time-to-emergence axis of a phase diagram.

        Tokens rather than steps, so runs with different batch or sequence sizes compare.
        """
        events = sorted((e for e in self.events if e.get("series") == name), key=lambda e: e["step"])
        if not events:
            return None
        if events[0].get("tokens") is not None:  # the trainer's own count
            return int(events[0]["tokens"])
        tokens_per_step = self.summary.get("tokens_per_step")
        return None if tokens_per_step is None else int(events[0]["step"]) * int(tokens_per_step)

    def lead_lag(self, name: str) -> tuple[str, int] | None:
        """The topology series that jumped first, at or before ``name``'s first jump, and its lead
        in steps: the question is whether representations move before the capability does."""
        capability_steps = self.jump_steps(name)
        if not capability_steps:
            return None
        first_topology_jump: dict[str, int] = {}
        for event in self.events:
            series = event.get("series", "")
            if series.startswith("topo/"):
                step = int(event["step"])
                first_topology_jump[series] = min(step, first_topology_jump.get(series, step))
        leading = [
            (step, series)
            for series, step in first_topology_jump.items()
            if step <= capability_steps[0]
        ]
        if not leading:
            return None
        step, series = min(leading)
        return series, capability_steps[0] - step

    def knob(self, key: str | None) -> str:
        if key is None:
            return ALL_RUNS
        return self.overrides.get(key, DEFAULT_VALUE)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["data.n_classes=512", "+x=1"]`` -> ``{"data.n_classes": "512", "x": "1"}``.

    Hydra's ``+``/``++``/``~`` prefixes say how a key was set, not which knob it is, so they are
    dropped; values stay strings so that ``0.10`` and ``0.1`` are shown as the user typed them.
    """
    parsed = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def load_series(csv_path: str | Path) -> dict[str, Series]:
    """Every column of a Lightning CSVLogger file as ``name -> (steps, values)``.

    Rows are sparse (a series is logged only at some steps), so each series keeps only its own
    cells. A step logged twice (a resumed run re-logs from its checkpoint) keeps the later value.
    """
    csv_path = Path(csv_path)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise AnalysisError(
                f"{csv_path} has no 'step' column; is it a Lightning CSVLogger file?"
            )
        by_step: dict[str, dict[int, float]] = {n: {} for n in reader.fieldnames if n != "step"}
        for line_number, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
                for name, cell in row.items():
                    if name in by_step and cell not in ("", None):
                        by_step[name][step] = float(cell)
            except (TypeError, ValueError) as exc:
                raise AnalysisError(f"{csv_path}, line {line_number}: {exc}") from exc
    series = {}
    for name, points in by_step.items():
        if points:
            steps = np.array(sorted(points), dtype=np.int64)
            series[name] = (steps, np.array([points[s] for s in steps], dtype=float))
    return series


def _metrics_csv(run_dir: Path) -> Path | None:
    """``csv/metrics.csv``; a plain CSVLogger nests it as ``csv/.../version_N/``, latest wins."""
    direct = run_dir / "csv" / "metrics.csv"
    if direct.is_file():
        return direct
    nested = sorted((run_dir / "csv").glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    return nested[-1] if nested else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"{path} is not valid JSON: {exc}") from exc


def _read_events(run_dir: Path, summary: dict) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return list(summary.get("jumps") or [])
    events = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AnalysisError(f"{path}, line {line_number}: {exc}") from exc
    return events


def load_run(run_dir: str | Path, name: str | None = None) -> Run:
    """Read one run dir. A run still training (no summary.json yet) loads from its CSV alone."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnalysisError(f"{run_dir} is not a directory")
    summary_path = run_dir / "summary.json"
    metrics_csv = _metrics_csv(run_dir)
    if not summary_path.is_file() and metrics_csv is None:
        raise AnalysisError(
            f"{run_dir} is not a run dir: it has neither summary.json nor csv/metrics.csv"
        )
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    overrides_yaml = run_dir / ".hydra" / "overrides.yaml"
    if "overrides" in summary:
        overrides = summary["overrides"] or []
    elif overrides_yaml.is_file():
        overrides = yaml.safe_load(overrides_yaml.read_text()) or []
    else:
        overrides = []
    return Run(
        path=run_dir,
        name=name or run_dir.name,
        summary=summary,
        events=_read_events(run_dir, summary),
        series=load_series(metrics_csv) if metrics_csv else {},
        overrides=parse_overrides(overrides),
    )


def _natural_key(text: str) -> list:
    """Job folders sort 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    ]


def find_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every folder under ``sweep_dir`` (itself included) that holds a summary.json."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AnalysisError(f"{sweep_dir} is not a directory")
    found = [p.parent for p in sweep_dir.rglob("summary.json")]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def load_sweep(sweep_dir: str | Path) -> list[Run]:
    """All runs of a sweep (a single run dir counts as a sweep of one), named by their folder
    relative to the sweep dir."""
    sweep_dir = Path(sweep_dir)
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise AnalysisError(f"{sweep_dir} is not a sweep or run dir: no summary.json under it")
    runs = []
    for run_dir in run_dirs:
        relative = run_dir.relative_to(sweep_dir).as_posix()
        runs.append(load_run(run_dir, name=run_dir.name if relative == "." else relative))
    return runs


def load_wandb_group(group: str, project: str = "emergence-lab", entity: str | None = None,
                     api=None) -> list[Run]:
    """The runs of one wandb group (a sweep logged with ``logger=wandb``), read through wandb's
    public API, as the analysis sees a sweep directory: overrides and tokens per step from the
    run config the trainer uploads, final values from the run summary, every series from the
    history, jump events from the ``jump/<series>`` markers."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    found = list(api.runs(path, filters={"group": group}))
    if not found:
        raise AnalysisError(f"wandb group {group!r} of project {path!r} has no runs")
    runs = []
    for remote in found:
        config = dict(remote.config)
        tokens_per_step = config.get("tokens_per_step")
        points: dict[str, dict[int, float]] = {}
        events = []
        for row in remote.scan_history():
            step = row.get("trainer/global_step", row.get("_step"))
            for key, value in row.items():
                if key.startswith(("_", "trainer/")) or not isinstance(value, (int, float)):
                    continue
                if key.startswith("jump/"):
                    events.append({"series": key[len("jump/"):], "step": int(step), "size": value,
                                   "tokens": None if tokens_per_step is None
                                   else (int(step) + 1) * int(tokens_per_step)})
                else:
                    points.setdefault(key, {})[int(step)] = float(value)
        series = {k: (np.array(sorted(v), dtype=np.int64), np.array([v[s] for s in sorted(v)]))
                  for k, v in points.items()}
        state = {"finished": "completed", "running": "incomplete"}.get(remote.state, "failed")
        metrics = {k: float(v) for k, v in dict(remote.summary).items()
                   if not k.startswith(("_", "trainer/", "jump/")) and isinstance(v, (int, float))}
        summary = {"status": state, "metrics": metrics, "tokens_per_step": tokens_per_step}
        runs.append(Run(path=Path(remote.name), name=remote.name, summary=summary, events=events,
                        series=series, overrides=parse_overrides(config.get("overrides") or [])))
    return runs


def _value_order(value: str) -> tuple:
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
    return sorted({run.knob(axis) for run in runs}, key=_value_order)


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
            [_value_order(run.knob(axis)) for axis in axes],
            _value_order(run.overrides.get("seed", "")),
            _natural_key(run.name),
        ),
    )


# --- the table of runs -------------------------------------------------------------------------


def runs_table(
    runs: Sequence[Run], metric: str, axes: Sequence[str]
) -> tuple[list[str], list[dict]]:
    """One row per run: its knobs, final metrics, when the capability jumped and what led it.

    The capability is shown with its log-probability when the run logs one, because a jump in
    exact-match accuracy alone may be an artefact of the metric.
    """
    names = available_metrics(runs)
    logprob = metric.removesuffix("/acc") + "/logprob"
    final_columns = list(
        dict.fromkeys(
            [metric]
            + ([logprob] if metric.endswith("/acc") and logprob in names else [])
            + (["train/loss"] if "train/loss" in names else [])
        )
    )
    data_columns = [name for name in names if name.startswith("data/")]
    seed_columns = [key for key in SEED_KEYS if any(key in run.overrides for run in runs)]
    columns = ["run", "status", *axes, *seed_columns, *final_columns] + [
        "tokens_to_jump",
        "n_jumps",
        "lead_series",
        "lead_steps",
        *data_columns,
        "error",
    ]
    rows = []
    for run in sort_runs(runs, axes):
        lead = run.lead_lag(metric)
        row = {"run": run.name, "status": run.status}
        row.update({axis: run.knob(axis) for axis in axes})
        row.update({key: run.overrides.get(key, "") for key in seed_columns})
        row.update({name: run.final(name) for name in final_columns})
        row["tokens_to_jump"] = run.tokens_to_jump(metric)
        row["n_jumps"] = len(run.events)
        row["lead_series"], row["lead_steps"] = lead if lead else (None, None)
        row.update({name: run.final(name) for name in data_columns})
        row["error"] = run.error
        rows.append(row)
    return columns, rows


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_cell(value) -> str:
    if _is_blank(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_table_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Full precision, blanks for missing values, so a spreadsheet or pandas reads it as-is."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if _is_blank(row[c]) else row[c] for c in columns])


def table_markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(format_cell(row[c])) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_html(columns: Sequence[str], rows: Sequence[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr class='{}'>{}</tr>".format(
            html.escape(row["status"]),
            "".join(f"<td>{html.escape(format_cell(row[c]))}</td>" for c in columns),
        )
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- the phase diagram -------------------------------------------------------------------------


@dataclass
class PhaseGrid:
    """Seed-averaged capability and tokens-to-jump on the grid of two swept axes.

    Arrays are indexed ``[y, x]``. Only completed runs count: a failed run's last values describe
    where it crashed, not where the knobs lead. Tokens-to-jump averages the runs that jumped;
    ``n_jumped`` against ``n_completed`` says how many did.
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

    def mean(cells: list[list[list[float]]]) -> np.ndarray:
        return np.array([[np.mean(c) if c else np.nan for c in row] for row in cells], dtype=float)

    return PhaseGrid(
        x=x,
        y=y,
        x_values=x_values,
        y_values=y_values,
        metric=mean(finals),
        tokens_to_jump=mean(tokens),
        n_runs=n_runs,
        n_completed=n_completed,
        n_jumped=np.array([[len(c) for c in row] for row in tokens], dtype=int),
    )


def format_tokens(tokens: float) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(tokens) >= scale:
            return f"{tokens / scale:.3g}{suffix}"
    return f"{tokens:.0f}"


def _cell_labels(grid: PhaseGrid, values: np.ndarray, tokens: bool) -> np.ndarray:
    """What each cell says: its value, why it has none, and for jumps how many seeds jumped."""
    labels = np.empty(values.shape, dtype=object)
    for (i, j), value in np.ndenumerate(values):
        if grid.n_completed[i, j] == 0:
            labels[i, j] = "none completed" if grid.n_runs[i, j] else ""
        elif math.isnan(value):
            labels[i, j] = "no jump" if tokens else "n/a"
        elif tokens:
            labels[i, j] = format_tokens(value)
            if grid.n_jumped[i, j] < grid.n_completed[i, j]:
                labels[i, j] += f"\n({grid.n_jumped[i, j]}/{grid.n_completed[i, j]} runs)"
        else:
            labels[i, j] = f"{value:.3g}"
    return labels


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


def _positions(values: Sequence[str]) -> tuple[list[float], bool]:
    """Numeric knobs on a numeric axis (log when they span two decades), others as categories."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return list(range(len(values))), False
    positive = all(n > 0 for n in numbers)
    return numbers, positive and max(numbers) / min(numbers) >= 100


def _phase_lines(fig: Figure, runs: Sequence[Run], metric: str, grid: PhaseGrid) -> None:
    """The one-axis phase diagram: every completed run as a dot, the seed mean as a line."""
    positions, log_scale = _positions(grid.x_values)
    at = dict(zip(grid.x_values, positions))
    completed = [run for run in runs if run.completed]
    panels = (
        (
            metric,
            [(at[r.knob(grid.x)], r.final(metric)) for r in completed],
            grid.metric[0],
            lambda v: f"{v:.3g}",
        ),
        (
            f"tokens to first jump of {metric}",
            [
                (at[r.knob(grid.x)], r.tokens_to_jump(metric))
                for r in completed
                if r.tokens_to_jump(metric) is not None
            ],
            grid.tokens_to_jump[0],
            format_tokens,
        ),
    )
    for ax, (title, points, means, fmt) in zip(fig.subplots(1, 2), panels):
        if points:
            ax.scatter(*zip(*points), color="0.6", s=14, label="runs")
        ax.plot(positions, means, marker="o", color="C0", label="mean over seeds")
        for position, value in zip(positions, means):
            if math.isfinite(value):
                ax.annotate(
                    fmt(value),
                    (position, value),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
        if log_scale:
            ax.set_xscale("log")
        ax.set_xticks(positions, labels=grid.x_values)
        ax.set_xlabel(grid.x or "(no swept axis)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)


def plot_phase_diagram(
    runs: Sequence[Run], metric: str, x: str | None, y: str | None, out_png: str | Path
) -> PhaseGrid:
    """Heatmaps of the final capability and of tokens-to-jump over two swept axes (a line plot
    over one), averaged over seeds and over any swept axis that is not shown."""
    grid = phase_grid(runs, metric, x, y)
    hidden = [axis for axis in swept_axes(runs) if axis not in (x, y)]
    averaged = ", ".join(["seeds", *hidden])
    fig = Figure(figsize=(12, 5), layout="constrained")
    if y is None:
        _phase_lines(fig, runs, metric, grid)
    else:
        metric_ax, tokens_ax = fig.subplots(1, 2)
        _heatmap(metric_ax, grid, grid.metric, _cell_labels(grid, grid.metric, False), "viridis")
        metric_ax.set_title(f"final {metric}", fontsize=10)
        _heatmap(
            tokens_ax,
            grid,
            grid.tokens_to_jump,
            _cell_labels(grid, grid.tokens_to_jump, True),
            "viridis_r",
        )
        tokens_ax.set_title(f"tokens to first jump of {metric}", fontsize=10)
    n_failed = sum(not run.completed for run in runs)
    failed = f" ({n_failed} not completed, left out)" if n_failed else ""
    fig.suptitle(f"{len(runs)} runs{failed}, mean over {averaged}")
    fig.savefig(out_png, dpi=100, metadata=_PNG_METADATA)
    return grid


# --- curves ------------------------------------------------------------------------------------


def _topology_series(run: Run, metric: str) -> str | None:
    """The topology series worth showing beside the capability: the one that led its jump, else
    one that jumped at all, else the first logged."""
    lead = run.lead_lag(metric)
    if lead:
        return lead[0]
    topology = sorted(name for name in run.series if name.startswith("topo/"))
    jumped = [name for name in topology if run.jump_steps(name)]
    return (jumped or topology or [None])[0]


def plot_runs(runs: Sequence[Run], metric: str, axes: Sequence[str], out_png: str | Path) -> None:
    """One panel per run: the capability (left axis, solid jump lines) and one topology series
    (right axis, dashed jump lines), so the order of the two jumps reads off each panel."""
    ordered = sort_runs(runs, axes)
    n_columns = min(4, len(ordered))
    n_rows = math.ceil(len(ordered) / n_columns)
    fig = Figure(figsize=(4.2 * n_columns, 3.0 * n_rows), layout="constrained")
    panels = fig.subplots(n_rows, n_columns, squeeze=False, sharey=True).ravel()
    for ax, run in zip(panels, ordered):
        knobs = ", ".join(f"{axis}={run.knob(axis)}" for axis in axes)
        seed = run.overrides.get("seed")
        title = f"{run.name}: {knobs}" + (f" seed={seed}" if seed else "")
        ax.set_title(textwrap.fill(title, 50), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        if not run.completed:
            ax.text(
                0.5,
                0.5,
                textwrap.fill(f"{run.status}: {run.error}", 40),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="C3",
            )
        if metric in run.series:
            ax.plot(*run.series[metric], color="C0", label=metric)
        for step in run.jump_steps(metric):
            ax.axvline(step, color="C0", linewidth=1.2)
        topology = _topology_series(run, metric)
        if topology in run.series:
            twin = ax.twinx()
            twin.plot(*run.series[topology], color="C1", linewidth=1.0, label=topology)
            for step in run.jump_steps(topology):
                twin.axvline(step, color="C1", linewidth=1.0, linestyle="--")
            twin.tick_params(labelsize=7, colors="C1")
            twin.set_ylabel(topology, fontsize=7, color="C1")
        ax.set_ylabel(metric, fontsize=7, color="C0")
        ax.tick_params(labelsize=7)
    for ax in panels[len(ordered) :]:
        ax.set_visible(False)
    fig.savefig(out_png, dpi=80, metadata=_PNG_METADATA)


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
    fig.savefig(out_png, dpi=100, metadata=_PNG_METADATA)
    return marked


# --- the report and the sweep entry point ------------------------------------------------------


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
    table: str,
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
        + f"<h2>Runs</h2>{table}</body></html>\n"
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

    def paths(self) -> list[Path]:
        return [self.phase_diagram, self.runs_plot, self.table_csv, self.table_md, self.report]


def analyze_sweep(
    sweep_dir: str | Path | None,
    out_dir: str | Path | None = None,
    metric: str | None = None,
    x: str | None = None,
    y: str | None = None,
    runs: Sequence[Run] | None = None,
    title: str | None = None,
) -> SweepAnalysis:
    """Phase diagram, per-run curves, table of runs and the HTML report of one sweep dir (or of
    ``runs`` loaded elsewhere, e.g. :func:`load_wandb_group`, written to ``out_dir``).

    Writes into ``out_dir`` (default ``<sweep_dir>/analysis``) and validates every input before
    drawing anything, so a typo in ``metric`` or an axis costs no time.
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
    )
    plot_phase_diagram(runs, metric, x, y, result.phase_diagram)
    plot_runs(runs, metric, axes, result.runs_plot)
    columns, rows = runs_table(runs, metric, axes)
    write_table_csv(result.table_csv, columns, rows)
    result.markdown = table_markdown(columns, rows)
    result.table_md.write_text(result.markdown)
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
        images=[("Phase diagram", result.phase_diagram), ("Runs", result.runs_plot)],
        table=table_html(columns, rows),
    )
    return result


def analyze_sweep_main(argv: Sequence[str] | None = None) -> int:
    """``elab-analyze SWEEP_DIR``: the sweep's phase diagram, curves, table and report."""
    parser = argparse.ArgumentParser(
        prog="analyze_sweep",
        description="Phase diagram, per-run curves, table and offline HTML report of a sweep.",
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?",
                        help="a Hydra multirun dir (or a single run dir)")
    parser.add_argument("-o", "--out-dir", type=Path, help="default: SWEEP_DIR/analysis")
    parser.add_argument("--metric", help="capability metric; default: the first probe/*/acc")
    parser.add_argument("--x", help="swept override key on the x axis, e.g. data.n_classes")
    parser.add_argument("--y", help="swept override key on the y axis, e.g. data.p_bursty")
    parser.add_argument("--wandb-group", help="read this wandb group instead of a sweep dir")
    parser.add_argument("--wandb-project", default="emergence-lab")
    parser.add_argument("--wandb-entity", help="default: your wandb default entity")
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.wandb_group is None):
        parser.error("give either SWEEP_DIR or --wandb-group")
    try:
        if args.wandb_group:
            runs = load_wandb_group(args.wandb_group, args.wandb_project, args.wandb_entity)
            result = analyze_sweep(None, args.out_dir or Path(args.wandb_group), args.metric,
                                   args.x, args.y, runs=runs, title=f"wandb group {args.wandb_group}")
        else:
            result = analyze_sweep(args.sweep_dir, args.out_dir, args.metric, args.x, args.y)
    except AnalysisError as exc:
        parser.error(str(exc))
    for path in result.paths():
        print(path)
    print()
    print(result.markdown, end="")
    return 0


def plot_run_main(argv: Sequence[str] | None = None) -> int:
    """``elab-plot RUN_DIR``: one run's series in panels, jumps marked."""
    parser = argparse.ArgumentParser(
        prog="plot_run", description="Plot a run's logged series with its detected jumps marked."
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="PNG to write; default: RUN_DIR/run.png")
    parser.add_argument(
        "--series",
        nargs="+",
        metavar="NAME",
        help="series names or glob patterns, one panel each (default: loss, probes, topology, data)",
    )
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "run.png"
    try:
        marked = plot_run(args.run_dir, out, args.series)
    except AnalysisError as exc:
        parser.error(str(exc))
    print(out)
    for name, steps in marked.items():
        if steps:
            print(f"  jumps of {name} at steps {', '.join(map(str, steps))}")
    return 0
