"""Building a run from a resolved config: the data, the model and the monitors.

One way, below every entry point: ``elab-train`` builds with it before fitting, ``elab-retro``
rebuilds a run's data and model from its saved config and reads the monitors' settings the same
way, the scripts build what they benchmark with it. Each component is built from its
``_target_`` (Hydra's ``instantiate``), and a component's own validation error, which names its
config key, reaches the user instead of Hydra's wrapper around it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from trainer.schema import callback_defaults


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces a component's own ValueError or TypeError (which
    names the config key) instead of Hydra's wrapper around its repr."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, (ValueError, TypeError)):
            raise exc.__cause__ from None
        raise


def build_data(cfg: DictConfig) -> Any:
    """The sampler of ``cfg.data`` with its curriculum, not yet prepared: constructing it is cheap
    and fixes ``seq_len``; ``prepare()`` builds (or finds) the token store."""
    curriculum = instantiate(cfg.curriculum) if cfg.get("curriculum") else None
    return instantiate(cfg.data, curriculum=curriculum)


def build_model(cfg: DictConfig, sampler: Any) -> Any:
    """The model of ``cfg.model``, sized by the data (vocabulary, window, item vectors)."""
    return instantiate(cfg.model, vocab_size=sampler.vocab_size, max_seq_len=sampler.seq_len,
                       item_dim=sampler.item_dim)


def build_monitors(cfg: DictConfig) -> list:
    """Every ``callbacks`` entry with a ``_target_`` (and the progress bar), in config order; a
    monitor's own refusal (``callbacks.trail.budget_mb=0``) names its key."""
    from hydra.utils import instantiate as hydra_instantiate

    built = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()
             if node is not None and "_target_" in node]
    if cfg.get("progress") and "_target_" in cfg.progress:
        built.append(hydra_instantiate(cfg.progress))
    return built


def monitor_settings(cfg: Any, name: str) -> dict[str, Any]:
    """The settings ``callbacks.<name>`` of ``cfg`` gives its monitor, over the defaults of
    ``conf/callbacks/default.yaml`` (a run whose config predates a knob, or left the monitor
    out, is measured offline with the defaults an online run gets)."""
    node = (cfg.get("callbacks") or {}).get(name) or {}
    saved = {k: v for k, v in dict(node).items() if k not in ("_target_", "dirpath")}
    return {**callback_defaults(name), **saved}
