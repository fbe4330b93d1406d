"""Phase diagram, per-run curves, table of runs and an offline HTML report of a sweep dir; on a
two-axis sweep also the diversity-vs-scale figure and the table of how much each axis moves the
capability.

Usage: python scripts/analyze_sweep.py SWEEP_DIR [-o OUT_DIR] [--metric probe/icl/acc]
                                       [--x model.d_model --y data.label_mapping_diversity]
                                       [--level 0.6]
"""

from trainer.analysis import analyze_sweep_main

if __name__ == "__main__":
    raise SystemExit(analyze_sweep_main())
