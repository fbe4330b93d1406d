"""``elab-show RUN_DIR|SWEEP_DIR``: a run's report (:mod:`trainer.report`), finished, failed or
still training; for a sweep, one line per job and the jobs that failed, with why.

Reads only the small run files (summary.json, events.jsonl, transitions.json, .hydra/overrides.yaml,
.lock): no torch, no Lightning, well under a second.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.report import CAPABILITY, chance_value, describe_rise, read_run, rises, run_report

RUN_FILES = ("summary.json", "events.jsonl", ".hydra", ".lock", "train.log")


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def lock_holder(run_dir: Path) -> str | None:
    """Who trains in ``run_dir``, from its ``.lock`` text (:mod:`trainer.runlock` writes
    ``host=... pid=... started=...``); None when nobody does. A lock file left by a killed process
    on this host names a pid that is gone: not a holder."""
    try:
        text = (run_dir / ".lock").read_text()
    except OSError:
        return None
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    pid, host = fields.get("pid", ""), fields.get("host", "?")
    if pid.isdigit() and host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return f"pid {pid or '?'} on host {host}, started {fields.get('started', '?')}"


def _job_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and is_run_dir(p)), key=_job_key)


def _axes(runs: list[dict[str, Any]]) -> list[str]:
    """The swept keys: overrides whose value differs between jobs (every override of one job)."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for override in run["overrides"]:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    keys = [k for k, v in values.items() if len(v) > 1 or len(runs) == 1]
    return [k for k in keys if not k.startswith("hydra.")]


def _job_row(run: dict[str, Any], axes: list[str], holder: str | None) -> dict[str, str]:
    summary = run["summary"] or {}
    overrides = dict(o.partition("=")[::2] for o in run["overrides"])
    status = summary.get("status") or ("running" if holder else "no summary")
    accs = sorted(k for k in (summary.get("metrics") or {}) if k.startswith(CAPABILITY)
                  and k.endswith("/acc"))
    capability = accs[0] if accs else None
    row = {"job": Path(run["run_dir"]).name, "status": status}
    row.update({axis: overrides.get(axis, "-") for axis in axes})
    if capability:
        chance = chance_value((summary.get("chance") or {}).get(capability))
        row["capability"] = capability
        row["final"] = f"{summary['metrics'][capability]:.3f}"
        row["chance"] = f"{chance:.3f}" if isinstance(chance, (int, float)) else "?"
    jumps = sorted(e["onset_step"] for e in run["events"]
                   if e.get("series") == capability and "onset_step" in e)
    row["jump onset"] = str(jumps[0]) if jumps else "none"
    fitted = rises(run["transitions"]).get(capability or "", [])
    row["transition"] = describe_rise(fitted[0]).split(", height")[0] if fitted else "-"
    return row


def sweep_table(sweep_dir: Path) -> str:
    jobs = sweep_jobs(sweep_dir)
    runs = [read_run(job) for job in jobs]
    axes = _axes(runs)
    rows = [_job_row(run, axes, lock_holder(job)) for run, job in zip(runs, jobs)]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
    lines = [f"sweep {sweep_dir}: {len(rows)} jobs; swept: {', '.join(axes) or '-'}",
             "  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip() for row in rows]
    failed = [(job, run["summary"]) for job, run in zip(jobs, runs)
              if (run["summary"] or {}).get("status") in ("failed", "interrupted")]
    if failed:
        lines.append(f"{len(failed)} job(s) did not complete:")
        lines += [f"  {job.name}: {s['status']}: {_one_line(s.get('error'))}" for job, s in failed]
    lines.append(f"next: elab-show {sweep_dir}/<job> (one run), elab-analyze {sweep_dir}")
    return "\n".join(lines)


def _one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text or "no error recorded"))[:200]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="elab-show",
        description="A run at a glance: status, final capabilities beside chance, jumps with their "
                    "onset, what led them, what to run next; for a sweep dir, one line per job.")
    parser.add_argument("path", type=Path, help="a run dir, or a sweep (multirun) dir")
    args = parser.parse_args(argv)
    path: Path = args.path
    if not path.is_dir():
        print(f"error: {path} is not a directory (give a run dir or a sweep dir)", file=sys.stderr)
        return 2
    if is_run_dir(path):
        print(run_report(read_run(path), holder=lock_holder(path)))
    elif sweep_jobs(path):
        print(sweep_table(path))
    else:
        print(f"error: {path} holds neither a run (summary.json, events.jsonl, .hydra/) nor "
              f"a sweep's job dirs", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
