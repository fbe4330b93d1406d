"""elab-retro's cost beside the run's own, side by side in one script, and whether the fast
default pass gives the same lead-lag answer as the full one (the LLC on, as before this round).

    .venv/bin/python scripts/bench_retro.py [--seed 0] [--skip-full] [--keep DIR]

1. ``elab-train`` the default run (progress off), timed;
2. ``elab-retro RUN`` (the default pass: probes and topology, dense around the jumps), timed;
3. ``elab-retro COPY --llc`` on a copy of the same run (the LLC on 12 checkpoints), timed.

Prints each wall time, its ratio to the run's, and per pass the capability jumps with the series
that changed before or with them; the last line says whether the answers agree. Times are wall
clock on whatever else the machine is doing: run it on a quiet machine and read the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"{' '.join(argv[:4])} ... exited {code}; see {log}")
    return time.perf_counter() - start


def answer(run: Path) -> list[tuple[str, int, tuple[str, ...]]]:
    """Per capability jump of the pass: (series, onset, the series before or with it)."""
    report = json.loads((run / "retro" / "lead_lag.json").read_text())
    return [(j["series"], j["onset_step"], tuple(sorted(i["series"] for i in j["before"] + j["same"])))
            for j in report["lead_lag"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-full", action="store_true", help="no pass with the LLC (saves ~5 min)")
    parser.add_argument("--keep", type=Path, help="keep the run dirs here (default: a temporary dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-retro-"))
    root.mkdir(parents=True, exist_ok=True)
    run, full = root / "run", root / "run-llc"
    py = sys.executable
    t_run = timed([py, "-m", "trainer.train", f"seed={args.seed}", f"hydra.run.dir={run}", "progress=none"],
                  root / "train.log")
    if not args.skip_full:
        shutil.copytree(run, full)
    t_fast = timed([py, "-m", "trainer.retro", str(run), "--no-progress"], root / "retro.log")
    rows = [("elab-train (the default run)", t_run, None), ("elab-retro (default pass)", t_fast, answer(run))]
    if not args.skip_full:
        t_full = timed([py, "-m", "trainer.retro", str(full), "--no-progress", "--llc"], root / "retro-llc.log")
        rows.append(("elab-retro --llc (the LLC on 12)", t_full, answer(full)))
    print(f"{'what':<34} {'wall s':>8} {'x run':>6}")
    for name, seconds, _ in rows:
        print(f"{name:<34} {seconds:8.1f} {seconds / t_run:6.1f}")
    for name, _, jumps in rows[1:]:
        print(f"{name}:")
        for series, onset, led in jumps or [("no capability jump", 0, ())]:
            print(f"  {series} onset {onset}: led or joined by {', '.join(led) or 'nothing'}")
    if not args.skip_full:
        fast, with_llc = rows[1][2], rows[2][2]
        # The LLC's own series may join the full pass's answer; the rest must agree.
        strip = [(s, o, tuple(x for x in led if not x.startswith("llc/"))) for s, o, led in with_llc]
        print(f"same lead-lag answer (LLC series aside): {'yes' if fast == strip else 'no'}")
    print(f"retro: {t_fast:.0f} s for a {t_run:.0f} s run, ratio {t_fast / t_run:.1f} (target <= 3); "
          f"run dirs in {root}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
