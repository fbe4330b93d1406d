"""Training with ``malloc=reuse`` (the default) against ``malloc=system`` (glibc's own settings),
side by side: tokens/s, page faults per training step and resident memory, of whole runs that
alternate the two settings round by round so machine noise hits both alike.

    python scripts/bench_malloc.py                          # the default run, 2 rounds
    python scripts/bench_malloc.py model=gpt_small budget.tokens=150000 --rounds 3

Each run is a fresh process (the setting is process-wide) training as ``elab-train`` does, into a
temporary run dir. Tokens/s comes from its ``summary.json``; page faults and resident memory are
read inside it by a callback over the training loop alone (from the end of the first step to the
end of the last: imports, data preparation and the first step's allocations are not counted).
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

CHILD = r"""
import json, logging, resource, sys, warnings
import lightning as L
from hydra import compose, initialize_config_dir
from trainer.errors import CONF_DIR
from trainer.train import train

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))

class LoopMeter(L.Callback):
    def __init__(self):
        self.start = None
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is None:  # after the first step: its one-off allocations are done
            self.start = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt, trainer.global_step)
            self.rss_start = rss_mb()
    def on_train_end(self, trainer, module):
        faults, step = self.start
        self.result = {"faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
                       / max(trainer.global_step - step, 1),
                       "rss_start_mb": self.rss_start, "rss_end_mb": rss_mb()}

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
mode, out, *overrides = sys.argv[1:]
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = compose("train", overrides=[*overrides, f"malloc={mode}", "progress=none",
                                      f"paths.output_dir={out}"])
meter = LoopMeter()
summary = train(cfg, callbacks=[meter])
print(json.dumps({"tokens_per_s": summary["tokens_per_s"], "malloc": summary.get("malloc"),
                  **meter.result}))
"""


def run(mode: str, overrides: list[str], out: Path) -> dict:
    out.mkdir(parents=True)
    env = dict(os.environ, WANDB_MODE="disabled")
    # Output to files, not pipes: a chatty child cannot fill a pipe and block.
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        rc = subprocess.call([sys.executable, "-c", CHILD, mode, str(out / "run"), *overrides],
                             env=env, stdout=stdout, stderr=stderr)
    if rc != 0:
        sys.exit(f"training with malloc={mode} failed (exit {rc}):\n"
                 f"{(out / 'stderr.txt').read_text()[-3000:]}")
    return json.loads((out / "stdout.txt").read_text().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for elab-train")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    keys = ("tokens_per_s", "faults_per_step", "rss_start_mb", "rss_end_mb")
    with tempfile.TemporaryDirectory(prefix="bench_malloc_") as tmp:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                res = run(mode, args.overrides, Path(tmp) / f"{mode}_{r}")
                results[mode].append(res)
                print(f"round {r} malloc={mode:6s} (took effect: {res['malloc']}): "
                      f"{res['tokens_per_s']:,.0f} tok/s, {res['faults_per_step']:,.1f} page faults/step "
                      f"in the loop, resident {res['rss_start_mb']:,.0f} -> {res['rss_end_mb']:,.0f} MB",
                      flush=True)
    med = {m: {k: statistics.median(x[k] for x in results[m]) for k in keys} for m in MODES}
    print("median:")
    for m in MODES:
        print(f"  malloc={m:6s}: {med[m]['tokens_per_s']:,.0f} tok/s, {med[m]['faults_per_step']:,.1f} "
              f"page faults/step, resident at the end of training {med[m]['rss_end_mb']:,.0f} MB")
    print(f"reuse/system: tokens/s {med['reuse']['tokens_per_s'] / med['system']['tokens_per_s']:.3f}, "
          f"resident memory {med['reuse']['rss_end_mb'] / med['system']['rss_end_mb']:.3f}")


if __name__ == "__main__":
    main()
