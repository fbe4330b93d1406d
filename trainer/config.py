"""Validate the composed config before anything trains: every problem at once, each naming its key."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError  # its home is the leaf; still importable from here
from trainer.run_dir import RunDir
from trainer.schema import KNOBS, check_knobs

# Top-level keys: the trainer's knobs (trainer.schema) and the groups composed from conf/.
TOP_LEVEL = {knob.key.split(".")[0] for knob in KNOBS if not knob.key.startswith(("model.", "callbacks."))} | {
    "paths", "model", "data", "curriculum", "callbacks", "pl", "logger", "progress", "tags",
}
GROUPS_WITH_TARGET = ("model", "data")


def validate(cfg: DictConfig) -> None:
    """Every knob of ``trainer.schema`` (type and range), unknown keys, the components' keys
    against what they take, and ``optimized_metric`` against the series the run logs: all
    problems at once, each naming its key."""
    problems: list[str] = [f"unknown config key '{key}'" for key in sorted(set(cfg.keys()) - TOP_LEVEL)]
    problems += check_knobs(cfg)
    problems += _check_targets(cfg)
    problems += _check_metric_prefix(cfg)
    for group in GROUPS_WITH_TARGET:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            problems.append(
                f"{group} must be a config with a _target_ (choose one with {group}=<name>)"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


# Keys Hydra's instantiate consumes itself; never passed to the target.
_HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}


def _target_nodes(cfg: DictConfig):
    """(config key, node) of every component built from a ``_target_``."""
    for group in ("model", "data", "curriculum", "progress"):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" in node:
            yield group, node
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                yield f"{group}.{name}", node


def _check_targets(cfg: DictConfig) -> list[str]:
    """Keys the built component does not take (``+data.bogus=1``), found from its signature
    instead of a TypeError deep inside instantiate. Targets taking ``**kwargs`` check themselves."""
    from hydra.utils import get_object

    problems = []
    for where, node in _target_nodes(cfg):
        try:
            target = get_object(node._target_)
        except Exception as exc:  # an ImportError or a typo in the path
            problems.append(f"{where}._target_={node._target_!r} cannot be imported: {exc}")
            continue
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for key in sorted(set(node) - _HYDRA_KEYS - set(params)):
            takes = ", ".join(k for k in params if k != "self")
            problems.append(f"unknown config key '{where}.{key}' ({node._target_} takes: {takes})")
    return problems


# The series a run logs, by prefix, and the callback (callbacks.<name>) that logs each; train/
# series come from the module itself.
TRAIN_SERIES = ("train/loss", "train/lr", "train/tokens_seen", "train/tokens_per_s")
SERIES_SOURCE = {
    "probe/": "CapabilityProbes", "topo/": "TopologyProbe", "data/": "DataMeter",
    "curriculum/": "DataMeter",
}


def _check_metric_prefix(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` must be a series this run logs: known before training, not after it."""
    metric = cfg.get("optimized_metric")
    if not isinstance(metric, str):
        return []
    if metric in TRAIN_SERIES:
        return []
    logging_classes = {
        str(node._target_).rsplit(".", 1)[-1]
        for where, node in _target_nodes(cfg) if where.startswith("callbacks.")
    }
    for prefix, source in SERIES_SOURCE.items():
        if metric.startswith(prefix) and len(metric) > len(prefix):
            if source in logging_classes:
                return []
            return [f"optimized_metric={metric!r}: {prefix}... series come from {source}, which "
                    f"this run does not have (callbacks)"]
    return [f"optimized_metric={metric!r} is not a series this run logs: use one of "
            f"{', '.join(TRAIN_SERIES)} or a probe/<set>/<metric>, topo/..., data/... or "
            f"curriculum/... series (see summary.json 'metrics' of a run)"]


def check_metric_logged(metric: str | None, probe_sets: list[str]) -> None:
    """The probe set named in ``optimized_metric=probe/<set>/...`` must be one the data offers."""
    if metric and metric.startswith("probe/") and metric.split("/")[1] not in probe_sets:
        raise ConfigError(f"optimized_metric={metric!r}: this data has no probe set "
                          f"{metric.split('/')[1]!r} (it has: {', '.join(probe_sets)})")


def check_probes_fit(cfg: DictConfig, sampler: Any) -> None:
    """With the probe callbacks on, the probes must build (a sampler that cannot build them
    raises, naming its key) and every question must fit in a window: a question cut from its
    start loses its subject, and its series would measure nothing."""
    probing = {str(node._target_).rsplit(".", 1)[-1] for where, node in _target_nodes(cfg)
               if where.startswith("callbacks.")} & {"CapabilityProbes", "TopologyProbe"}
    if not probing:
        return
    seq_len = sampler.seq_len
    cut = {p.name: p.meta["window_needed"] for p in sampler.probe_sets()
           if p.meta.get("window_needed", 0) > seq_len}
    if cut:
        raise ConfigError(
            f"data.seq_len={seq_len} is too short for the questions of the probe sets "
            f"{', '.join(cut)} (up to {max(cut.values())} tokens): they would be cut and their "
            f"probe/ series measure nothing; use data.seq_len >= {max(cut.values())}, or "
            "callbacks=minimal (no probes)")


# The parts of the config a checkpoint's weights and data position depend on: a resume with any
# of them changed would silently continue another experiment (the seed picks the data each step).
IDENTITY_KEYS = ("model", "data", "curriculum", "batch", "optim", "seed")


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    plain = to_plain(cfg)
    return {key: plain.get(key) for key in IDENTITY_KEYS}


def steps_from_budget(budget_tokens: int, global_batch: int, seq_len: int) -> int:
    """The run length: whole optimizer steps that fit in the token budget."""
    tokens_per_step = global_batch * seq_len
    steps = budget_tokens // tokens_per_step
    if steps < 1:
        raise ConfigError(
            f"budget.tokens={budget_tokens} is smaller than one step "
            f"(batch.global_size={global_batch} x seq_len={seq_len} = {tokens_per_step} tokens)"
        )
    return steps


DEFAULT_WARMUP_STEPS = 50


def warmup_steps_for(warmup_steps: int | None, total_steps: int, length_from: str) -> int:
    """``optim.warmup_steps`` for a run of ``total_steps``: null means the default, 50 steps or
    10% of a shorter run (smoke tests, pilots); a number must be shorter than the run.
    ``length_from`` says where the run length came from, for the error."""
    if warmup_steps is None:
        return min(DEFAULT_WARMUP_STEPS, total_steps // 10)
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"optim.warmup_steps={warmup_steps} is not shorter than the run "
            f"({total_steps} steps from {length_from})"
        )
    return warmup_steps


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path, multirun: bool = False) -> Path | None:
    """``null``: a fresh run (refused if the run dir already holds a checkpoint, which it would
    overwrite); ``last``: this run dir's last checkpoint; else a path that must exist. In a
    multirun, ``last`` with no checkpoint yet is a fresh start: re-running a sweep with
    ``ckpt_path=last`` resumes the interrupted jobs and starts the ones never started."""
    last = RunDir(run_dir).last_checkpoint
    if ckpt_path is None:
        if last.exists():
            raise ConfigError(
                f"{run_dir} already holds {last.name}: pass ckpt_path=last to resume it, "
                f"or choose another hydra.run.dir for a fresh run"
            )
        return None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if ckpt_path == "last" and multirun and not path.exists():
        return None
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return path


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
