"""The command lines: ``elab-analyze`` (a sweep) and ``elab-plot`` (one run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.analysis.lr_transfer import analyze_lr_transfer, is_lr_transfer_sweep
from trainer.analysis.plots import plot_run
from trainer.analysis.report import analyze_sweep
from trainer.analysis.runs import AnalysisError, load_wandb_group
from trainer.cli_errors import report_bad_input


def analyze_sweep_main(argv: Sequence[str] | None = None) -> int:
    """``elab-analyze SWEEP_DIR``: the sweep's phase diagram, curves, table and report."""
    parser = argparse.ArgumentParser(
        prog="elab-analyze",
        description="Phase diagram, per-run curves, table and offline HTML report of a sweep.",
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?",
                        help="a Hydra multirun dir (or a single run dir)")
    parser.add_argument("-o", "--out-dir", type=Path, help="default: SWEEP_DIR/analysis")
    parser.add_argument("--metric", help="capability metric; default: the first probe/*/acc")
    parser.add_argument("--x", help="swept override key on the x axis, e.g. data.n_classes")
    parser.add_argument("--y", help="swept override key on the y axis, e.g. data.p_bursty")
    parser.add_argument("--level", type=float,
                        help="capability level for 'smallest size reaching it' (two-axis sweeps); "
                             "default: halfway between the worst and the best cell")
    parser.add_argument("--wandb-group", help="read this wandb group instead of a sweep dir")
    parser.add_argument("--wandb-project", default="emergence-lab")
    parser.add_argument("--wandb-entity", help="default: your wandb default entity")
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.wandb_group is None):
        parser.error("give either SWEEP_DIR or --wandb-group")
    try:
        if args.wandb_group:
            runs = load_wandb_group(args.wandb_group, args.wandb_project, args.wandb_entity)
            result = analyze_sweep(None, args.out_dir or Path(args.wandb_group), args.metric,
                                   args.x, args.y, runs=runs, title=f"wandb group {args.wandb_group}",
                                   level=args.level)
        elif is_lr_transfer_sweep(args.sweep_dir):  # lr x width x parametrization
            result = analyze_lr_transfer(args.sweep_dir, args.out_dir)
        else:
            result = analyze_sweep(args.sweep_dir, args.out_dir, args.metric, args.x, args.y,
                                   level=args.level)
    except AnalysisError as exc:
        parser.error(str(exc))
    except OSError as exc:  # an output dir that cannot be written, a file that cannot be read
        return report_bad_input("elab-analyze", exc, "choose another --out-dir")
    for path in result.paths():
        print(path)
    print()
    print(result.markdown, end="")
    if result.scale_markdown:
        print()
        print(result.scale_markdown, end="")
    transitions = getattr(result, "transitions_markdown", "")  # an lr_transfer sweep has none
    if transitions:
        print()
        print(transitions, end="")
    not_completed = getattr(result, "not_completed", [])
    if not_completed:
        print(f"\n{len(not_completed)} run(s) not completed:")
        for line in not_completed:
            print(f"  {line}")
    for line in getattr(result, "notes", []):
        print(f"\nnote: {line}")
    for line in getattr(result, "warnings", []):  # again under the tables, where the reader's eye ends
        print(f"warning: {line}", file=sys.stderr)
    return 0


def plot_run_main(argv: Sequence[str] | None = None) -> int:
    """``elab-plot RUN_DIR``: one run's series in panels, jumps marked."""
    parser = argparse.ArgumentParser(
        prog="elab-plot",
        description="Plot a run: by default its capability series (accuracy beside answer "
                    "log-probability), the loss and the series that led or came with a jump, "
                    "onset windows shaded, chance levels drawn; --all for every series.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="PNG to write; default: RUN_DIR/run.png")
    parser.add_argument(
        "--series",
        nargs="+",
        metavar="NAME",
        help="series names or glob patterns, one panel each",
    )
    parser.add_argument("--all", action="store_true", dest="all_series",
                        help="every series: loss, probes, each topology metric, data statistics")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "run.png"
    try:
        marked = plot_run(args.run_dir, out, args.series, args.all_series)
    except AnalysisError as exc:
        parser.error(str(exc))
    except OSError as exc:
        return report_bad_input("elab-plot", exc, "choose another --out")
    print(out)
    for name, steps in marked.items():
        if steps:
            print(f"  jumps of {name} at steps {', '.join(map(str, steps))}")
    return 0
