"""Lead-lag: which series changed before a capability jumped, by how much, at what resolution.

The one definition used by the run summary (``JumpWatch``), the sweep analysis and ``elab-retro``.
It works on jump events as written to ``events.jsonl`` / ``summary["jumps"]`` (dicts, or
:class:`~trainer.measures.jumps.JumpEvent` objects), so a run's files are enough.

**Onset.** A series' change is dated by its event's ``onset_step``, the first evaluation at the
new level (the detector's estimate, see :mod:`trainer.measures.jumps`), never by the step the
jump was confirmed at: confirmation waits for a few evaluations, and its delay depends on the
series' schedule, not on the model. The series was last seen at the old level ``resolution``
steps earlier, so the change happened in the window (``onset_step - resolution``, ``onset_step``].

**Lead.** ``lead_steps`` = capability onset - series onset (> 0: the series moved first). Because
both onsets are windows, a series is classed by comparing windows, not points:

- ``before``: its window ends where or before the capability's begins: it certainly moved first;
- ``same``:   the windows overlap: at these evaluation spacings the two coincide;
- ``after``:  its window begins where or after the capability's ends: it certainly moved later.

A lead is therefore only claimed when the schedules could resolve it: two series evaluated every
50 steps whose onsets are 25 steps apart read as ``same``.

Pure functions over plain data: no Lightning, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _as_dict(event: Any) -> dict[str, Any]:
    return dict(event) if isinstance(event, Mapping) else event.to_dict()


def onset_window(event: Mapping[str, Any] | Any) -> tuple[int, int]:
    """(lo, hi): the change happened after step ``lo`` and at or before step ``hi``.

    Events written before the detector recorded ``resolution`` read as resolution 0 (a point).
    """
    event = _as_dict(event)
    onset = int(event["onset_step"])
    return onset - int(event.get("resolution") or 0), onset


def _side(series_window: tuple[int, int], capability_window: tuple[int, int]) -> str:
    """Compare two windows (lo, hi]; a window of width 0 is the single step hi."""
    (s_lo, s_hi), (c_lo, c_hi) = series_window, capability_window
    if (s_hi <= c_lo) if c_lo < c_hi else (s_hi < c_hi):
        return "before"
    if (s_lo >= c_hi) if s_lo < s_hi else (s_hi > c_hi):
        return "after"
    return "same"


def lead_lag(
    events: Iterable[Mapping[str, Any] | Any],
    capability_prefix: str = "probe/",
    series_prefixes: tuple[str, ...] | None = None,
    max_lag: int | None = None,
) -> list[dict[str, Any]]:
    """For each capability jump, every other series' jump before, at and after it.

    ``events``: jump events (dicts with ``series``, ``step``, ``onset_step``, ``size``, ``score``
    and, when known, ``resolution``). Capability jumps are those whose series starts with
    ``capability_prefix``; the others compared with them are every non-capability series, or only
    those starting with one of ``series_prefixes``. ``max_lag`` drops series whose onset lies
    farther than that from the capability's.

    Returns one entry per capability jump, in onset order: ``series``, ``onset_step``, ``step``
    (confirmation), ``resolution``, ``size``, and lists ``before`` / ``same`` / ``after`` (see the
    module docstring) of ``{"series", "onset_step", "lead_steps", "resolution", "size", "score"}``,
    nearest first. The lead is known to within the sum of the two resolutions.
    """
    dicts = [_as_dict(e) for e in events]
    capabilities = sorted(
        (e for e in dicts if e["series"].startswith(capability_prefix)),
        key=lambda e: (int(e["onset_step"]), e["series"]),
    )
    others = [
        e for e in dicts
        if not e["series"].startswith(capability_prefix)
        and (series_prefixes is None or e["series"].startswith(tuple(series_prefixes)))
    ]
    report = []
    for capability in capabilities:
        onset = int(capability["onset_step"])
        window = onset_window(capability)
        entry: dict[str, Any] = {
            "series": capability["series"],
            "onset_step": onset,
            "step": int(capability["step"]),
            "resolution": window[1] - window[0],
            "size": float(capability["size"]),
            "before": [],
            "same": [],
            "after": [],
        }
        nearest_first = sorted(others, key=lambda e: (abs(onset - int(e["onset_step"])), e["series"]))
        for event in nearest_first:
            lead = onset - int(event["onset_step"])
            if max_lag is not None and abs(lead) > max_lag:
                continue
            series_window = onset_window(event)
            entry[_side(series_window, window)].append({
                "series": event["series"],
                "onset_step": int(event["onset_step"]),
                "lead_steps": lead,
                "resolution": series_window[1] - series_window[0],
                "size": float(event["size"]),
                "score": float(event["score"]),
            })
        report.append(entry)
    return report


def first_lead(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The series of a :func:`lead_lag` entry that moved first (largest lead) among those that
    led or coincided; None when none did."""
    candidates = [*entry["before"], *entry["same"]]
    return max(candidates, key=lambda c: (c["lead_steps"], -c["resolution"])) if candidates else None


def lead_lag_over_runs(
    runs: Iterable[list[Mapping[str, Any]]], capability: str | None = None
) -> list[dict[str, Any]]:
    """Lead-lag over seeds or sweep points: per (capability, series) pair, how often the series
    led, coincided or lagged, and the median and spread of its lead in steps.

    ``runs``: one :func:`lead_lag` result per run (e.g. each run's ``summary["lead_lag"]``). Only
    each run's first jump of a capability series counts (later ones answer another question);
    ``capability`` restricts to one capability series. A pair is listed when the series jumped in
    at least one run that had the capability jump; ``runs`` counts those runs, and
    ``runs_with_capability_jump`` all runs in which the capability jumped.
    """
    firsts: dict[str, list[Mapping[str, Any]]] = {}
    for report in runs:
        seen: set[str] = set()
        for entry in sorted(report, key=lambda e: e["onset_step"]):
            name = entry["series"]
            if name in seen or (capability is not None and name != capability):
                continue
            seen.add(name)
            firsts.setdefault(name, []).append(entry)
    out = []
    for name, entries in sorted(firsts.items()):
        pairs: dict[str, dict[str, list]] = {}
        for entry in entries:
            seen_series: set[str] = set()
            for side in ("before", "same", "after"):
                for item in sorted(entry[side], key=lambda i: -i["lead_steps"]):
                    if item["series"] in seen_series:
                        continue
                    seen_series.add(item["series"])
                    pair = pairs.setdefault(item["series"], {"side": [], "lead": [], "res": []})
                    pair["side"].append(side)
                    pair["lead"].append(item["lead_steps"])
                    pair["res"].append(item["resolution"])
        for series, pair in sorted(pairs.items()):
            lead = np.asarray(pair["lead"], dtype=float)
            out.append({
                "capability": name,
                "series": series,
                "runs": len(lead),
                "runs_with_capability_jump": len(entries),
                "led": pair["side"].count("before"),
                "same": pair["side"].count("same"),
                "lagged": pair["side"].count("after"),
                "lead_steps_median": float(np.median(lead)),
                "lead_steps_q25": float(np.quantile(lead, 0.25)),
                "lead_steps_q75": float(np.quantile(lead, 0.75)),
                "lead_steps_min": float(lead.min()),
                "lead_steps_max": float(lead.max()),
                "resolution_median": float(np.median(pair["res"])),
            })
    return out
