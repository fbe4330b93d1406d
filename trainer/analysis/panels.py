"""Which panels ``elab-plot`` draws by default, and how their axes are named.

The compact default answers "what emerged, when, and what moved with it": the capability series
(accuracies, each beside its continuous twin, the answer log-probability), the loss, and the series
that led or coincided with a capability jump (``lead_lag``), grouped by metric, at most
:data:`MAX_PANELS`. ``elab-plot --all`` draws every series instead (:func:`all_panels`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from trainer.analysis.runs import Run

MAX_PANELS = 8
Y_LABELS = {"acc": "accuracy", "logprob": "log p(answer)", "loss": "loss",
            "icl_score": "late - early loss", "entropy": "attention entropy (nats)",
            "prefix_match": "induction score", "eff_rank": "effective rank"}


def all_panels(series_names: Iterable[str]) -> list[str]:
    """``--all``: loss, every probe, one panel per topology metric with all layers overlaid
    (layers are compared, metrics are not), and every data statistic."""
    names = sorted(series_names)
    topology_metrics = sorted({n.rsplit("/", 1)[-1] for n in names if n.startswith("topo/")})
    return (
        [n for n in names if n == "train/loss"]
        + [n for n in names if n.startswith("probe/")]
        + [f"topo/*/{m}" for m in topology_metrics]
        + [n for n in names if n.startswith("data/")]
    )


def compact_panels(run: Run) -> list[tuple[str, list[str]]]:
    """``(title, series)`` per panel of the default figure (see the module docstring)."""
    from trainer.measures.leadlag import lead_lag

    names = sorted(run.series)
    capability = [n for n in names if n.startswith("probe/") and n.endswith(("/acc", "/logprob"))]
    if not capability:  # text probes without answers: their losses and in-context scores
        capability = [n for n in names if n.startswith("probe/")]
    # Each accuracy beside its twin: probe/x/acc, probe/x/logprob, probe/y/acc, ...
    capability.sort(key=lambda n: (n.rsplit("/", 1)[0], not n.endswith("/acc")))
    panels = [(n, [n]) for n in capability]
    panels += [(n, [n]) for n in names if n == "train/loss"]
    movers: dict[str, list[str]] = {}
    for entry in lead_lag(e for e in run.events if "onset_step" in e):
        for other in (*entry.get("before", []), *entry.get("same", [])):
            if other["series"] in run.series:
                group = _group(other["series"])
                if other["series"] not in movers.setdefault(group, []):
                    movers[group].append(other["series"])
    panels += [(group, sorted(series)) for group, series in movers.items()]
    return panels[:MAX_PANELS]


def pattern_panels(names: Iterable[str], patterns: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``--series`` (and ``--all``): one panel per name or glob pattern, its matches overlaid."""
    names = sorted(names)
    return [(pattern, fnmatch.filter(names, pattern)) for pattern in patterns]


def _group(series: str) -> str:
    parts = series.split("/")
    return f"{parts[0]}/*/{parts[-1]}" if len(parts) > 2 else series


def y_label(title: str) -> str:
    metric = title.rsplit("/", 1)[-1]
    return Y_LABELS.get(metric, metric.replace("_", " "))
