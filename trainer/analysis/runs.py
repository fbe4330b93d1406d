"""Load what the trainer wrote: one run dir, a sweep of them, or a wandb group, as :class:`Run`.

Reads only the run-directory contract (``summary.json``, ``events.jsonl``, ``csv/metrics.csv``,
``.hydra/overrides.yaml``), so it works on completed, failed, killed and still-running runs alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.run_dir import METRICS_CSV, SUMMARY, RunDir, read_metrics_csv, read_metrics_header
from trainer.steps import global_step_of, tokens_seen

# Override keys that repeat an experiment rather than move it: runs differing only here are
# averaged, never treated as a point of the phase diagram.
SEED_KEYS = frozenset({"seed"})

# The value of a knob in a run that did not override it: the config's default applies.
DEFAULT_VALUE = "default"

# Without a swept axis every run sits at this one point of the phase diagram.
ALL_RUNS = "all runs"

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
    series: Mapping[str, Series]
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
        if not self.summary:
            return "no summary.json: the job was killed, or is still running"
        error = self.summary.get("error") or ""
        return error.strip().splitlines()[0] if error.strip() else ""

    def metric_names(self) -> set[str]:
        return set(self.summary.get("metrics") or {}) | set(self.series)

    def final(self, name: str) -> float:
        """Last value of a series: summary.json's when it has one, else the CSV's last cell."""
        value = (self.summary.get("metrics") or {}).get(name)
        if value is not None:
            return float(value)
        if name in self.series and len(values := self.series[name][1]):
            return float(values[-1])
        return math.nan

    def jump_steps(self, name: str) -> list[int]:
        """Where ``name`` jumped: each jump's onset (a log step), as lead-lag dates it; events
        older than the onset field keep their confirmation step."""
        return sorted(jump_onset(event) for event in self.events if event.get("series") == name)

    def tokens_to_jump(self, name: str) -> int | None:
        """Tokens seen at the onset of ``name``'s first jump: the time-to-emergence axis of a
        phase diagram. Tokens rather than steps, so runs with different batch or sequence sizes
        compare."""
        events = sorted((e for e in self.events if e.get("series") == name), key=jump_onset)
        if not events:
            return None
        tokens_per_step = self.summary.get("tokens_per_step")
        if tokens_per_step is None and events[0].get("tokens") is not None:
            # The trainer's own count, at the confirmation step: it gives the tokens per step.
            tokens_per_step = int(events[0]["tokens"]) // global_step_of(int(events[0]["step"]))
        return None if tokens_per_step is None else tokens_seen(jump_onset(events[0]), int(tokens_per_step))

    def lead_lag(self, name: str) -> tuple[str, int] | None:
        """The series that moved first, before or with ``name``'s first jump, and its lead in
        steps (capability onset - series onset): the one definition of
        :mod:`trainer.measures.leadlag`, onsets compared at each series' resolution. A lead below
        the resolution reads as coinciding, and can then be negative."""
        from trainer.measures.leadlag import first_lead, lead_lag

        entries = [e for e in lead_lag(e for e in self.events if "onset_step" in e) if e["series"] == name]
        lead = first_lead(entries[0]) if entries else None
        return None if lead is None else (lead["series"], lead["lead_steps"])

    def config_value(self, key: str):
        """A dotted key of the run's resolved config (summary.json's copy); None when absent."""
        node = self.summary.get("config") or {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def knob(self, key: str | None) -> str:
        if key is None:
            return ALL_RUNS
        return self.overrides.get(key, DEFAULT_VALUE)


def budget_tokens(runs: Sequence[Run]) -> int | None:
    """The token budget the runs trained for (the largest when they differ): what "no jump
    detected within N tokens" counts."""
    budgets = [run.summary.get("budget_tokens") or run.summary.get("tokens_seen") for run in runs]
    budgets = [int(b) for b in budgets if b]
    return max(budgets) if budgets else None


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


