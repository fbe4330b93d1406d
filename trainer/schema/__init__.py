"""Every knob in one table: each key's type, allowed values and one line of help.

The rows live in :mod:`trainer.schema.run_knobs` (the run, the model, Lightning, loggers),
:mod:`trainer.schema.data_knobs` (samplers, sources, curricula) and
:mod:`trainer.schema.monitor_knobs` (``callbacks.*``). Defaults are written once, in ``conf/``, and
read from the composed config; a knob no option of ``conf/`` sets keeps its class's default.

``trainer.config.validate`` checks every knob (type, then range) and reports all problems at once,
before anything is built; the monitors check their settings through :func:`check_settings`.
``python -m trainer.schema`` prints the reference of every knob of every config group as a
markdown table (the README's knob reference, which a test keeps equal to it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import CONF_DIR, ConfigError
from trainer.schema.data_knobs import CURRICULUM_KNOBS, DATA_KNOBS
from trainer.schema.knob import Knob
from trainer.schema.monitor_knobs import MONITOR_KNOBS
from trainer.schema.run_knobs import MODEL_KNOBS, PL_KNOBS, RUN_KNOBS

KNOBS: tuple[Knob, ...] = (*RUN_KNOBS, *MODEL_KNOBS, *PL_KNOBS, *DATA_KNOBS, *CURRICULUM_KNOBS,
                           *MONITOR_KNOBS)
# Groups whose every key is a knob here (plus these): a typo inside them is an error too.
CLOSED_GROUPS = ("budget", "batch", "optim", "transitions")
# Groups holding several named components (callbacks.<name>), each scoped by its class.
COLLECTIONS = ("callbacks", "logger")
# Groups composed from conf/<group>/<option>.yaml: the reference lists the knobs of every option.
GROUPS = ("model", "data", "curriculum", "callbacks", "logger", "progress", "pl", "experiment",
          "debug")
_MISSING = "<missing>"


def class_name(node: Any) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(node, DictConfig) else ""


def _walk(node: Any, parts: list[str], path: list[str]) -> Iterator[tuple[str, Any]]:
    """(dotted config key, value) of each place ``parts`` (a knob's key) names under ``node``."""
    if not parts:
        yield ".".join(path), node
        return
    if not isinstance(node, DictConfig):
        return
    part, rest = parts[0], parts[1:]
    if path and path[-1] in COLLECTIONS and len(path) == 1:
        for name, child in node.items():
            if class_name(child) == part:
                yield from _walk(child, rest, [*path, name])
    elif part in node:
        yield from _walk(node[part], rest, [*path, part])
    elif part == class_name(node) or part == node.get("kind"):
        yield from _walk(node, rest, path)


def places(cfg: DictConfig, knob: Knob) -> list[tuple[str, Any]]:
    """(dotted key, value) for each place in ``cfg`` the knob applies to; a top-level knob that
    is absent is reported as missing, a component's is left to its class."""
    found = [(key, _plain(value)) for key, value in _walk(cfg, knob.key.split("."), [])]
    scoped = knob.key.split(".")[0] in (*GROUPS, "paths")
    return found or ([] if scoped else [(knob.key, _MISSING)])


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _problem(knob: Knob, key: str, value: Any) -> str | None:
    typed = isinstance(value, knob.types) and (not isinstance(value, bool) or bool in knob.types)
    if not typed or (knob.ok is not None and not knob.ok(value)):
        return f"{key}={value!r} must be {knob.rule}"
    return None


def check_knobs(cfg: DictConfig) -> list[str]:
    """Every knob's problems, each naming its key and value."""
    problems = []
    for knob in KNOBS:
        for key, value in places(cfg, knob):
            if value == _MISSING:
                problems.append(f"{key} is missing (expected {knob.rule})")
            elif (problem := _problem(knob, key, value)) is not None:
                problems.append(problem)
    for group in CLOSED_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            known = {k.key.split(".", 1)[1] for k in KNOBS if k.key.startswith(group + ".")}
            problems += [f"unknown config key '{group}.{key}'" for key in sorted(set(node) - known)]
    for name, node in (cfg.get("callbacks") or {}).items():
        k, n = (node.get("k"), node.get("n_points")) if class_name(node) == "TopologyProbe" else (0, 0)
        if isinstance(k, int) and isinstance(n, int) and n >= 2 and k >= n:
            problems.append(f"callbacks.{name}.k={k} must be smaller than n_points={n}")
    return problems


def check_settings(scope: str, where: str, settings: Mapping[str, Any]) -> None:
    """A component's own check: each of ``settings`` against its knob ``<scope>.<key>``, named
    ``<where>.<key>`` in the error (``check_settings("callbacks.CheckpointTrail",
    "callbacks.trail", {...})``)."""
    problems = [problem for key, value in settings.items()
                for knob in KNOBS if knob.key == f"{scope}.{key}"
                if (problem := _problem(knob, f"{where}.{key}", value)) is not None]
    if problems:
        raise ConfigError("; ".join(problems))


def callback_defaults(name: str) -> dict[str, Any]:
    """The settings of ``callbacks.<name>`` in ``conf/callbacks/default.yaml``, the home of the
    monitors' defaults (for tools that build a monitor outside a run: scripts, tests, old run
    dirs whose config predates a knob). Keys taken from other knobs (``${...}``) are left out; a
    monitor the default config does not run (the LLC) has none here: its class's are its own."""
    node = OmegaConf.load(Path(CONF_DIR) / "callbacks" / "default.yaml").get(name)
    raw = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    return {k: v for k, v in raw.items()
            if k != "_target_" and not (isinstance(v, str) and "${" in v)}
