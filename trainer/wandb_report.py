"""The end of a wandb run, completed from the run dir: the summary fields a researcher filters on
(as summary.json has them), the jump events as a table and the run's figure.

Called once, after fit and before the run is closed (``trainer.train``), whatever the run's
status: a failed or interrupted run is filterable by its status too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.report import capability_finals, read_run, rises

log = logging.getLogger("emergence_lab")

# summary.json fields copied as they are; "tokens" is summary.json's tokens_seen.
FIELDS = ("status", "error", "n_params", "flops_per_token", "tokens_per_s", "steps", "total_steps",
          "budget_tokens", "wall_time_s", "lead_lag", "jumps", "chance", "run_id")
EVENT_COLUMNS = ("series", "onset_step", "step", "resolution", "size", "score", "tokens")


def summary_fields(run: dict[str, Any]) -> dict[str, Any]:
    """What goes into the wandb summary, from :func:`trainer.report.read_run`'s ``run``."""
    summary = run["summary"] or {}
    fields = {k: summary[k] for k in FIELDS if summary.get(k) is not None}
    fields["tokens"] = summary.get("tokens_seen")
    fields["n_jumps"] = len(run["events"])
    fields["n_capability_jumps"] = sum(str(e.get("series", "")).startswith("probe/")
                                       for e in run["events"])
    # Flat keys a filter can use: the first onset of each series that jumped.
    for event in sorted(run["events"], key=lambda e: e.get("onset_step", 0)):
        fields.setdefault(f"first_onset/{event['series']}", event.get("onset_step"))
    fitted = rises(run["transitions"])
    if fitted:
        fields["transitions"] = fitted
    for name, value in capability_finals(summary).items():
        fields[f"final/{name}"] = value
    return fields


def finish_run(run_dir: Path, failed: bool) -> None:
    """Complete the open wandb run from the run dir and close it, whatever happened, so the next
    job of a multirun starts clean."""
    import wandb

    if wandb.run is not None:
        complete_run(wandb.run, run_dir)
        wandb.finish(exit_code=1 if failed else 0)


def complete_run(wandb_run: Any, run_dir: Path) -> None:
    """Write the summary fields, the ``events`` table and the ``figure`` image into ``wandb_run``.
    Anything that fails here is logged, never raised: the run's own files are already written."""
    import wandb

    run = read_run(run_dir)
    if run["summary"] is None:
        return
    try:
        wandb_run.summary.update(summary_fields(run))
        table = wandb.Table(columns=list(EVENT_COLUMNS),
                            data=[[e.get(c) for c in EVENT_COLUMNS] for e in run["events"]])
        images = {"events": table}
        png = _figure(Path(run_dir))
        if png is not None:
            images["figure"] = wandb.Image(str(png))
        wandb_run.log(images)
    except Exception as exc:  # a wandb hiccup must not turn a finished run into a failed one
        log.warning("wandb: could not complete the run (%s: %s)", type(exc).__name__, exc)


def _figure(run_dir: Path) -> Path | None:
    """The run's default figure (``elab-plot``'s), drawn into the run dir as ``plot.png``."""
    from trainer.analysis import AnalysisError, plot_run

    out = run_dir / "plot.png"
    try:
        plot_run(run_dir, out)
    except AnalysisError:  # nothing logged yet (a run that failed at its first step)
        return None
    return out
