"""``retro/retro.png``: what elab-retro draws of its pass (:mod:`trainer.retro`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.retro_measure import llc_valid


def plot_retro(rows: dict[int, dict[str, float]], report: dict[str, Any], out_png: Path) -> None:
    """``retro/retro.png``: each capability that jumped (or every one, if none did), the LLC (mean
    and chain spread), and the series nearest to leading the largest jump, onsets marked."""
    from matplotlib.figure import Figure

    def points(name: str) -> tuple[list[int], list[float]]:
        steps = [r["step"] for _, r in sorted(rows.items()) if name in r]
        return steps, [r[name] for _, r in sorted(rows.items()) if name in r]

    jumps = report["lead_lag"]
    names = sorted({k for r in rows.values() for k in r})
    panels = list(dict.fromkeys(j["series"] for j in jumps)) or [
        n for n in names if n.startswith("probe/") and n.endswith(("/acc", "/loss"))]
    panels += ["llc/mean"] if any("llc/mean" in r for r in rows.values()) else []
    # Sizes compare only within a unit: the largest accuracy jump, else the largest jump.
    main = max(jumps, key=lambda j: (j["series"].endswith("/acc"), abs(j.get("size") or 0.0))) if jumps else None
    if main is not None:
        panels += [item["series"] for item in (main["before"] + main["same"])[:4]
                   if item["series"] not in panels]
    if not panels:
        return
    fig = Figure(figsize=(4.5 * min(3, len(panels)), 3.0 * ((len(panels) + 2) // 3) + 0.5), layout="constrained")
    axes = fig.subplots((len(panels) + 2) // 3, min(3, len(panels)), squeeze=False).ravel()
    onsets: dict[str, list[int]] = {}
    for event in report["retro_events"]:
        onsets.setdefault(event["series"], []).append(event["onset_step"])
    for ax, name in zip(axes, panels):
        steps, values = points(name)
        if name == "llc/mean":
            _draw_llc(ax, [r for _, r in sorted(rows.items()) if name in r])
        else:
            ax.plot(steps, values, marker=".", markersize=4, linewidth=1)
        if main is not None:
            ax.axvline(main["onset_step"], color="C3", linestyle="--", linewidth=1)
        for onset in onsets.get(name, []):
            ax.axvline(onset, color="C2", linestyle=":", linewidth=1.5)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(left=0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    largest = f"; red dashed: onset of {main['series']} at {main['onset_step']}" if main else ""
    fig.suptitle(f"elab-retro: {len(rows)} checkpoints{largest} (the largest jump, with the series "
                 f"nearest to leading it); green dotted: each series' own onsets", fontsize=9)
    fig.savefig(out_png, dpi=100, metadata={"Software": None})


def _draw_llc(ax: Any, rows: list[dict[str, float]]) -> None:
    """The valid LLC estimates as a line with their chains' spread; the steps whose estimate
    failed its diagnostics as marks on the step axis (their numbers are not estimates)."""
    valid = [r for r in rows if llc_valid(r)]
    if valid:
        steps = [r["step"] for r in valid]
        mean = np.asarray([r["llc/mean"] for r in valid])
        std = np.asarray([r.get("llc/std", 0.0) for r in valid])
        ax.plot(steps, mean, marker=".", markersize=4, linewidth=1)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.3)
    invalid = [r["step"] for r in rows if not llc_valid(r)]
    if invalid:
        ax.plot(invalid, [0.03] * len(invalid), "x", color="0.5", markersize=5,
                transform=ax.get_xaxis_transform(), clip_on=False,
                label=f"{len(invalid)} estimate(s) failed diagnostics (not drawn)")
        ax.legend(fontsize=6, loc="upper left")
