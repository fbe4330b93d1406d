"""Wall-time overhead of the monitoring callbacks (probes, topology, data meter, jump detection).

Runs the same training job with ``callbacks=default`` and with ``callbacks=minimal`` (checkpoints
only), alternating, in one process, and prints tokens/s of each and the overhead. Target: <= 3%
(issue 12), measured as the acceptance check does: the seconds inside the monitors' hooks
(summary.json's ``monitor_seconds``) over the rest of the run's wall time. The checkpoint trail
(``checkpoint_seconds``: it writes weights for ``elab-retro``, it measures nothing) is printed
beside it.

    python scripts/bench_callbacks.py                    # the embedded default run
    python scripts/bench_callbacks.py budget.tokens=500000 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")


def run(overrides: list[str], callbacks: str, out: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trainer.errors import CONF_DIR
    from trainer.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        if callbacks == "minimal":  # callbacks.<monitor>.<key> overrides tune the monitored run
            overrides = [o for o in overrides if not o.startswith("callbacks.")]
        cfg = compose("train", overrides=[f"callbacks={callbacks}", *overrides, "progress=none",
                                          "logger=csv", f"paths.output_dir={out}"])
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for elab-train")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    speeds: dict[str, list[float]] = {"minimal": [], "default": []}
    walls: dict[str, list[float]] = {"minimal": [], "default": []}
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for callbacks in ("minimal", "default"):
                summary = run(args.overrides, callbacks, Path(tmp) / f"{callbacks}{r}")
                speeds[callbacks].append(summary["tokens_per_s"])
                walls[callbacks].append(summary["wall_time_s"])
                if callbacks == "default":
                    # Measured where it is spent: seconds inside the monitors' hooks over the
                    # rest of the same run (robust to the machine's noise between runs).
                    monitors_s = sum(summary["monitor_seconds"].values())
                    shares.append(monitors_s / (summary["wall_time_s"] - monitors_s))
                    trail_s = sum(summary.get("checkpoint_seconds", {}).values())
                    print(f"          monitors: {summary['monitor_seconds']} = "
                          f"{100 * shares[-1]:.1f}% on top of the rest of the run; checkpoint "
                          f"trail {trail_s:.3f} s = {100 * trail_s / summary['wall_time_s']:.1f}%",
                          flush=True)
                print(f"round {r} callbacks={callbacks:8s} {summary['tokens_per_s']:>10,.0f} tok/s "
                      f"wall {summary['wall_time_s']:.1f} s ({summary['steps']} steps, "
                      f"{len(summary['metrics'])} series)", flush=True)
    base, monitored = statistics.median(speeds["minimal"]), statistics.median(speeds["default"])
    print(f"measured inside the monitors: {100 * statistics.median(shares):.1f}% on top of "
          f"the rest of the run (target <= 3%)")
    print(f"median: without monitors {base:,.0f} tok/s, with {monitored:,.0f} tok/s, "
          f"side by side {100 * (base / monitored - 1):.1f}% (two runs apart; noisy here); "
          f"whole run incl. start-up and the first evaluation: "
          f"{statistics.median(walls['minimal']):.1f} s vs {statistics.median(walls['default']):.1f} s")


if __name__ == "__main__":
    main()
