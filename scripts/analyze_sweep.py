"""Phase diagram, per-run curves, table of runs and an offline HTML report of a sweep dir.

Usage: python scripts/analyze_sweep.py SWEEP_DIR [-o OUT_DIR] [--metric probe/icl/acc]
                                       [--x data.n_classes --y data.p_bursty]
"""

from trainer.analysis import analyze_sweep_main

if __name__ == "__main__":
    raise SystemExit(analyze_sweep_main())
