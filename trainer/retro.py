"""``elab-retro RUN_DIR``: the monitors recomputed on a run's checkpoint trail, and what came first.

Online, a run measures what it can afford: the expensive representation metrics (kNN graph, H0,
H1) and the LLC only now and then, and the detector flags a jump a few evaluations after it
happened. Offline, the checkpoint trail (``checkpoints/step-<n>.ckpt``, :mod:`trainer.monitors.trail`)
holds the model at many steps, so this command measures everything again, densely where it
matters: every trail checkpoint within ``--window`` steps of each detected jump's onset
(``events.jsonl``), plus ``--sparse`` checkpoints spread log-uniformly over the rest of the run.
The LLC, which costs as much as a few hundred training steps per checkpoint (91% of the pass's
time on the default run when it was on by default: 315 of 345 s), runs only when asked
(``--llc``), on ``--llc-points`` of them, half near the jumps; an estimate whose diagnostics fail
(chains not mixed, a negative estimate) is kept in ``metrics.csv`` with ``llc/valid`` = 0, left
out of the detector and drawn as a mark on the step axis, never as a value.

Writes, in ``RUN_DIR/retro/``:

``metrics.csv``   one row per checkpoint: ``step`` (the step the online monitors log a measurement
                  of that model at: its ``global_step`` - 1), ``global_step``, and every series
                  (``probe/...``, ``topo/...``, ``llc/...``). Re-running skips the checkpoints
                  already there, so an interrupted pass resumes.
``retro.png``     the capabilities that jumped, the LLC and the series that led, by step.
``transitions.json`` every capability series fitted as plateau -> rise -> plateau, as the run's
                  own ``transitions.json`` (:mod:`trainer.measures.transitions`), on this grid.
``lead_lag.json`` per capability jump, every series whose change onset precedes, coincides with
                  or follows it, by how many steps and at what resolution (``trainer.measures.
                  leadlag``); onsets from the lab's one jump detector run over the retro series,
                  and from the online events where the retro pass found none.

The model and data are rebuilt from ``RUN_DIR/.hydra/config.yaml`` as ``elab-train`` builds them,
and the measurements are the online monitors' own functions (``score_probe``, the pure functions
of ``trainer.measures``) with the settings of the run's callback config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.cli_errors import report_bad_input
from trainer.config import ConfigError
from trainer.retro_lock import lock_retro
from trainer.measures.transitions import fit_report
from trainer.report import accuracy_chance, chance_levels
from trainer.retro_measure import llc_valid, load_setup, load_weights, measure
from trainer.retro_plot import plot_retro
from trainer.run_dir import RunDir, read_metrics_csv, write_metrics_csv
from trainer.steps import log_step

log = logging.getLogger("emergence_lab")
MONITORS = ("probes", "topology", "llc")
#: What a pass measures unless asked for more: the LLC is opt-in (``--llc``), see the module text.
DEFAULT_MONITORS = ("probes", "topology")
PREFIX = {"probes": "probe/", "topology": "topo/", "llc": "llc/"}


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """Trail checkpoints by global step, and ``last.ckpt`` when its step is not on the trail."""
    from trainer.run_files import load_checkpoint

    run = RunDir(run_dir)
    found, last = run.trail(), run.last_checkpoint
    if last.is_file():
        step = load_checkpoint(last).get("global_step")
        if not isinstance(step, int):
            raise ConfigError(f"checkpoint {last} records no global_step: not a checkpoint of "
                              "this lab")
        found.setdefault(step, last)
    return dict(sorted(found.items()))


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's online jump events; each must give its series and onset step."""
    run = RunDir(run_dir)
    path, events = run.events_path, run.read_events()
    for number, event in enumerate(events, start=1):
        if not (isinstance(event, dict) and isinstance(event.get("series"), str)
                and isinstance(event.get("onset_step"), int)):
            raise ConfigError(f"{path}, event {number}: {str(event)[:80]!r} is not a jump event "
                              "(series, onset_step): an edited or foreign file")
    return events


