"""Wall-time overhead of the monitoring callbacks (probes, topology, data meter, jump detection).

Runs the same training job with ``callbacks=default`` and with ``callbacks=minimal`` (checkpoints
only), alternating, in one process, and prints tokens/s of each and the overhead. Target: <= 5%.

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

    from trainer.train import CONF_DIR, train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"callbacks={callbacks}", "progress=none",
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
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for callbacks in ("minimal", "default"):
                summary = run(args.overrides, callbacks, Path(tmp) / f"{callbacks}{r}")
                speeds[callbacks].append(summary["tokens_per_s"])
                print(f"round {r} callbacks={callbacks:8s} {summary['tokens_per_s']:>10,.0f} tok/s "
                      f"({summary['steps']} steps, {len(summary['metrics'])} series)", flush=True)
    base, monitored = statistics.median(speeds["minimal"]), statistics.median(speeds["default"])
    print(f"median: without monitors {base:,.0f} tok/s, with {monitored:,.0f} tok/s, "
          f"overhead {100 * (base / monitored - 1):.1f}% of training time (target <= 5%)")


if __name__ == "__main__":
    main()
