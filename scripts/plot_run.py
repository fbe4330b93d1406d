"""Plot one run's logged series with its detected jumps marked.

Usage: python scripts/plot_run.py RUN_DIR [-o out.png] [--series probe/icl/acc 'topo/*/eff_rank']
"""

from trainer.analysis import plot_run_main

if __name__ == "__main__":
    raise SystemExit(plot_run_main())
