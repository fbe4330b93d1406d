"""Rebuilding a run for ``elab-retro`` and measuring one checkpoint with the online monitors'
functions (``score_probe``, ``topology_points`` and the pure functions of ``trainer.measures``).

The model and data come from ``RUN_DIR/.hydra/config.yaml``, built as ``elab-train`` builds
them; the monitors' settings from the run's callback config, so a retro value at a step is the
online value at that step (the probes exactly; topology with the expensive metrics at every
checkpoint).
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
    topology: dict[str, Any]
    llc: Any
    llc_batches: list | None = None


def load_setup(run_dir: Path, device: str | None = None) -> Setup:
    """Rebuild data and model from ``run_dir/.hydra/config.yaml`` (the way ``trainer.train`` does)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    from trainer.monitors.llc import LLCMonitor
    from trainer.run_config import load_run_config
    from trainer.train import _build

    cfg = load_run_config(run_dir)  # every _target_ in it checked: a run dir never runs code
    if not all(isinstance(cfg.get(key), DictConfig) for key in ("data", "model")):
        raise ConfigError(f"{run_dir / '.hydra' / 'config.yaml'} is not a run config of elab-train "
                          "(no data and model groups): an edited or foreign file")
    curriculum = _build(cfg.curriculum) if cfg.get("curriculum") else None
    sampler = _build(cfg.data, curriculum=curriculum)
    sampler.prepare()
    model = _build(cfg.model, vocab_size=sampler.vocab_size, max_seq_len=sampler.seq_len,
                   item_dim=sampler.item_dim)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    callbacks = cfg.get("callbacks") or {}
    probes_cfg, topology_cfg = callbacks.get("probes") or {}, callbacks.get("topology") or {}
    llc_cfg = callbacks.get("llc")
    llc = instantiate(llc_cfg) if llc_cfg and "_target_" in llc_cfg else LLCMonitor()
    return Setup(
        cfg=cfg, sampler=sampler, model=model.to(device).eval(), device=device,
        probes=[p for p in sampler.probe_sets() if p.meta.get("meaningful", True)],
        probe_rows=int(probes_cfg.get("max_rows", 256)),
        topology={"n_points": int(topology_cfg.get("n_points", 128)), "k": int(topology_cfg.get("k", 10)),
                  "h1_points": int(topology_cfg.get("h1_points", 64))},
        llc=llc,
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
            values.update(estimate.metrics())
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}, problems


def _topology(setup: Setup, problems: list[str]) -> dict[str, float]:
    """Every topology metric, the expensive ones (kNN graph, H0, H1) included, at every layer, on
    the points the online monitor uses (``topology_points``)."""
    import torch

    from trainer.measures import topology
    from trainer.monitors.common import forward, to_device
    from trainer.monitors.topology_probe import FALLBACK_STEP, _param_group, topology_points

    n_points = setup.topology["n_points"]
    groups = topology_points(setup.probes, n_points, lambda rows: setup.sampler.batch(FALLBACK_STEP, rows))
    clouds, attention = None, None
    for group in groups:
        out = forward(setup.model, to_device(group.batch, setup.device), return_hidden=True, return_attn=True)
        rows, positions = torch.as_tensor(group.rows), torch.as_tensor(group.positions)
        points = [h[rows.to(h.device), positions.to(h.device)].double().cpu().numpy() for h in out["hidden"]]
        clouds = points if clouds is None else [np.concatenate(p) for p in zip(clouds, points)]
        if out["attn"] is not None and (attention is None or len(group.batch["input_ids"]) > len(attention[1])):
            attention = (out["attn"], group.batch["input_ids"])
    labels = np.concatenate([g.batch["domain"][g.rows, g.positions] for g in groups])
    labels = labels if (labels >= 0).all() and len(np.unique(labels)) > 1 else None
    values: dict[str, float] = {}

    def add(prefix: str, compute) -> None:
        try:
            values.update({f"{prefix}/{k}": v for k, v in compute().items()})
        except ValueError as exc:  # undefined on this model (a degenerate cloud): not a number
            problems.append(f"{prefix}: {exc}")

    for i, X in enumerate(clouds):
        add("topo/emb" if i == 0 else f"topo/layer{i}", lambda X=X: topology.point_cloud_metrics(
            X, labels, k=setup.topology["k"], h1=True, h1_points=setup.topology["h1_points"],
            rng=np.random.default_rng(0)))
    for i, attn in enumerate(attention[0] if attention else []):
        add(f"topo/attn{i}", lambda attn=attn: topology.attention_metrics(attn.float().cpu(), attention[1]))
    add("topo/weights", lambda: topology.weight_metrics(dict(setup.model.named_parameters()), None, _param_group))
    return values
