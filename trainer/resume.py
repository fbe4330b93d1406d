"""Resume safely: a checkpoint is checked against this run's config and model, and a finished run
is recognised, before anything in the run dir is written.

A checkpoint records the config its weights belong to (``RunSummary.state_dict``: the resolved
model, data, curriculum, batch and optim groups). Resuming with any of them changed, or from
another run's checkpoint, would silently continue a different experiment and then overwrite the
first one's summary; it is refused, naming the differing keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import ConfigError

# Keys that may differ without changing the experiment: where caches live, whether a token store
# is re-hashed on opening (data.verify) and whether its build shows a bar (data.progress).
_IGNORED_LEAVES = {"cache_dir", "verify", "progress"}


def _strip(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in tree.items() if k not in _IGNORED_LEAVES}
    return tree


def identity_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (nested dicts walked)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        diffs = []
        for key in sorted(set(saved) | set(current), key=str):
            diffs += identity_diff(saved.get(key, "<absent>"), current.get(key, "<absent>"),
                                   f"{prefix}{key}.")
        return diffs
    return [] if saved == current else [f"{prefix.rstrip('.')}: checkpoint {saved!r}, now {current!r}"]


def resume_check(ckpt: Path, ckpt_path: str, identity: dict[str, Any]) -> dict[str, Any]:
    """Open the checkpoint weights-only (a checkpoint is data, never code: a pickle asking for
    anything but tensors and plain containers is refused) and compare its config with ours.
    Returns what the later checks need: ``global_step``, the weights' shapes."""
    from trainer.run_files import load_checkpoint

    try:
        state = load_checkpoint(ckpt)
        step = int(state["global_step"])
    except ConfigError as exc:  # empty, truncated, foreign or unsafe: load_checkpoint says which
        raise ConfigError(f"ckpt_path={ckpt_path!r}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"ckpt_path={ckpt_path!r}: cannot read {ckpt}: {exc}") from exc
    saved = (state.get("callbacks") or {}).get("RunSummary", {}).get("identity")
    if saved:
        diffs = identity_diff(_strip(saved), _strip(identity))
        if diffs:
            raise ConfigError(
                f"ckpt_path={ckpt_path!r}: {ckpt} was trained with another config; refusing to "
                f"resume (nothing written). Differing keys:\n  - " + "\n  - ".join(diffs)
            )
    shapes = {k: tuple(v.shape) for k, v in (state.get("state_dict") or {}).items()
              if hasattr(v, "shape")}
    return {"global_step": step, "shapes": shapes}


def check_weights_fit(saved: dict[str, Any], model_state: dict[str, Any], ckpt_path: str) -> None:
    """The checkpoint's weights must be this model's, name for name and shape for shape (for
    checkpoints that carry no config, e.g. written by another program)."""
    ours = {k: tuple(v.shape) for k, v in model_state.items()}
    theirs = saved["shapes"]
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    wrong = [f"{k}: checkpoint {theirs[k]}, model {ours[k]}" for k in sorted(set(ours) & set(theirs))
             if ours[k] != theirs[k]]
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:5])}"] if extra else []) + wrong[:5]
        raise ConfigError(f"ckpt_path={ckpt_path!r}: the checkpoint's weights do not fit this "
                          f"model (nothing written): " + "; ".join(parts))


def finished_summary(run_dir: Path, ckpt_step: int, total_steps: int) -> dict[str, Any] | None:
    """The run dir's summary when it records a completed run that this budget does not extend
    (resuming it is then a no-op), else None."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") == "completed" and ckpt_step >= total_steps:
        return summary
    return None