def _near(step: int, onsets: Sequence[int], window: int) -> bool:
    """Whether the checkpoint at global ``step`` lies within ``window`` of an onset (a log step)."""
    return any(abs(log_step(step) - onset) <= window for onset in onsets)


def _log_uniform(steps: Sequence[int], k: int) -> set[int]:
    """``k`` of ``steps`` spread log-uniformly, the first and last among them (for k >= 2)."""
    if not steps or k <= 0:
        return set()
    targets = np.log(np.geomspace(steps[0], steps[-1], num=min(k, len(steps))))
    return {steps[int(np.argmin(np.abs(np.log(steps) - t)))] for t in targets}


def choose_steps(available: Sequence[int], onsets: Sequence[int], window: int, sparse: int) -> list[int]:
    """Every available global step within ``window`` of an onset (given as log steps), plus
    ``sparse`` others spread log-uniformly (the first and last among them)."""
    available = sorted(available)
    dense = {s for s in available if _near(s, onsets, window)}
    return sorted(dense | _log_uniform([s for s in available if s not in dense], sparse))


def llc_steps(chosen: Sequence[int], onsets: Sequence[int], window: int, points: int) -> set[int]:
    """The chosen checkpoints the LLC runs on (each estimate costs as many forward and backward
    passes as a few hundred training steps): ``points`` of them (0: all), half spread evenly over
    those near an onset, the rest log-uniformly over the others."""
    chosen = sorted(chosen)
    if points <= 0 or points >= len(chosen):
        return set(chosen)
    near = [s for s in chosen if _near(s, onsets, window)]
    far = [s for s in chosen if s not in near]
    k_near = min(len(near), points // 2 if far else points)
    picked = {near[i] for i in np.linspace(0, len(near) - 1, k_near).round().astype(int)} if k_near else set()
    return picked | _log_uniform(far, points - len(picked))


def read_rows(path: Path) -> dict[int, dict[str, float]]:
    if not path.is_file():
        return {}
    return {int(r["global_step"]): {k: int(v) if k in ("step", "global_step") else float(v)
                                    for k, v in r.items() if v not in ("", None)}
            for r in read_metrics_csv(path)[1]}


def write_rows(path: Path, rows: dict[int, dict[str, float]]) -> None:
    """All rows, sorted by step, columns the union of every row's series; written atomically."""
    columns = ["step", "global_step"] + sorted({k for r in rows.values() for k in r} - {"step", "global_step"})
    write_metrics_csv(path, columns, [{k: (int(v) if k in ("step", "global_step") else repr(v))
                                       for k, v in rows[global_step].items()}
                                      for global_step in sorted(rows)])


def detect_onsets(rows: dict[int, dict[str, float]], cfg: Any, n_eval: dict[str, int],
                  chance: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The lab's jump detector (with the run's settings) run over every retro series but the
    LLC's diagnostics: its confirmed events, each with the ``resolution`` of its onset (the steps
    since the series' previous checkpoint), marked ``source: retro``."""
    from trainer.monitors import JumpWatch
    from trainer.schema import callback_defaults

    # The detector exactly as the run's JumpWatch builds it from the same config entry (a knob
    # its config predates takes today's default).
    jumps_cfg = (cfg.get("callbacks") or {}).get("jumps") or {}
    settings = {**callback_defaults("jumps"), **{k: v for k, v in jumps_cfg.items() if k != "_target_"}}
    detector = JumpWatch(**settings).detector
    detector.set_chance(chance or {})  # the accuracies' chance levels, as the run's detector had
    # The LLC's chains, spread, R-hat and initial loss are diagnostics of one estimate, not series;
    # an estimate whose diagnostics failed is not a value of the series.
    series = sorted(k for k in {k for r in rows.values() for k in r} - {"step", "global_step"}
                    if not k.startswith("llc/") or k == "llc/mean")
    previous: dict[tuple[str, int], int] = {}
    for name in series:
        last = None
        for global_step in sorted(rows):
            value = rows[global_step].get(name)
            if value is None or (name == "llc/mean" and not llc_valid(rows[global_step])):
                continue
            step = log_step(global_step)
            if last is not None:
                previous[(name, step)] = last
            last = step
            detector.update(name, step, value, n_eval.get(name))
    events = []
    for event in detector.events:
        entry = event.to_dict()
        before = previous.get((event.series, event.onset_step))
        entry.setdefault("resolution", 0 if before is None else event.onset_step - before)
        events.append({**entry, "source": "retro"})
    return events


def lead_lag_report(retro_events: list[dict], online_events: list[dict], window: int) -> list[dict]:
    """Per capability jump, every other series' onset before / at / after it, within ``window``
    steps (farther, the trail is sparse and an onset there says nothing about this jump).

    Retro onsets are preferred (finer resolution); an online event is added where the retro pass
    found no event of that series within ``window`` steps of it (it may lie outside the trail, or
    the retro series is sparser there than the online one)."""
    events = list(retro_events)
    for event in online_events:
        if not any(e["series"] == event["series"] and abs(e["onset_step"] - event["onset_step"]) <= window
                   for e in retro_events):
            events.append({**event, "source": "online"})
    from trainer.measures.leadlag import lead_lag

    source = {(e["series"], e["onset_step"]): e["source"] for e in events}
    report = lead_lag(events, max_lag=window)
    for entry in report:
        entry["source"] = source.get((entry["series"], entry["onset_step"]))
        for side in ("before", "same", "after"):
            for item in entry[side]:
                item["source"] = source.get((item["series"], item["onset_step"]))
    return report


def retro(run_dir: Path, monitors: Sequence[str] = DEFAULT_MONITORS, steps: Sequence[int] | None = None,
          window: int = 200, sparse: int = 16, llc_points: int = 12, progress: bool = True,
          device: str | None = None, every: bool = False) -> dict[str, Any]:
    """Measure the chosen checkpoints (``every``: all of them; skipping those already in
    ``retro/metrics.csv``), then write ``metrics.csv`` and ``lead_lag.json``; returns the
    lead-lag report's content."""
    unknown = sorted(set(monitors) - set(MONITORS))
    if unknown:
        raise ConfigError(f"--monitors {','.join(unknown)}: not one of {', '.join(MONITORS)}")
    available = checkpoints(run_dir)
    if not available:
        raise ConfigError(f"run_dir={str(run_dir)!r}: no checkpoints (checkpoints/step-<n>.ckpt or last.ckpt)")
    online = read_events(run_dir)
    onsets = [int(e["onset_step"]) for e in online]
    if every:
        chosen = sorted(available)
    elif steps is None:
        chosen = choose_steps(list(available), onsets, window, sparse)
    else:
        missing = sorted(set(steps) - set(available))
        if missing:
            raise ConfigError(f"--steps {missing}: no such checkpoint; the trail has {sorted(available)}")
        chosen = sorted(steps)
    from trainer.run_config import load_run_config

    load_run_config(run_dir)  # its checks before retro/ is made: a refused run dir stays as it was
    out_dir = RunDir(run_dir).retro_dir
    out_dir.mkdir(exist_ok=True)
    lock = lock_retro(out_dir)
    try:
        return _retro(run_dir, out_dir, available, online, onsets, chosen, monitors, window,
                      llc_points, progress, device)
    finally:
        lock.close()


def _retro(run_dir: Path, out_dir: Path, available: dict[int, Path], online: list[dict],
           onsets: list[int], chosen: list[int], monitors: Sequence[str], window: int,
           llc_points: int, progress: bool, device: str | None) -> dict[str, Any]:
    """:func:`retro` once its input is checked and the run's retro lock held."""
    from tqdm import tqdm

    from trainer.monitors.llc import llc_batches

    rows = read_rows(out_dir / "metrics.csv")
    # Resumable: a checkpoint is measured by the monitors whose series its row does not hold yet.
    with_llc = llc_steps(chosen, onsets, window, llc_points)
    todo = {s: [m for m in monitors if not any(k.startswith(PREFIX[m]) for k in rows.get(s, {}))
                and (m != "llc" or s in with_llc)]
            for s in chosen}
    todo = {s: missing for s, missing in todo.items() if missing}
    setup = load_setup(run_dir, device)
    if any("llc" in missing for missing in todo.values()):
        setup.llc_batches = llc_batches(setup.sampler, setup.llc.n_batches, setup.llc.batch_size, setup.device)
    problems: dict[int, list[str]] = {}
    for global_step in tqdm(todo, desc="elab-retro", unit="ckpt", disable=not progress, file=sys.stderr):
        try:
            load_weights(setup, available[global_step])
        except FileNotFoundError:  # the run thinned its trail since the listing: nothing to measure
            log.warning("%s vanished (the run thinned its trail): skipped", available[global_step])
            continue
        values, problems[global_step] = measure(setup, todo[global_step])
        rows[global_step] = {**rows.get(global_step, {}), "step": log_step(global_step),
                             "global_step": global_step, **values}
        write_rows(out_dir / "metrics.csv", rows)
    n_eval = {f"probe/{p.name}/acc": min(len(p.batch["input_ids"]), setup.probe_rows) for p in setup.probes}
    retro_events = detect_onsets(rows, setup.cfg, n_eval, accuracy_chance(chance_levels(setup.probes)))
    report = {
        "run_dir": str(run_dir.resolve()),
        "checkpoints": [rows[s]["step"] for s in sorted(rows)],
        "window": window,
        "step_convention": "step = global_step - 1, as in csv/metrics.csv and events.jsonl",
        "lead_lag": lead_lag_report(retro_events, online, window),
        "retro_events": retro_events,
        "problems": {str(log_step(s)): p for s, p in problems.items() if p},
    }
    RunDir(run_dir).write_text(out_dir / "lead_lag.json", json.dumps(report, indent=1))
    # The same fits as the run's own transitions.json, on the retro pass's denser grid.
    RunDir(run_dir).write_transitions(
        fit_report(rows.values(), setup.cfg.batch.global_size * setup.sampler.seq_len,
                   list((setup.cfg.get("transitions") or {}).get("series") or []), "retro/metrics.csv"),
        out_dir / "transitions.json")
    plot_retro(rows, report, out_dir / "retro.png")
    return report


def calibrate(run_dir: Path, global_step: int | None, lrs: Sequence[float], n_betas: Sequence[float] | None,
              device: str | None = None) -> list[dict[str, Any]]:
    """:func:`trainer.measures.llc.calibrate_llc` on one checkpoint (default: the last), with the
    run's LLC settings for everything but the grid."""
    from trainer.measures.llc import calibrate_llc
    from trainer.monitors.llc import llc_batches, lm_loss

    available = checkpoints(run_dir)
    if not available:
        raise ConfigError(f"run_dir={str(run_dir)!r}: no checkpoints")
    global_step = max(available) if global_step is None else global_step
    if global_step not in available:
        raise ConfigError(f"--calibrate-llc {global_step}: no such checkpoint; the trail has {sorted(available)}")
    setup = load_setup(run_dir, device)
    load_weights(setup, available[global_step])
    llc = setup.llc
    batches = llc_batches(setup.sampler, llc.n_batches, llc.batch_size, setup.device)
    settings = {k: llc.settings[k] for k in ("steps", "burn_in", "localization", "chains", "seed")}
    n = llc.n_batches * llc.batch_size
    return calibrate_llc(setup.model, lm_loss, batches, n, lrs=lrs, n_betas=n_betas, **settings)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="elab-retro", description="Recompute the monitors on a run's checkpoint trail "
        "(densely around its jumps) and report which series changed first.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--monitors", default=",".join(DEFAULT_MONITORS),
                        help=f"comma-separated subset of {','.join(MONITORS)} (default: "
                        f"{','.join(DEFAULT_MONITORS)}; the LLC costs as much as a few hundred "
                        "training steps per checkpoint)")
    parser.add_argument("--llc", action="store_true", help="also estimate the LLC (on --llc-points "
                        "checkpoints): ~10x the pass's time on the default run")
    parser.add_argument("--steps", help="comma-separated global steps of the checkpoints to measure "
                        "(default: dense around each jump, sparse elsewhere)")
    parser.add_argument("--all", action="store_true", help="every checkpoint of the trail")
    parser.add_argument("--window", type=int, default=200, help="steps either side of a jump's "
                        "onset where every checkpoint is measured (default 200)")
    parser.add_argument("--sparse", type=int, default=16, help="checkpoints measured elsewhere (default 16)")
    parser.add_argument("--llc-points", type=int, default=12, help="checkpoints the LLC runs on, "
                        "half of them near the jumps (default 12; 0: every measured checkpoint)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--calibrate-llc", nargs="?", const=-1, type=int, metavar="STEP",
                        help="instead: the LLC over a grid of step sizes and n*beta on one checkpoint "
                        "(default the last), with which settings are stable")
    parser.add_argument("--lrs", type=_floats, default=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
                        help="step sizes of the calibration grid")
    parser.add_argument("--n-betas", type=_floats, help="n*beta values of the calibration grid "
                        "(default: n/log n, a tenth and ten times that)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.calibrate_llc is not None:
            step = None if args.calibrate_llc < 0 else args.calibrate_llc
            rows = calibrate(args.run_dir, step, args.lrs, args.n_betas, args.device)
            print(f"{'lr':>9} {'n_beta':>9} {'llc':>9} {'std':>8} {'rhat':>6}  stable  problems")
            for r in rows:
                print(f"{r['lr']:9.2g} {r['n_beta']:9.3g} {r['llc_mean']:9.3g} {r['llc_std']:8.3g} "
                      f"{r['rhat']:6.2f}  {'yes' if r['stable'] else 'no ':6}  {'; '.join(r['problems'])}")
            return 0
        steps = [int(s) for s in args.steps.split(",") if s] if args.steps else None
        monitors = [m for m in args.monitors.split(",") if m]
        if args.llc and "llc" not in monitors:
            monitors.append("llc")
        report = retro(args.run_dir, monitors, steps, args.window, args.sparse, args.llc_points,
                       progress=not args.no_progress, device=args.device, every=args.all)
    except Exception as exc:  # bad input names its option, file or path: a message, exit 2
        return report_bad_input("elab-retro", exc)
    _print_report(args.run_dir, report)
    return 0


def _print_report(run_dir: Path, report: dict[str, Any]) -> None:
    print(f"{run_dir / 'retro' / 'metrics.csv'}: {len(report['checkpoints'])} checkpoints "
          f"(steps {', '.join(map(str, report['checkpoints']))})")
    print(f"{run_dir / 'retro' / 'lead_lag.json'}")
    print(f"{run_dir / 'retro' / 'transitions.json'}")
    if not report["lead_lag"]:
        print("  no capability jump")
    for jump in report["lead_lag"]:
        print(f"  {jump['series']}: onset step {jump['onset_step']} "
              f"(+-{jump.get('resolution', '?')}, {jump.get('source')})")
        led = jump["before"] + jump["same"]
        if not led:
            print("    no series changed before or with it")
        for item in led[:12]:
            print(f"    {item['series']:<40} onset {item['onset_step']:>6}  lead {item['lead_steps']:>+5} "
                  f"steps (resolution {item.get('resolution', '?')}, {item.get('source')})")
        if len(led) > 12:
            print(f"    ... {len(led) - 12} more in lead_lag.json")
    for step, problems in report["problems"].items():
        for problem in problems:
            if problem.startswith("llc"):
                log.warning("step %s: %s", step, problem)


if __name__ == "__main__":
    sys.exit(main())
