"""The trainer's knobs in one table: each key's type, allowed range and one line of help.

``trainer.config.validate`` checks every knob here (type, then range) and reports all problems at
once, before anything is built; the defaults live in ``conf/`` and are read from the composed
config, so they are never written twice. ``python -m trainer.schema`` prints the reference as a
markdown table (the README's knob reference). The model's own keys are checked by
``trainer.models.GPTConfig`` and the data's by each sampler; the sizes listed here are the ones
that must hold before the data is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.models.mup import PARAMETRIZATIONS

NULL = type(None)


@dataclass(frozen=True)
class Knob:
    key: str  # dotted; "callbacks.<Class>.<key>" applies to every callbacks entry of that class
    types: tuple[type, ...]
    rule: str  # the allowed values, in words (also the error message)
    ok: Callable[[Any], bool] | None
    help: str


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos(v: Any) -> bool:
    return _num(v) and v > 0


def _nonneg(v: Any) -> bool:
    return _num(v) and v >= 0


def _betas(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v)


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v is None or v >= n


KNOBS: tuple[Knob, ...] = (
    Knob("task_name", (str,), "a name", None, "names the run in logs"),
    Knob("seed", (int,), "an integer", None, "seeds the data, the initialisation and Lightning"),
    Knob("budget.tokens", (int,), "an integer > 0", _pos,
         "run length in tokens: steps = budget.tokens // (batch.global_size x data seq_len)"),
    Knob("batch.global_size", (int,), "an integer > 0", _pos,
         "sequences per optimizer step, over all devices"),
    Knob("optim.lr", (float, int), "a finite number > 0", _pos, "peak learning rate (AdamW)"),
    Knob("optim.weight_decay", (float, int), "a finite number >= 0", _nonneg, "AdamW weight decay"),
    Knob("optim.betas", (list,), "two numbers in [0, 1), e.g. [0.9, 0.95]", _betas, "AdamW betas"),
    Knob("optim.warmup_steps", (int, NULL), "null, or an integer >= 0 shorter than the run",
         lambda v: v is None or _nonneg(v),
         "linear warmup steps before the cosine decay (null: 50, or 10% of a shorter run)"),
    Knob("optim.min_lr_ratio", (float, int), "a number in [0, 1]", lambda v: _num(v) and 0 <= v <= 1,
         "the cosine decays to lr x min_lr_ratio at the end of the budget"),
    Knob("optim.grad_clip", (float, int, NULL), "a finite number > 0, or null",
         lambda v: v is None or _pos(v), "gradient norm clipping (null: off)"),
    Knob("compile", (bool,), "true or false", None, "torch.compile the model (worth it on GPU)"),
    Knob("threads", (int, NULL), "an integer > 0, or null", lambda v: v is None or v > 0,
         "intra-op threads per process (null: torch's default)"),
    Knob("malloc", (str,), "'reuse' or 'system'", lambda v: v in ("reuse", "system"),
         "reuse: the process keeps freed memory (glibc; the default model ~20% faster on CPU); system: libc defaults"),
    Knob("num_workers", (int,), "an integer >= 0", _nonneg, "DataLoader workers"),
    Knob("log_every_n_steps", (int,), "an integer > 0", _pos, "train/ series logging period"),
    Knob("checkpoint_every_n_steps", (int,), "an integer > 0", _pos,
         "checkpoints/last.ckpt period (the last step is always saved)"),
    Knob("ckpt_path", (str, NULL), "null, 'last' or a checkpoint path", None,
         "null: fresh run; last: resume this run dir (in a multirun: or start fresh); a path"),
    Knob("optimized_metric", (str, NULL), "null or a series this run logs", None,
         "the summary metric returned to sweepers (Optuna)"),
    # Sizes the model needs before the data exists (GPTConfig checks the rest of model.*).
    *(Knob(f"model.{k}", (int,), "an integer >= 1", _at_least(1), help_)
      for k, help_ in (("n_layer", "transformer blocks"), ("n_head", "attention heads per block"),
                       ("d_model", "residual width"), ("n_loops", "passes through the blocks"))),
    Knob("model.parametrization", (str,), f"one of {list(PARAMETRIZATIONS)}",
         lambda v: v in PARAMETRIZATIONS,
         "mup: the best lr holds over d_model, multipliers from base_width (trainer/models/mup.py)"),
    Knob("model.base_width", (int, NULL), "an integer >= 1, or null", _at_least(1),
         "the d_model at which mup equals sp"),
    # The monitors: a zero period would crash at step 0, a zero size "complete" with no metrics.
    Knob("callbacks.CapabilityProbes.every_n_steps", (int,), "an integer >= 1", _at_least(1),
         "probe/<set>/<metric> period"),
    Knob("callbacks.CapabilityProbes.max_rows", (int,), "an integer >= 1", _at_least(1),
         "rows scored per probe set"),
    Knob("callbacks.TopologyProbe.every_n_steps", (int,), "an integer >= 1", _at_least(1),
         "topo/ series period"),
    Knob("callbacks.TopologyProbe.n_points", (int,), "an integer >= 2", _at_least(2),
         "points of the probe cloud"),
    Knob("callbacks.TopologyProbe.k", (int,), "an integer >= 1, below n_points", _at_least(1),
         "neighbours of the kNN graph"),
    Knob("callbacks.TopologyProbe.h1_every_n_steps", (int, NULL), "an integer >= 1, or null",
         _at_least(1), "ripser H1 period (null: off)"),
    Knob("callbacks.TopologyProbe.h1_points", (int,), "an integer >= 2", _at_least(2),
         "points for H1"),
    Knob("callbacks.DataMeter.every_n_steps", (int,), "an integer >= 1", _at_least(1),
         "data/ and curriculum/ series period"),
    Knob("callbacks.DataMeter.window", (int,), "an integer >= 1", _at_least(1),
         "batches measured per point"),
    Knob("callbacks.JumpWatch.min_history", (int,), "an integer >= 1", _at_least(1),
         "evaluations of a series before a jump can be flagged"),
)
# Groups whose every key is a knob here (plus these): a typo inside them is an error too.
CLOSED_GROUPS = ("budget", "batch", "optim")


def _class(node: Any) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(node, DictConfig) else ""


def _places(cfg: DictConfig, knob: Knob) -> list[tuple[str, Any]]:
    """(dotted key, value) for each place in ``cfg`` the knob applies to."""
    parts = knob.key.split(".")
    if parts[0] == "callbacks":
        found = []
        for name, node in (cfg.get("callbacks") or {}).items():
            if _class(node) == parts[1] and parts[2] in node:
                found.append((f"callbacks.{name}.{parts[2]}", node.get(parts[2])))
        return found
    value = OmegaConf.select(cfg, knob.key, default="<missing>")
    if parts[0] == "model":  # sizes a model config may leave to its class's defaults
        return [] if value == "<missing>" else [(knob.key, value)]
    return [(knob.key, value)]


def check_knobs(cfg: DictConfig) -> list[str]:
    """Every knob's problems, each naming its key and value."""
    problems = []
    for knob in KNOBS:
        for key, value in _places(cfg, knob):
            if value == "<missing>":
                problems.append(f"{key} is missing (expected {knob.rule})")
                continue
            plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            typed = isinstance(plain, knob.types) and (not isinstance(plain, bool) or bool in knob.types)
            if not typed or (knob.ok is not None and not knob.ok(plain)):
                problems.append(f"{key}={plain!r} must be {knob.rule}")
    for group in CLOSED_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            known = {k.key.split(".", 1)[1] for k in KNOBS if k.key.startswith(group + ".")}
            problems += [f"unknown config key '{group}.{key}'" for key in sorted(set(node) - known)]
    for name, node in (cfg.get("callbacks") or {}).items():
        k, n = (node.get("k"), node.get("n_points")) if _class(node) == "TopologyProbe" else (0, 0)
        if isinstance(k, int) and isinstance(n, int) and n >= 2 and k >= n:
            problems.append(f"callbacks.{name}.k={k} must be smaller than n_points={n}")
    return problems


def reference_markdown(cfg: DictConfig) -> str:
    """The knob reference: key, type, default (from ``cfg``), allowed values, what it does."""
    names = {int: "int", float: "float", str: "str", bool: "bool", list: "list", NULL: "null"}
    lines = ["| key | type | default | allowed | what it sets |", "|---|---|---|---|---|"]
    for knob in KNOBS:
        places = _places(cfg, knob)
        key = places[0][0] if places else knob.key  # the name a user types (callbacks.probes...)
        default = places[0][1] if places and places[0][1] != "<missing>" else "(per model)"
        default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        default = "null" if default is None else default  # as it is written in conf/
        types = " or ".join(dict.fromkeys(names[t] for t in knob.types if t is not int or float
                                          not in knob.types))
        lines.append(f"| `{key}` | {types} | `{default}` | {knob.rule} | {knob.help} |")
    return "\n".join(lines)


def main() -> None:
    """``python -m trainer.schema [overrides...]``: the knob reference of the composed config."""
    import sys

    from hydra import compose, initialize_config_dir

    from trainer.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.output_dir=.", *sys.argv[1:]])
    print(reference_markdown(cfg))


if __name__ == "__main__":
    main()
