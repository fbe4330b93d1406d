"""The table of runs: one row per run, written as CSV, Markdown and HTML."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.axes import available_metrics, sort_runs
from trainer.analysis.phase import format_tokens
from trainer.analysis.runs import SEED_KEYS, Run
from trainer.analysis.stats import INTERVAL, estimate


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


def cells_table(runs: Sequence[Run], metric: str, axes: Sequence[str], columns: Sequence[str],
                rows: Sequence[dict]) -> tuple[list[str], list[dict], list[dict]]:
    """One row per cell of the swept axes (seeds pooled), from the table of runs ``columns`` /
    ``rows``: completed runs, and for the capability, its log-probability, the training loss and
    tokens-to-jump the mean, 95% interval and n over the cell's completed runs.

    Returns the columns to read, the rows as text (``0.53 [0.41, 0.65] n=3``) and as numbers
    (``<outcome>``, ``<outcome> lo``, ``<outcome> hi``, ``<outcome> n``, in column order) for
    the CSV.
    """
    outcomes = [c for c in columns if c == metric or c.endswith("/logprob") or c == "train/loss"]
    outcomes.append("tokens_to_jump")
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[axis] for axis in axes), []).append(row)
    text_rows, number_rows = [], []
    for key, members in cells.items():
        completed = [row for row in members if row["status"] == "completed"]
        text = dict(zip(axes, key))
        text["runs"] = f"{len(completed)}/{len(members)}"
        numbers = dict(text)
        for outcome in outcomes:
            cell = estimate(row[outcome] for row in completed if not _is_blank(row[outcome]))
            numbers.update({outcome: cell.mean, f"{outcome} lo": cell.lo,
                            f"{outcome} hi": cell.hi, f"{outcome} n": cell.n})
            text[outcome] = cell.text(format_tokens if outcome == "tokens_to_jump"
                                      else (lambda v: f"{v:.3g}"))
        text_rows.append(text)
        number_rows.append(numbers)
    return [*axes, "runs", *outcomes], text_rows, number_rows


# What every column of the tables means: printed once, under the tables, in the report.
GLOSSARY = {
    "run": "the job folder, relative to the sweep dir",
    "status": "completed; failed; incomplete (no summary.json: killed, or still running)",
    "seed": "the run's seed (runs differing only in it are repeats of one cell)",
    "runs": "completed runs in the cell / all its runs; only completed runs enter the statistics",
    "final": "the series' last value (summary.json's, else the last logged)",
    "tokens_to_jump": "tokens seen when the jump detector flagged the capability's first jump; "
                      "blank: no jump flagged (a cell's n counts only the runs that jumped)",
    "n_jumps": "events the jump detector flagged in the run, every series",
    "lead_series": "the series whose move led the capability's first jump",
    "lead_steps": "how many steps it led by (capability onset - its onset)",
    "data/*": "final data statistics measured by the data meter",
    "error": "the first line of a failed run's error",
    "mean [lo, hi] n=k": f"the mean over k runs with its {INTERVAL} (Student's t); "
                         "n=1: no interval, shown as such",
    "step, at": "axis effects: one step along the axis (from -> to), at a level of the other "
                "axis or averaged over its levels",
    "capability, tokens_to_jump, tokens_to_level": "axis effects: mean of the seed-paired "
                                                   "differences (to - from), 95% interval, n pairs; "
                                                   "'excludes 0' where the interval does",
}


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_cell(value) -> str:
    if _is_blank(value):
        return ""
    if isinstance(value, float | np.floating):
        # Token counts and parameter counts read as whole numbers, not 1.088e+05.
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
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
            html.escape(row.get("status", "")),
            "".join(f"<td>{html.escape(format_cell(row[c]))}</td>" for c in columns),
        )
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
