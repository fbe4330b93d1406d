"""``elab-export RUN_DIR --to hf|transformer_lens OUT``: the run's model in another library's
format, checked to give the lab's logits (max |difference| <= 1e-4, float32) before it is kept.

``--all-checkpoints`` exports the whole checkpoint trail as ``OUT/step-<n>/`` (plus
``OUT/checkpoints.json``, the index), so a series of checkpoints can be analysed in those tools.
Every export directory holds ``elab_export.json``: source run, checkpoint, step, architecture,
the measured logit difference and any note (a looped model is unrolled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.cli_errors import report_bad_input
from trainer.config import ConfigError
from trainer.export import common
from trainer.run_dir import MODEL, SUMMARY, RunDir
from trainer.run_files import VOCAB_FILE, checkpoint_trail, find_checkpoint, load_model, read_json

TARGETS = ("hf", "transformer_lens")


def _target(name: str):
    if name == "hf":
        from trainer.export import hf

        return hf
    from trainer.export import tlens

    return tlens


def export_model(model: Any, step: int, run_dir: Path, checkpoint: Path, target: str,
                 out: Path) -> dict[str, Any]:
    """Export the model of one checkpoint into ``out``; returns what ``elab_export.json``
    records. Raises when the exported model does not give the lab's logits."""
    module = _target(target)
    common.check_expressible(model, target)
    out.mkdir(parents=True, exist_ok=True)
    vocab = read_json(run_dir, VOCAB_FILE)
    text = common.write_tokenizer_files(run_dir, out)
    if target == "hf":
        exported, note = module.export(model, out, eos_id=vocab.get("eos_id"))
    else:
        exported, note = module.export(model, out, text=text)
    diff = common.max_logit_difference(model, module.logits_fn(exported))
    record = {"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint.name, "step": step,
              "target": target, "architecture": type(exported).__name__,
              "lab_model": type(model).__name__, "max_abs_logit_diff": diff,
              "tolerance": common.TOLERANCE, "note": note}
    (out / "elab_export.json").write_text(json.dumps(record, indent=2) + "\n")
    if not diff <= common.TOLERANCE:
        raise RuntimeError(f"{out}: the exported model's logits differ from the lab's by {diff:.3g} "
                           f"(> {common.TOLERANCE}); the export is wrong, do not use it")
    return record


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elab-export",
        description="The run's model as a Hugging Face (transformers) or TransformerLens "
                    "directory, checked to give the lab's logits (max |difference| <= 1e-4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run dir (holds model.json and checkpoints/)")
    p.add_argument("--to", required=True, choices=TARGETS, dest="target")
    p.add_argument("out", type=Path, help="the export directory (created)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", default=None,
                       help="last (default), a step of the trail, a file name or a path")
    which.add_argument("--all-checkpoints", action="store_true",
                       help="every checkpoint of the trail, as OUT/step-<n>/")
    p.add_argument("--force", action="store_true",
                   help="write into OUT even when it is not empty (never into a run dir)")
    return p


# What makes a directory a run dir, and the folders of one an export must not write into.
_RUN_MARKS = (SUMMARY, "checkpoints", ".hydra", MODEL)
_RUN_FOLDERS = ("checkpoints", ".hydra", "csv", "retro", "wandb", "llc")


def check_out(out: Path, force: bool) -> None:
    """Refuse an export directory that is (or lies in the folders of) a run dir, even with
    ``--force``, and one that is not empty unless ``--force``: an export overwrites
    config.json, tokenizer.json and the weights' files by name."""
    resolved = out.resolve()
    for parent in (resolved, *resolved.parents):
        marks = [m for m in _RUN_MARKS if (parent / m).exists()]
        inside = parent == resolved or resolved.relative_to(parent).parts[0] in _RUN_FOLDERS
        if marks and inside:
            raise ConfigError(f"out={str(out)!r} is {'' if parent == resolved else 'inside '}the "
                              f"run dir {parent} (it holds {', '.join(marks)}): an export never "
                              "writes into a run dir, even with --force; choose a new directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file: choose a new directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        raise ConfigError(f"out={str(out)!r} is not empty (it holds {', '.join(held[:5])}"
                          f"{', ...' if len(held) > 5 else ''}): choose a new or empty directory, "
                          "or pass --force to overwrite files there")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    common.require(*_target(args.target).NEEDS)
    if not RunDir(args.run_dir).checkpoints_dir.is_dir():
        raise ConfigError(f"run_dir={str(args.run_dir)!r} has no checkpoints/ directory")
    check_out(args.out, args.force)
    if not args.all_checkpoints:
        path = find_checkpoint(args.run_dir, args.checkpoint)
        model, step = load_model(args.run_dir, path)
        return [export_model(model, step, args.run_dir, path, args.target, args.out)]
    trail = checkpoint_trail(args.run_dir)
    if not trail:
        raise ConfigError(f"{args.run_dir / 'checkpoints'} holds no checkpoint")
    records, done = [], set()
    for path in trail:
        model, step = load_model(args.run_dir, path)
        if step in done:  # last.ckpt is usually the trail's final step again
            continue
        done.add(step)
        record = export_model(model, step, args.run_dir, path, args.target,
                              args.out / f"step-{step}")
        records.append(record | {"dir": f"step-{step}"})
        print(f"step {step}: {args.out / f'step-{step}'} (max |logit diff| "
              f"{record['max_abs_logit_diff']:.2g})")
    index = [{"step": r["step"], "dir": r["dir"], "checkpoint": r["checkpoint"]} for r in records]
    (args.out / "checkpoints.json").write_text(json.dumps(index, indent=2) + "\n")
    return records


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        records = run(args)
    except Exception as exc:  # bad input, a missing extra, a model the target cannot express,
        return report_bad_input("elab-export", exc)  # an output path that cannot be written
    last = records[-1]
    print(f"exported {len(records)} checkpoint(s) of {args.run_dir} to {args.out} as "
          f"{last['architecture']} ({args.target}); max |logit diff| vs the lab's model: "
          f"{max(r['max_abs_logit_diff'] for r in records):.2g}")
    if last["note"]:
        print(f"note: {last['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
