"""False alarms of the jump detector on real runs where nothing emerges.

Replays the detector (the current defaults, or with ``--run-settings`` the run's own
``callbacks.jumps``; fed as JumpWatch feeds it, and reporting what JumpWatch reports) over every ``probe/`` and
``topo/`` series of each run's ``csv/metrics.csv`` and counts the events whose onset lies in the
calibration window, per series-evaluation. Runs where nothing should be flagged: burstiness 0
(``data.p_bursty=0``: no in-context learning to emerge), and the converged tail of a long default
run. A window is given as ``RUN_DIR:FROM_STEP`` (evaluations before FROM_STEP feed the detector's
history but are not counted: the first steps of any run are the fast, real changes of early
training).

    .venv/bin/python scripts/calibrate_detector.py RUN_DIR[:FROM_STEP] ... [--n-eval 256]

Prints one table per series family (probes, cheap topology, expensive topology, counts), the
flags, and the simulated-curve counterpart is ``scripts/eval_jump_detector.py``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import yaml

from trainer.monitors.jumpwatch import JumpWatch, watched
from trainer.report import accuracy_chance
from trainer.run_dir import RunDir, series_of
from trainer.schema import callback_defaults

COUNTS = ("knn_components", "h1_bars")
EXPENSIVE = ("twonn", "knn_", "h0_", "h1_")


def family(series: str) -> str:
    if series.startswith("probe/"):
        return "probe"
    metric = series.rsplit("/", 1)[-1]
    if metric in COUNTS:
        return "topo: count-valued"
    if metric.startswith(EXPENSIVE):
        return "topo: expensive (log + bursts)"
    return "topo: cheap (every 25)"


def read_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    by_step = series_of(RunDir(run).read_metrics()[1])
    return {k: sorted(v.items()) for k, v in by_step.items() if k.startswith(("probe/", "topo/"))}


def watch(run: Path, topology_min_rel_size: float | None, run_settings: bool) -> JumpWatch:
    """The JumpWatch of the defaults (``conf/callbacks/default.yaml``), or with ``run_settings``
    the one the run built from its own ``callbacks.jumps`` (a knob its config lacks takes the
    default)."""
    settings = callback_defaults("jumps")
    config = RunDir(run).config_path
    if run_settings and config.exists():
        jumps = (yaml.safe_load(config.read_text()).get("callbacks") or {}).get("jumps") or {}
        settings = {**settings, **{k: v for k, v in jumps.items() if k != "_target_"}}
    if topology_min_rel_size is not None:
        settings["topology_min_rel_size"] = topology_min_rel_size
    return JumpWatch(**settings)


def replay(run: Path, from_step: int, n_eval: int, topology_min_rel_size: float | None,
           all_series: bool, run_settings: bool) -> tuple[dict, list]:
    """Per family: [series-evaluations, flags]; and the flagged events. The series are fed as
    JumpWatch feeds them (from the second evaluation on, update ratios left out). The expensive series are not fed to the online detector
    (trainer/monitors/topology_probe.py): left out unless ``all_series``."""
    jump_watch = watch(run, topology_min_rel_size, run_settings)
    summary = RunDir(run).read_summary() or {}
    jump_watch.detector.set_chance(accuracy_chance(summary.get("chance") or {}))
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, points in read_series(run).items():
        if not watched(name, jump_watch.watch_prefixes):
            continue
        if not all_series and family(name).startswith(("topo: expensive", "topo: count")):
            continue
        n = n_eval if name.endswith("/acc") else None
        for step, value in points:
            if step == 0:
                continue
            jump_watch.detector.update(name, step, value, n)
            tally[family(name)][0] += step >= from_step
    flags = [(run.name, e) for e in jump_watch.reported(jump_watch.detector.events)
             if e.onset_step >= from_step]
    for _, event in flags:
        tally[family(event.series)][1] += 1
    return tally, flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:FROM_STEP")
    parser.add_argument("--n-eval", type=int, default=128, help="rows behind each probe accuracy")
    parser.add_argument("--topology-min-rel-size", type=float, default=None,
                        help="override the run's callbacks.jumps.topology_min_rel_size")
    parser.add_argument("--all-series", action="store_true",
                        help="also replay the expensive series the online detector does not watch")
    parser.add_argument("--run-settings", action="store_true",
                        help="the run's own callbacks.jumps settings, not the current defaults")
    args = parser.parse_args()
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    all_flags = []
    print(f"{'run (from step)':<34} {'family':<32} {'evaluations':>11} {'flags':>6} {'per 1000':>9}")
    print("-" * 96)
    for spec in args.runs:
        path, _, start = spec.partition(":")
        run, from_step = Path(path), int(start or 0)
        tally, flags = replay(run, from_step, args.n_eval, args.topology_min_rel_size, args.all_series,
                              args.run_settings)
        all_flags += flags
        for name, (evaluations, n_flags) in sorted(tally.items()):
            total[name][0] += evaluations
            total[name][1] += n_flags
            print(f"{f'{run.name} ({from_step})':<34} {name:<32} {evaluations:>11} {n_flags:>6} "
                  f"{1000 * n_flags / max(evaluations, 1):>9.2f}")
    print("-" * 96)
    for name, (evaluations, n_flags) in sorted(total.items()):
        print(f"{'all runs':<34} {name:<32} {evaluations:>11} {n_flags:>6} "
              f"{1000 * n_flags / max(evaluations, 1):>9.2f}")
    for run_name, event in all_flags:
        print(f"flag: {run_name} {event.series} onset {event.onset_step} (confirmed {event.step}) "
              f"{event.size:+.4g} score {event.score:.1f}")


if __name__ == "__main__":
    main()
