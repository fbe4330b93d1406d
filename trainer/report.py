"""A run at a glance: the report ``elab-train`` ends with, ``report.md`` holds and ``elab-show``
prints -- status and size, every capability's final value beside its chance level, each
capability jump with its onset window and what led it, the fitted transitions, and what to run
next.

:func:`run_report` is a pure function of what a run dir holds (:func:`read_run` reads it), so a
finished, failed or running run reads the same. No torch, no Lightning: ``elab-show`` must be fast.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from trainer.run_dir import RunDir

CAPABILITY = "probe/"
# Where the README explains jumps of representation series that come with no capability jump.
TOPOLOGY_POINTER = 'README "Topology jumps without a capability jump"'


def read_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report reads from a run dir: ``summary`` (None while the run trains or when
    it never started), ``events``, ``transitions`` (None without transitions.json) and
    ``overrides``. Missing or unreadable files read as absent: a report never fails on them."""
    run = RunDir(run_dir)
    return {"run_dir": str(run.path), "summary": _tolerant(run.read_summary),
            "events": _tolerant(run.read_events) or [],
            "transitions": _tolerant(run.read_transitions),
            "overrides": run.read_overrides()}


def _tolerant(read) -> Any:
    """What ``read`` returns, None when the file is torn or not what it should be."""
    try:
        value = read()
    except (OSError, ValueError):
        return None
    return value if isinstance(value, (dict, list)) else None


def capability_finals(summary: dict[str, Any]) -> dict[str, float]:
    """The final value of every capability series (``probe/*/acc`` and ``probe/*/logprob``)."""
    metrics = summary.get("metrics") or {}
    return {k: v for k, v in sorted(metrics.items())
            if k.startswith(CAPABILITY) and k.endswith(("/acc", "/logprob"))}


def rises(transitions: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """transitions.json read tolerantly: ``{series: [rise, ...]}`` whether the file keys series at
    its top level or under ``series``, and whether each holds a list or ``{"rises": [...]}``."""
    if not isinstance(transitions, dict):
        return {}
    body = transitions.get("series") if isinstance(transitions.get("series"), dict) else transitions
    out = {}
    for series, value in body.items():
        if isinstance(value, dict):
            value = value.get("rises") or value.get("transitions")
        if isinstance(value, list):
            found = [r for r in value if isinstance(r, dict) and "midpoint_step" in r]
            if found:
                out[str(series)] = found
    return out


def describe_rise(rise: dict[str, Any]) -> str:
    """``midpoint 600 (95% 580-620), width 40 steps, height +0.70``."""
    text = f"midpoint {_num(rise.get('midpoint_step'))}"
    interval = next((v for k, v in rise.items() if ("95" in k or "interval" in k or k == "ci")
                     and isinstance(v, (list, tuple)) and len(v) == 2), None)
    if interval is not None:
        text += f" (95% {_num(interval[0])}-{_num(interval[1])})"
    if rise.get("width_steps") is not None:
        text += f", width {_num(rise['width_steps'])} steps"
    if isinstance(rise.get("height"), (int, float)):
        text += f", height {rise['height']:+.3f}"
    return text


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"
    return "?" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


def _status_line(run: dict[str, Any], holder: str | None) -> str:
    summary = run["summary"]
    if holder:  # training now; a summary.json is then from before a resume
        return (f"status: running (held by {holder}): what is there so far"
                + ("" if summary is None else f"; summary.json is from step {summary.get('steps')}"))
    if summary is None:
        return "status: no summary.json (the run never started, or was killed before writing it)"
    tokens_per_s = summary.get("tokens_per_s")
    line = (f"status: {summary.get('status', '?')}; {summary.get('steps', '?')} of "
            f"{summary.get('total_steps', '?')} steps, {summary.get('tokens_seen', 0):,} tokens, "
            f"{_duration(summary.get('wall_time_s'))}, "
            f"{f'{tokens_per_s:,.0f}' if tokens_per_s else 'n/a'} tokens/s")
    if summary.get("n_params"):
        line += f"; {summary['n_params']:,} parameters"
    if summary.get("flops_per_token"):
        line += f", {summary['flops_per_token']:,} FLOPs/token"
    return line


def _chance_text(series: str, chance: dict[str, Any]) -> str:
    level = chance.get(series)
    if isinstance(level, dict):  # {"value": ..., "plateau": ...}
        text = f"chance {level['value']:.3f}" if "value" in level else ""
        if "plateau" in level:
            text += f"; copy plateau {level['plateau']:.3f}"
        return text
    return f"chance {level:.3f}" if isinstance(level, (int, float)) else "chance unknown"


def _lead_text(entry: dict[str, Any]) -> list[str]:
    lines = []
    for key, word in (("before", "led by"), ("same", "at the same time (within resolution)")):
        others = entry.get(key) or []
        if others:
            named = ", ".join(f"{o['series']} (onset {o['onset_step']}, lead {o.get('lead_steps', '?')})"
                              for o in others[:4])
            more = f" and {len(others) - 4} more" if len(others) > 4 else ""
            lines.append(_wrap(f"{word}: {named}{more}", "    "))
    if not lines:
        lines.append("    no other series jumped before or with it")
    return lines


def run_report(run: dict[str, Any], holder: str | None = None) -> str:
    """The report of one run (``run`` as :func:`read_run` returns it; ``holder`` names the process
    that holds the run dir's lock when it is training)."""
    summary = run.get("summary") or {}
    events = run.get("events") or []
    run_dir = run.get("run_dir", ".")
    lines = [f"run report: {run_dir}", _wrap(_status_line(run, holder), "")]
    if summary.get("status") == "failed" and summary.get("error"):
        lines.append(_wrap(f"error: {' '.join(str(summary['error']).split())[:400]}", ""))
    finals = capability_finals(summary)
    chance = summary.get("chance") or {}
    if finals:
        lines.append("capabilities (final value, chance level):")
        width = max(map(len, finals))
        lines += [f"  {k:<{width}}  {v:8.3f}   {_chance_text(k, chance)}" for k, v in finals.items()]
    capability = [e for e in events if str(e.get("series", "")).startswith(CAPABILITY)]
    lead_lag = {(e["series"], e["onset_step"]): e for e in summary.get("lead_lag") or []
                if "series" in e and "onset_step" in e}
    if capability:
        lines.append("capability jumps:")
        for e in sorted(capability, key=lambda e: e.get("onset_step", 0)):
            resolution = e.get("resolution") or 0
            lines.append(f"  {e['series']}: onset {e['onset_step']} (the change lies in steps "
                         f"{e['onset_step'] - resolution}-{e['onset_step']}), confirmed at step "
                         f"{e['step']}, size {e['size']:+.3f}")
            entry = lead_lag.get((e["series"], e["onset_step"]))
            if entry is not None:
                lines += _lead_text(entry)
    elif summary or events:
        lines.append("capability jumps: none detected")
    fitted = rises(run.get("transitions"))
    if fitted:
        lines.append("transitions (fitted rises, transitions.json):")
    for series, found in fitted.items():
        lines.append(f"  {series}: " + "; ".join(describe_rise(r) for r in found))
    topology = [e for e in events if not str(e.get("series", "")).startswith(CAPABILITY)]
    if topology:
        kinds = sorted({_pattern(e["series"]) for e in topology})
        lines.append(_wrap(f"other series: {len(topology)} jumps in "
                           f"{len({e['series'] for e in topology})} series ({', '.join(kinds)}; "
                           f"events.jsonl), alone not findings: {TOPOLOGY_POINTER}", ""))
    lines.append("next:")
    lines += [f"  elab-plot {run_dir}      # the capability curves, onset windows shaded",
              f"  elab-retro {run_dir}     # which series moved first, from the checkpoint trail",
              f"  elab-sample {run_dir}{_probe_arg(finals)}   # what the model answers"]
    return "\n".join(lines)


def _wrap(text: str, indent: str) -> str:
    """A report line folded at 100 columns, its continuation indented two more spaces."""
    return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False, break_long_words=False)