class CsvSeries(Mapping):
    """Every column of a Lightning CSVLogger file as ``name -> (steps, values)``, read on first
    use and each column parsed only when asked for: a sweep's tables need one or two series of
    the dozens a run logs, and a 200-run sweep should not parse all of them.

    Rows are sparse (a series is logged only at some steps), so each series keeps only its own
    cells. A step logged twice (a resumed run re-logs from its checkpoint) keeps the later value.
    The names are the CSV's columns: the logger writes a column only for a series it logged.
    """

    def __init__(self, csv_path: str | Path) -> None:
        self.path = Path(csv_path)
        self._header: list[str] | None = None
        self._rows: list[dict[str, str]] | None = None
        self._parsed: dict[str, Series] = {}

    def _names(self) -> list[str]:
        """The header alone: which series exist is known without reading the rows."""
        if self._header is None:
            header = read_metrics_header(self.path)
            if "step" not in header:
                raise AnalysisError(
                    f"{self.path} has no 'step' column; is it a Lightning CSVLogger file?"
                )
            self._header = header
        return self._header

    def _read_rows(self) -> list[dict[str, str]]:
        if self._rows is None:  # a torn last row (a run killed mid-append) is dropped
            self._rows = read_metrics_csv(self.path)[1]
        return self._rows

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._names() if name != "step")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name != "step" and name in self._names()

    def __getitem__(self, name: str) -> Series:
        if name not in self._parsed:
            header = self._names()
            if name == "step" or name not in header:
                raise KeyError(name)
            points: dict[int, float] = {}
            for line_number, row in enumerate(self._read_rows(), start=2):
                cell = row.get(name)
                if cell:
                    try:
                        points[int(float(row["step"]))] = float(cell)
                    except ValueError as exc:
                        raise AnalysisError(f"{self.path}, line {line_number}: {exc}") from exc
            steps = np.array(sorted(points), dtype=np.int64)
            self._parsed[name] = (steps, np.array([points[s] for s in steps], dtype=float))
        return self._parsed[name]


def load_series(csv_path: str | Path) -> dict[str, Series]:
    """Every column of a Lightning CSVLogger file as ``name -> (steps, values)``, series that
    logged nothing left out (see :class:`CsvSeries`, which reads them lazily)."""
    table = CsvSeries(csv_path)
    return {name: table[name] for name in table if len(table[name][0])}


def load_run(run_dir: str | Path, name: str | None = None) -> Run:
    """Read one run dir. A run still training or killed (no summary.json) loads from its CSV and
    ``.hydra/`` alone, with status "incomplete"."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise AnalysisError(f"{run.path} is not a directory")
    if not run.is_run():
        raise AnalysisError(
            f"{run.path} is not a run dir: it has none of {SUMMARY}, {METRICS_CSV}, .hydra/"
        )
    try:
        summary = run.read_summary() or {}
        # A run without events.jsonl (an older layout) lists its jumps in the summary.
        events = run.read_events() if run.events_path.is_file() else list(summary.get("jumps") or [])
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    overrides = (summary["overrides"] or []) if "overrides" in summary else run.read_overrides()
    metrics_csv = run.find_metrics_csv()
    return Run(
        path=run.path,
        name=name or run.path.name,
        summary=summary,
        events=events,
        series=CsvSeries(metrics_csv) if metrics_csv else {},
        overrides=parse_overrides(overrides),
    )


def natural_key(text: str) -> list:
    """Job folders sort 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    ]


def find_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every job folder under ``sweep_dir`` (itself included): one that holds a summary.json, or
    the ``.hydra/`` Hydra writes when a job starts. A job killed before the trainer wrote its
    summary has only the latter; it must be listed as incomplete, not vanish from the sweep."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AnalysisError(f"{sweep_dir} is not a directory")
    found = {p.parent for p in sweep_dir.rglob(SUMMARY)}
    found |= {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    return sorted(found, key=lambda p: natural_key(p.relative_to(sweep_dir).as_posix()))


def load_sweep(sweep_dir: str | Path) -> list[Run]:
    """All runs of a sweep (a single run dir counts as a sweep of one), named by their folder
    relative to the sweep dir."""
    sweep_dir = Path(sweep_dir)
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise AnalysisError(
            f"{sweep_dir} is not a sweep or run dir: no summary.json or .hydra/ under it"
        )
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


def jump_onset(event: dict[str, Any]) -> int:
    """A jump's date: its onset (a log step), or the confirmation step of an event without one."""
    return int(event.get("onset_step", event["step"]))
