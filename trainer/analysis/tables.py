"""The table of runs: one row per run, written as CSV, Markdown and HTML."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.analysis.axes import available_metrics, sort_runs
from trainer.analysis.runs import SEED_KEYS, Run


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
