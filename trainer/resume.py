"""Resume safely: a checkpoint is checked against this run's config and model, and a finished run
is recognised, before anything in the run dir is written.

A checkpoint records the config its weights belong to (``RunSummary.state_dict``: the resolved
model, data, curriculum, batch and optim groups). Resuming with any of them changed, or from
another run's checkpoint, would silently continue a different experiment and then overwrite the
first one's summary; it is refused, naming the differing keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import ConfigError
from trainer.run_dir import RunDir

# Keys that may differ without changing the experiment: where caches live, whether a token store
# is re-hashed on opening (data.verify) and whether its build shows a bar (data.progress).
_IGNORED_LEAVES = {"cache_dir", "verify", "progress"}


def _strip(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in tree.items() if k not in _IGNORED_LEAVES}
    return tree


def identity_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (nested dicts walked). A key the
    checkpoint does not have is a knob newer than the checkpoint: not compared (a new knob's
    default keeps the behaviour the run was trained under, e.g. ``model.parametrization=sp``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        diffs = []
        for key in sorted(set(saved), key=str):
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
    if not all(key in state for key in _TRAINING_STATE):
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: {ckpt} holds weights only (a checkpoint of the trail, "
            f"step {step}: no optimizer state, no loop position), so training cannot resume from "
            "it; nothing written. Resume a run with ckpt_path=last; elab-sample and elab-export "
            "read trail checkpoints (--checkpoint STEP)"
        )
    run_summary = (state.get("callbacks") or {}).get("RunSummary", {})
    saved = run_summary.get("identity")
    if saved:
        # Keys a checkpoint of an older version did not record (the seed, a newer model knob)
        # are not compared: see identity_diff.
        diffs = identity_diff(_strip(saved), _strip(identity))
        if diffs:
            raise ConfigError(
                f"ckpt_path={ckpt_path!r}: {ckpt} was trained with another config; refusing to "
                f"resume (nothing written). Differing keys:\n  - " + "\n  - ".join(diffs)
            )
    shapes = {k: tuple(v.shape) for k, v in (state.get("state_dict") or {}).items()
              if hasattr(v, "shape")}
    return {"global_step": step, "shapes": shapes, "run_id": run_summary.get("run_id")}


# What Lightning's own checkpoints hold beside the weights, and the trail's do not.
_TRAINING_STATE = ("pytorch-lightning_version", "optimizer_states", "loops")


def check_same_run(run_dir: Path, ckpt: Path, ckpt_path: str, saved_run_id: str | None) -> None:
    """A run dir that holds a run resumes only from a checkpoint of that run: another run's
    would splice two runs' metrics, trail and summary into one. Runs are told apart by the id
    each records in its checkpoints and summary; for runs of an older version, which record
    none, the checkpoint must be one of the run dir's own."""
    run = RunDir(run_dir)
    last = run.last_checkpoint
    own_id = _run_id_of(run, last)
    if own_id is None and not last.exists():
        return  # no run here yet (at most a start that failed): continuing elsewhere is a copy
    if saved_run_id and own_id:
        same = saved_run_id == own_id
    else:
        same = Path(ckpt).resolve().parent == run.checkpoints_dir.resolve()
    if not same:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: {ckpt} is a checkpoint of another run (run id "
            f"{saved_run_id or 'not recorded'}), and {run_dir} holds a run of its own (run id "
            f"{own_id or 'not recorded'}); resuming would mix the two, nothing written. Resume "
            f"this run with ckpt_path=last, or continue the other one in a new hydra.run.dir"
        )


def _run_id_of(run: RunDir, last: Path) -> str | None:
    """The run id a run dir records: in summary.json, else in its last.ckpt."""
    try:
        run_id = run.read_summary().get("run_id")
        if run_id:
            return run_id
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import torch

        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return (state.get("callbacks") or {}).get("RunSummary", {}).get("run_id")
    except Exception:  # no last.ckpt or an unreadable one: no id recorded
        return None


def check_budget(ckpt: Path, ckpt_step: int, total_steps: int, budget_tokens: int) -> None:
    """A checkpoint at or past this budget's last step leaves nothing to train: resuming would
    report the run completed with no metrics. (A completed run is a no-op before this.)"""
    if ckpt_step >= total_steps:
        raise ConfigError(
            f"budget.tokens={budget_tokens} gives {total_steps} steps, and {ckpt} is at step "
            f"{ckpt_step}: nothing left to train, nothing written. Raise budget.tokens above "
            f"{ckpt_step} steps' worth to continue the run, or start a fresh one in a new "
            f"hydra.run.dir"
        )


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
    try:
        summary = RunDir(run_dir).read_summary() or {}
    except (OSError, ValueError):
        return None
    if summary.get("status") == "completed" and ckpt_step >= total_steps:
        return summary
    return None