def _pattern(series: str) -> str:
    """``topo/attn1/head0/prefix_match`` -> ``topo/*/prefix_match``: the kind of series."""
    parts = series.split("/")
    return f"{parts[0]}/*/{parts[-1]}" if len(parts) > 2 else series


def _probe_arg(finals: dict[str, float]) -> str:
    names = [k.split("/")[1] for k in finals if k.count("/") == 2]
    return f" --probe {names[0]}" if names else ""


def write_report(run_dir: Path) -> str:
    """The run's report, also written to ``report.md`` in the run dir; returned for the log."""
    text = run_report(read_run(run_dir))
    (Path(run_dir) / "report.md").write_text(f"# Run report\n\n```\n{text}\n```\n")
    return text


def chance_levels(probe_sets: list[Any]) -> dict[str, Any]:
    """summary.json's ``chance``: ``{"probe/<set>/<metric>": level}`` from each probe set's
    ``meta["chance"]`` (a number, or ``{"value", "plateau"}``), where its source knows one."""
    out = {}
    for probe in probe_sets:
        for metric, level in (probe.meta.get("chance") or {}).items():
            out[f"probe/{probe.name}/{metric}"] = level
    return out


def accuracy_chance(levels: dict[str, Any]) -> dict[str, float]:
    """``{"probe/<set>/acc": chance}`` of :func:`chance_levels`' levels (or summary.json's
    ``chance``): the level of guessing, not the ``plateau`` of a copying model; what the jump
    detector judges an accuracy's change against."""
    out = {}
    for series, level in levels.items():
        level = chance_value(level)
        if series.endswith("/acc") and isinstance(level, (int, float)):
            out[series] = float(level)
    return out


def chance_value(level: Any) -> Any:
    """The chance level of one of :func:`chance_levels`' entries (a number, or ``{"value", ...}``)."""
    return level.get("value") if isinstance(level, dict) else level
