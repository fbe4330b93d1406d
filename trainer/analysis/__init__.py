"""Turn run dirs and sweeps into plots, tables and a one-page offline report.

One job per module:

- ``runs``: load run dirs, sweeps and wandb groups into :class:`Run` (the only reader of files);
- ``axes``: which override keys a sweep moved, which metric is the capability, run order, and
  whether the runs are one experiment at all;
- ``stats``: a cell's mean, 95% t-interval over seeds and n (every table and figure uses it);
- ``tables``: the table of runs (CSV, Markdown, HTML);
- ``phase``: the phase diagram over one or two swept axes;
- ``plots``: per-run curves and ``elab-plot``'s panels;
- ``report``: :func:`analyze_sweep`, every output of a sweep and the HTML report;
- ``cli``: the ``elab-analyze`` and ``elab-plot`` command lines.

None of it imports torch or lightning: analysing a sweep should start in well under a second, on a
machine that has none of the training stack. The names below are the public API; import them from
``trainer.analysis``.
"""

from trainer.analysis.axes import (
    available_metrics,
    axis_values,
    choose_axes,
    choose_metric,
    sort_runs,
    swept_axes,
)
from trainer.analysis.cli import analyze_sweep_main, plot_run_main
from trainer.analysis.panels import all_panels, compact_panels
from trainer.analysis.phase import PhaseGrid, format_tokens, phase_grid, plot_phase_diagram
from trainer.analysis.plots import plot_run, plot_runs
from trainer.analysis.report import SweepAnalysis, analyze_sweep, write_report
from trainer.analysis.runs import (
    ALL_RUNS,
    DEFAULT_VALUE,
    SEED_KEYS,
    AnalysisError,
    Run,
    find_run_dirs,
    load_run,
    load_series,
    load_sweep,
    load_wandb_group,
    parse_overrides,
)
from trainer.analysis.tables import (
    format_cell,
    runs_table,
    table_html,
    table_markdown,
    write_table_csv,
)

__all__ = [
    "ALL_RUNS",
    "DEFAULT_VALUE",
    "SEED_KEYS",
    "AnalysisError",
    "PhaseGrid",
    "Run",
    "SweepAnalysis",
    "all_panels",
    "analyze_sweep",
    "analyze_sweep_main",
    "available_metrics",
    "axis_values",
    "choose_axes",
    "choose_metric",
    "compact_panels",
    "find_run_dirs",
    "format_cell",
    "format_tokens",
    "load_run",
    "load_series",
    "load_sweep",
    "load_wandb_group",
    "parse_overrides",
    "phase_grid",
    "plot_phase_diagram",
    "plot_run",
    "plot_run_main",
    "plot_runs",
    "runs_table",
    "sort_runs",
    "swept_axes",
    "table_html",
    "table_markdown",
    "write_report",
    "write_table_csv",
]
