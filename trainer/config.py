"""Validate the composed config before anything trains: every problem at once, each naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """The configuration cannot run; raised before training starts."""


# key -> (accepted types, description). ``None`` in the types means null is allowed.
SCHEMA: dict[str, tuple[tuple, str]] = {
    "task_name": ((str,), "a name"),
    "seed": ((int,), "an integer"),
    "budget.tokens": ((int,), "a positive integer (tokens)"),
    "batch.global_size": ((int,), "a positive integer (sequences per optimizer step)"),
    "optim.lr": ((float, int), "a positive number"),
    "optim.weight_decay": ((float, int), "a number >= 0"),
    "optim.warmup_steps": ((int,), "an integer >= 0"),
    "optim.min_lr_ratio": ((float, int), "a number in [0, 1]"),
    "optim.grad_clip": ((float, int, type(None)), "a positive number or null"),
    "compile": ((bool,), "true or false"),
    "threads": ((int, type(None)), "a positive integer or null"),
    "num_workers": ((int,), "an integer >= 0"),
    "log_every_n_steps": ((int,), "a positive integer"),
    "checkpoint_every_n_steps": ((int,), "a positive integer"),
    "ckpt_path": ((str, type(None)), "null, 'last' or a checkpoint path"),
    "optimized_metric": ((str, type(None)), "a metric name or null"),
}
TOP_LEVEL = {key.split(".")[0] for key in SCHEMA} | {
    "paths",
    "model",
    "data",
    "curriculum",
    "callbacks",
    "pl",
    "logger",
    "progress",
    "tags",
}
# Groups whose every key is in SCHEMA (plus these): a typo inside them is an error too.
CLOSED_GROUPS = {"budget": set(), "batch": set(), "optim": {"betas"}}
GROUPS_WITH_TARGET = ("model", "data")


def validate(cfg: DictConfig) -> None:
    problems: list[str] = []
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL)
    problems += [f"unknown config key '{key}'" for key in unknown]
    for group, extra in CLOSED_GROUPS.items():
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            known = {k.split(".", 1)[1] for k in SCHEMA if k.startswith(group + ".")} | extra
            problems += [f"unknown config key '{group}.{key}'" for key in sorted(set(node) - known)]
    for key, (types, what) in SCHEMA.items():
        value = OmegaConf.select(cfg, key, default="<missing>")
        if value == "<missing>":
            problems.append(f"{key} is missing (expected {what})")
        elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(f"{key}={value!r} must be {what}")
    if not problems:
        problems += _check_ranges(cfg)
    for group in GROUPS_WITH_TARGET:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            problems.append(
                f"{group} must be a config with a _target_ (choose one with {group}=<name>)"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def _check_ranges(cfg: DictConfig) -> list[str]:
    checks: list[tuple[bool, str]] = [
        (cfg.budget.tokens > 0, f"budget.tokens={cfg.budget.tokens} must be > 0"),
        (cfg.batch.global_size > 0, f"batch.global_size={cfg.batch.global_size} must be > 0"),
        (cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be > 0"),
        (cfg.optim.weight_decay >= 0, f"optim.weight_decay={cfg.optim.weight_decay} must be >= 0"),
        (cfg.optim.warmup_steps >= 0, f"optim.warmup_steps={cfg.optim.warmup_steps} must be >= 0"),
        (cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
         f"optim.grad_clip={cfg.optim.grad_clip} must be > 0 or null"),
        (
            0 <= cfg.optim.min_lr_ratio <= 1,
            f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must lie in [0, 1]",
        ),
        (cfg.threads is None or cfg.threads > 0, f"threads={cfg.threads} must be > 0 or null"),
        (cfg.num_workers >= 0, f"num_workers={cfg.num_workers} must be >= 0"),
        (cfg.log_every_n_steps > 0, f"log_every_n_steps={cfg.log_every_n_steps} must be > 0"),
        (
            cfg.checkpoint_every_n_steps > 0,
            f"checkpoint_every_n_steps={cfg.checkpoint_every_n_steps} must be > 0",
        ),
    ]
    return [message for ok, message in checks if not ok]


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


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``null``: a fresh run (refused if the run dir already holds a checkpoint, which it would
    overwrite); ``last``: this run dir's last checkpoint; else a path that must exist."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None:
        if last.exists():
            raise ConfigError(
                f"{run_dir} already holds {last.name}: pass ckpt_path=last to resume it, "
                f"or choose another hydra.run.dir for a fresh run"
            )
        return None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return path


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
