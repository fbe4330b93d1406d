"""The knob reference: every knob of every config group with its default as ``conf/`` writes it.

Composes the default config and each option of each group; a knob no group option sets (one only
an experiment or a debug overlay uses) shows its class's default.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import CONF_DIR
from trainer.schema import COLLECTIONS, GROUPS, KNOBS, class_name, places
from trainer.schema.knob import NULL, Knob

# Overlays set values for a purpose; they are not where a default lives.
OVERLAYS = ("experiment", "debug")
_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict",
               NULL: "null"}


def compose_every_option(overrides: list[str] | None = None) -> list[tuple[str, DictConfig]]:
    """(label, config): the default config ("") and one per option of each group."""
    from hydra import compose, initialize_config_dir

    base = ["paths.output_dir=.", *(overrides or [])]
    configs = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        configs.append(("", compose(config_name="train", overrides=base)))
        for group in GROUPS:
            for option in sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")):
                label = f"{group}={option}"
                configs.append((label, compose(config_name="train", overrides=[*base, label])))
    return configs


def _targets(configs: list[tuple[str, DictConfig]]) -> dict[str, str]:
    """Class name -> ``_target_`` of every component the configs build."""
    found = {}
    for _, cfg in configs:
        nodes = [cfg.get(g) for g in ("model", "data", "curriculum", "progress")]
        nodes += [n for g in COLLECTIONS for n in (cfg.get(g) or {}).values()]
        for node in nodes:
            if class_name(node):
                found.setdefault(class_name(node), str(node._target_))
    return found


def _class_default(knob: Knob, targets: dict[str, str]) -> Any:
    from hydra.utils import get_object

    parts = knob.key.split(".")
    target = next((targets[p] for p in parts if p in targets), None)
    if target is None:
        return "(none)"
    parameter = inspect.signature(get_object(target)).parameters.get(parts[-1])
    return "(none)" if parameter is None else parameter.default


def _shown(value: Any) -> str:
    value = "null" if value is None else list(value) if isinstance(value, tuple) else value
    return f"`{value}`"


def _row(knob: Knob, configs: list[tuple[str, DictConfig]], targets: dict[str, str]) -> str:
    values: dict[str, list[str]] = {}
    keys = []
    for label, cfg in configs:
        for where, value in places(cfg, knob):
            keys.append(where)
            if label.split("=")[0] not in OVERLAYS:
                values.setdefault(_shown(value), []).append(label)
    key = keys[0] if keys else knob.key
    if not values:  # only an overlay sets it: the default is its class's
        values = {_shown(_class_default(knob, targets)): [""]}
    scope = [p for p in knob.key.split(".") if p not in key.split(".")]
    name = f"`{key}`" + (f" ({', '.join(scope)})" if scope else "")
    if len(values) == 1:
        default = next(iter(values))
    elif max(len(v) for v in values) > 30:  # lists of stages and ramps: read them in conf/
        default = "per option: " + ", ".join(labels[0] for labels in values.values())
    else:
        default = ", ".join(f"{v} ({labels[0] or 'default'})" for v, labels in values.items())
    types = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in knob.types
                                      if t is not int or float not in knob.types))
    return f"| {name} | {types} | {default} | {knob.rule} | {knob.help} |"


def reference_markdown(configs: list[tuple[str, DictConfig]]) -> str:
    """The knob reference: key (scoped by class or source kind where several share a name),
    type, default, allowed values, what it sets."""
    targets = _targets(configs)
    lines = ["| key | type | default | allowed | what it sets |", "|---|---|---|---|---|"]
    lines += [_row(knob, configs, targets) for knob in KNOBS]
    return "\n".join(lines)
