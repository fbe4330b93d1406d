"""The default run with ``malloc=reuse`` (the default) against ``malloc=system`` (glibc's own
settings), side by side: tokens/s, wall time, page faults and peak memory of whole ``elab-train``
runs, alternating the two settings round by round so machine noise hits both alike.

    python scripts/bench_malloc.py                          # the default run, 2 rounds
    python scripts/bench_malloc.py model=gpt_small budget.tokens=500000 --rounds 3

Each run is a fresh process (the setting is process-wide), writes to a temporary run dir, and
is measured from outside: tokens/s and wall time from its ``summary.json``, minor page faults
and peak resident memory from the kernel's accounting of that child process (``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("system", "reuse")


def run(mode: str, overrides: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-c", "from trainer.train import main; main()", f"malloc={mode}",
           "progress=none", f"hydra.run.dir={run_dir}", *overrides]
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"elab-train malloc={mode} failed:\n{stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"tokens_per_s": summary["tokens_per_s"], "wall_s": summary["wall_time_s"],
            "faults_per_step": usage.ru_minflt / summary["steps"], "peak_mb": usage.ru_maxrss / 1024,
            "malloc": summary.get("malloc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for elab-train")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench_malloc_") as tmp:
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                res = run(mode, args.overrides, Path(tmp) / f"{mode}_{r}")
                results[mode].append(res)
                print(f"round {r} malloc={mode:6s} (took effect: {res['malloc']}): "
                      f"{res['tokens_per_s']:,.0f} tok/s, training {res['wall_s']:.1f} s, "
                      f"{res['faults_per_step']:,.0f} page faults/step, peak {res['peak_mb']:,.0f} MB",
                      flush=True)
    med = {m: {k: statistics.median(x[k] for x in results[m])
               for k in ("tokens_per_s", "wall_s", "faults_per_step", "peak_mb")} for m in MODES}
    print("median:")
    for m in MODES:
        print(f"  malloc={m:6s}: {med[m]['tokens_per_s']:,.0f} tok/s, training {med[m]['wall_s']:.1f} s, "
              f"{med[m]['faults_per_step']:,.0f} page faults/step, peak {med[m]['peak_mb']:,.0f} MB")
    print(f"reuse/system: tokens/s {med['reuse']['tokens_per_s'] / med['system']['tokens_per_s']:.3f}, "
          f"peak memory {med['reuse']['peak_mb'] / med['system']['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
