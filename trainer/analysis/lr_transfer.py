"""The learning-rate transfer sweep (``experiment=lr_transfer``): does the best learning rate hold
over width? Final training loss over lr, one curve per width, a panel per parametrization
(``lr_transfer.png``), and the best lr per width (``lr_transfer.json``: ``{"sp": {"<width>": lr},
"mup": {...}}``), best by the mean final training loss over seeds.

A sweep is one when it sweeps the three axes below (Hydra's ``multirun.yaml`` says, before any
run is read); ``elab-analyze`` then draws this instead of the phase diagram.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from trainer.analysis.runs import AnalysisError, Run, load_sweep
from trainer.analysis.tables import table_markdown

LR, WIDTH, PARAM = "optim.lr", "model.d_model", "model.parametrization"
LOSS = "train/loss"
# The final loss is the mean of the logged losses over the last fifth of the steps: one batch's
# loss is noisy enough to reorder neighbouring learning rates.
FINAL_FRACTION = 0.2


def is_lr_transfer_sweep(sweep_dir: str | Path) -> bool:
    """Whether the multirun in ``sweep_dir`` swept lr, width and parametrization."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return False
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    params = set(((hydra.get("sweeper") or {}).get("params") or {}))
    tasks = {str(o).partition("=")[0].lstrip("+~") for o in
             (hydra.get("overrides") or {}).get("task") or [] if "," in str(o)}
    return {LR, WIDTH, PARAM} <= params | tasks


def final_loss(run: Run) -> float:
    """Mean logged training loss over the last ``FINAL_FRACTION`` of the run; inf for a run that
    did not complete (a diverged lr fails on its non-finite loss)."""
    if not run.completed or LOSS not in run.series:
        return math.inf
    steps, values = run.series[LOSS]
    tail = values[steps >= steps[-1] * (1.0 - FINAL_FRACTION)]
    return float(np.mean(tail)) if np.all(np.isfinite(tail)) else math.inf


@dataclass
class LrTransferAnalysis:
    """What ``analyze_lr_transfer`` wrote; ``elab-analyze`` prints it like a sweep analysis."""

    figure: Path
    best_json: Path
    table_md: Path
    markdown: str
    best: dict[str, dict[str, float]]
    scale_markdown: str = ""
    not_completed: list[str] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [self.figure, self.best_json, self.table_md]


def loss_grid(runs: Sequence[Run]) -> dict[str, dict[int, dict[float, list[float]]]]:
    """parametrization -> width -> lr -> final losses of its seeds."""
    grid: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        try:
            lr, width = float(run.knob(LR)), int(run.knob(WIDTH))
        except ValueError as exc:
            raise AnalysisError(f"{run.path}: {LR}={run.knob(LR)!r}, {WIDTH}={run.knob(WIDTH)!r} "
                                "are not numbers") from exc
        grid[run.knob(PARAM)][width][lr].append(final_loss(run))
    return grid


def best_lrs(grid) -> dict[str, dict[str, float]]:
    """Per parametrization and width, the lr of the lowest mean final loss over seeds (a seed
    that diverged makes its lr's mean inf)."""
    best = {}
    for param in sorted(grid):
        best[param] = {}
        for width in sorted(grid[param]):
            means = {lr: float(np.mean(losses)) for lr, losses in grid[param][width].items()}
            finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
            if finite:
                best[param][str(width)] = min(finite, key=finite.get)
    return best


def plot(grid, best, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = sorted(grid)
    fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4), sharey=True,
                             squeeze=False)
    for ax, param in zip(axes[0], params):
        for width in sorted(grid[param]):
            lrs = sorted(grid[param][width])
            means = [float(np.mean(grid[param][width][lr])) for lr in lrs]
            line, = ax.plot(lrs, [m if math.isfinite(m) else np.nan for m in means], marker="o",
                            label=f"d_model {width}")
            if str(width) in best[param]:
                lr = best[param][str(width)]
                ax.plot([lr], [np.mean(grid[param][width][lr])], marker="*", markersize=14,
                        color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_title(f"{param}: final training loss (mean over seeds; * best)")
        ax.set_xlabel("learning rate")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(grid, best) -> str:
    lines = []
    for param in sorted(grid):
        lrs = sorted({lr for width in grid[param] for lr in grid[param][width]})
        columns = ["d_model", *(f"lr 2^{math.log2(lr):.0f}" for lr in lrs), "best lr"]
        rows = []
        for width in sorted(grid[param]):
            row = {"d_model": width, "best lr": best[param].get(str(width), "none")}
            for lr, column in zip(lrs, columns[1:]):
                losses = grid[param][width].get(lr)
                row[column] = f"{np.mean(losses):.3f}" if losses else ""
            rows.append(row)
        chosen = list(best[param].values())
        spread = f"x{max(chosen) / min(chosen):g}" if chosen else "none"
        lines.append(f"### {param}: final training loss (mean over seeds); best lr spread "
                     f"over widths {spread}\n\n{table_markdown(columns, rows)}")
    return "\n".join(lines)


def analyze_lr_transfer(sweep_dir: str | Path, out_dir: str | Path | None = None
                        ) -> LrTransferAnalysis:
    sweep_dir = Path(sweep_dir)
    runs = load_sweep(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = loss_grid(runs)
    best = best_lrs(grid)
    result = LrTransferAnalysis(
        figure=out_dir / "lr_transfer.png", best_json=out_dir / "lr_transfer.json",
        table_md=out_dir / "lr_transfer.md", markdown=markdown(grid, best), best=best,
        not_completed=[f"{run.name}: {run.status} ({run.error})" for run in runs
                       if not run.completed])
    plot(grid, best, result.figure)
    result.best_json.write_text(json.dumps(best, indent=2) + "\n")
    result.table_md.write_text(result.markdown)
    return result
