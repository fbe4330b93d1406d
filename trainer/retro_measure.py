"""Rebuilding a run for ``elab-retro`` and measuring one checkpoint with the online monitors'
functions (``score_probe``, ``topology_points``, ``measure_topology``, ``weight_values``, the
LLC monitor's ``estimate``).

The model and data come from ``RUN_DIR/.hydra/config.yaml``, built by :mod:`trainer.build` as
``elab-train`` builds them; the monitors' settings from the run's callback config over the
defaults of ``conf/callbacks/default.yaml`` (:func:`trainer.build.monitor_settings`), so a retro
value at a step is the online value at that step (the probes exactly; topology with the expensive
metrics at every checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ConfigError


@dataclass
class Setup:
    """What a run's config rebuilds: the data source, the model (weights loaded per checkpoint),
    and the monitors' settings."""

    cfg: Any
    sampler: Any
    model: Any
    device: Any
    probes: list
    probe_rows: int
    topology: dict[str, Any]  # the topology monitor's settings
    llc: Any
    llc_batches: list | None = None


def load_setup(run_dir: Path, device: str | None = None) -> Setup:
    """Rebuild data and model from ``run_dir/.hydra/config.yaml`` (the way ``trainer.train`` does)."""
    import torch
    from omegaconf import DictConfig

    from trainer.build import build_data, build_model, monitor_settings
    from trainer.monitors.llc import LLCMonitor
    from trainer.run_config import load_run_config

    cfg = load_run_config(run_dir)  # every _target_ in it checked: a run dir never runs code
    if not all(isinstance(cfg.get(key), DictConfig) for key in ("data", "model")):
        raise ConfigError(f"{run_dir / '.hydra' / 'config.yaml'} is not a run config of elab-train "
                          "(no data and model groups): an edited or foreign file")
    sampler = build_data(cfg)
    sampler.prepare()
    model = build_model(cfg, sampler)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Setup(
        cfg=cfg, sampler=sampler, model=model.to(device).eval(), device=device,
        probes=[p for p in sampler.probe_sets() if p.meta.get("meaningful", True)],
        probe_rows=int(monitor_settings(cfg, "probes")["max_rows"]),
        topology=monitor_settings(cfg, "topology"),
        llc=LLCMonitor(**monitor_settings(cfg, "llc")),
    )


def load_weights(setup: Setup, path: Path) -> None:
    from trainer.run_files import load_checkpoint

    checkpoint = load_checkpoint(path, setup.device)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    try:
        setup.model.load_state_dict(state)
    except RuntimeError as exc:  # shapes or names differ: say which file, not a traceback
        raise ConfigError(f"{path} does not fit the model that {path.parent.parent}/.hydra/"
                          f"config.yaml builds (was the model code changed since?): {exc}") from None


def measure(setup: Setup, monitors: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """The chosen monitors on the model as loaded: (series values, problems met)."""
    import torch

    from trainer.monitors import score_probe

    values: dict[str, float] = {}
    problems: list[str] = []
    with torch.no_grad():
        if "probes" in monitors:
            for probe in setup.probes:
                metrics, _ = score_probe(setup.model, probe, setup.device, setup.probe_rows)
                values.update({f"probe/{probe.name}/{k}": v for k, v in metrics.items()})
        if "topology" in monitors:
            values.update(_topology(setup, problems))
    if "llc" in monitors:
        estimate = setup.llc.estimate(setup.model, setup.llc_batches)
        problems += [f"llc: {p}" for p in estimate.problems]
        if not estimate.diverged:
            # Kept with its diagnostics, flagged: an estimate whose chains did not mix (or that
            # came out negative) is no value of the LLC (llc_valid, below).
            values.update(estimate.metrics(), **{"llc/valid": float(not estimate.problems)})
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}, problems


def _topology(setup: Setup, problems: list[str]) -> dict[str, float]:
    """Every topology metric, the expensive ones (kNN graph, H0, H1) included, on the points and
    with the settings of the online monitor, by its own measuring functions."""
    from trainer.monitors.common import forward, to_device
    from trainer.monitors.topology_probe import (
        FALLBACK_STEP,
        measure_topology,
        topology_points,
        weight_values,
    )

    settings = setup.topology
    groups = topology_points(setup.probes, settings["n_points"],
                             lambda rows: setup.sampler.batch(FALLBACK_STEP, rows))
    values, _ = measure_topology(
        setup.model, groups,
        lambda group: forward(setup.model, to_device(group.batch, setup.device), return_hidden=True,
                              return_attn=settings["attention"]),
        k=settings["k"], expensive=True, h1=settings["h1_every_n_steps"] is not None,
        h1_points=settings["h1_points"], report=lambda series, error: problems.append(f"{series}: {error}"))
    if settings["weights"]:
        try:
            values.update(weight_values(dict(setup.model.named_parameters()), None))
        except ValueError as exc:
            problems.append(f"topo/weights: {exc}")
    return values


def llc_valid(row: dict[str, float]) -> bool:
    """Whether the row's LLC estimate passed its diagnostics (rows of older passes, without the
    ``llc/valid`` column, count as valid)."""
    return row.get("llc/valid", 1.0) != 0.0
