"""A run's ``.hydra/`` files: written by ``elab-train`` once every check has passed, and read back
(``elab-retro``) only after every ``_target_`` in them has been checked.

A run dir may come from anyone. Its ``config.yaml`` is rebuilt with Hydra's ``instantiate``, which
calls whatever ``_target_`` names (``torch.load`` of a pickle, ``numpy.load`` with
``allow_pickle``, ``os.system``): so a ``_target_`` read from a run dir, at any depth, must be one
the shipped config groups name or a class of the lab's own packages (a function only where conf/
names it).

Hydra would write ``.hydra/`` when the job starts, before the task has checked anything, so a
refused command would already have replaced a run's config (``hydra.output_subdir: null`` in
``conf/hydra/default.yaml``); :func:`write_hydra_files` writes the same three files instead.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainer.errors import CONF_DIR, ConfigError
from trainer.run_dir import RunDir

OWN_PACKAGES = ("trainer.", "data_mixers.", "hydra_plugins.elab_ray_launcher.")
HYDRA_DIR, CONFIG_FILE = ".hydra", "config.yaml"
_MAX_DEPTH = 64  # deeper than any shipped config by far; a crafted self-reference stops here
# Classes that moved (the monitors' layout of issue 20): a run dir saved before names them by the
# old path, and is read with the new one.
MOVED = {"trainer.llc_monitor.LLCMonitor": "trainer.monitors.llc.LLCMonitor",
         "trainer.trail.CheckpointTrail": "trainer.monitors.trail.CheckpointTrail",
         "trainer.callbacks.RunCheckpoint": "trainer.monitors.backbone.RunCheckpoint"}


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` the config groups under ``conf/`` name (``lightning.Trainer`` among them)."""
    import yaml

    found: set[str] = set()

    def collect(tree: Any) -> None:
        if isinstance(tree, dict):
            for key, value in tree.items():
                if key == "_target_" and isinstance(value, str):
                    found.add(value)
                collect(value)
        elif isinstance(tree, list):
            for value in tree:
                collect(value)

    for path in Path(CONF_DIR).rglob("*.yaml"):
        collect(yaml.safe_load(path.read_text()))
    return frozenset(found)


def _own(target: str) -> bool:
    """A public class defined in the lab's own packages. A path through a module's
    imports (``trainer.train.os.system``) locates an object defined elsewhere, and is refused."""
    import inspect

    from hydra.utils import get_object

    parts = target.split(".")
    if not target.startswith(OWN_PACKAGES) or not all(p.isidentifier() and not p.startswith("_")
                                                      for p in parts):
        return False
    try:
        obj = get_object(target)
    except Exception:  # not importable: refused below as not ours
        return False
    module = getattr(obj, "__module__", None) or ""
    # Classes only: the lab's functions include writers (run_dir.write_metrics_csv(path, ...)) that a
    # crafted config could point anywhere; every function a config may name is in conf/.
    return inspect.isclass(obj) and f"{module}.".startswith(OWN_PACKAGES)


def _targets(node: Any, where: str, depth: int = 0):
    """(dotted key, value) of every ``_target_`` in ``node``, interpolations resolved as
    ``instantiate`` would resolve them (an ``${oc.create:...}`` node included)."""
    if depth > _MAX_DEPTH:
        yield where, f"<nested deeper than {_MAX_DEPTH}>"
        return
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{where}.{key}" if where else str(key)
        try:
            value = node[key]
        except Exception:  # an interpolation that cannot resolve cannot be built either
            if key == "_target_":
                yield name, "<unresolvable>"
            continue
        if key == "_target_":
            yield name, value
        elif isinstance(value, (DictConfig, ListConfig)):
            yield from _targets(value, name, depth + 1)


def check_targets(cfg: DictConfig, source: Path) -> None:
    """Refuse (ConfigError) a config read from ``source`` that names any ``_target_`` other than
    the shipped ones and the lab's own classes, before anything is instantiated."""
    allowed = shipped_targets()
    for where, target in _targets(cfg, ""):
        if not (isinstance(target, str) and (target in allowed or _own(target))):
            raise ConfigError(
                f"{source}: {where}={target!r} is not a component of the lab (conf/ or the "
                f"packages {', '.join(p.rstrip('.') for p in OWN_PACKAGES)}); a run dir's config "
                "is never allowed to run other code, so nothing was built. If you edited this "
                "file, restore the run's own config; otherwise do not trust this run dir"
            )


def load_run_config(run_dir: Path) -> DictConfig:
    """``run_dir/.hydra/config.yaml``, every ``_target_`` in it checked (:func:`check_targets`)."""
    path = Path(run_dir) / HYDRA_DIR / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"run_dir={str(run_dir)!r}: no .hydra/config.yaml (not a run dir of elab-train)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # not YAML, or not a mapping
        raise ConfigError(f"{path}: cannot read it as a config: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: holds a {type(cfg).__name__}, not a config mapping")
    _follow_moves(cfg)
    check_targets(cfg, path)
    return cfg


def _follow_moves(node: Any, depth: int = 0) -> None:
    """Old ``_target_`` paths of moved classes (:data:`MOVED`) replaced by their new ones."""
    if depth > _MAX_DEPTH or not isinstance(node, (DictConfig, ListConfig)):
        return
    if isinstance(node, DictConfig) and "_target_" in node:
        raw = node._get_node("_target_")._value()
        if isinstance(raw, str) and raw in MOVED:
            node._target_ = MOVED[raw]
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            _follow_moves(child, depth + 1)


def write_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """``.hydra/config.yaml`` (and, under Hydra, ``hydra.yaml`` and ``overrides.yaml``, as Hydra
    itself writes them), each replaced atomically; called once every check has passed."""
    from hydra.core.hydra_config import HydraConfig

    run = RunDir(run_dir)
    run.hydra_dir.mkdir(parents=True, exist_ok=True)
    run.write_text(f"{HYDRA_DIR}/{CONFIG_FILE}", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.instance().cfg
        run.write_text(f"{HYDRA_DIR}/hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
        run.write_text(f"{HYDRA_DIR}/overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
