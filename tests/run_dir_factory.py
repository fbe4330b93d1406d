"""Run dirs for the sample and export tests, made without training: the run files a run writes
(``trainer.run_files``) and checkpoints in Lightning's layout (``state_dict`` under ``model.``,
``global_step``), with random weights -- norms included, so a mapping that drops a norm's weight
shows in the logits."""

from __future__ import annotations

from pathlib import Path

import torch

from data_mixers.samplers.bursty_classes import BurstyClasses
from data_mixers.text_mixer import TextMixer
from trainer.models import GPT, AttnOnly, Looped
from trainer.run_files import write_run_files

SMALL_WORLD = {"kind": "world", "n_domains": 2, "entities_per_domain": 8}


def text_sampler(cache: Path, kind: str = "byte") -> TextMixer:
    tokenizer = {"kind": "byte"} if kind == "byte" else {"kind": "bpe", "vocab_size": 300}
    sampler = TextMixer(source=SMALL_WORLD, seq_len=64, tokenizer=tokenizer, cache_dir=cache)
    sampler.prepare()
    return sampler


def bursty_sampler(**knobs) -> BurstyClasses:
    return BurstyClasses(n_classes=32, pairs_per_seq=4, n_labels=4, probe_size=16, **knobs)


def make_model(family: str, vocab_size: int, max_seq_len: int, item_dim: int | None = None,
               seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    shape = {"vocab_size": vocab_size, "max_seq_len": max_seq_len, "d_model": 32, "n_head": 2,
             "init": "torch", "item_dim": item_dim}
    model = {
        "swiglu": lambda: GPT(**shape, n_layer=2, mlp="swiglu"),
        "gelu": lambda: GPT(**shape, n_layer=2, mlp="gelu", tie_embeddings=False),
        "attn_only": lambda: AttnOnly(**shape, n_layer=2, tie_embeddings=False),
        "looped": lambda: Looped(**shape, n_layer=1, n_loops=3),
        "rmsnorm": lambda: GPT(**shape, n_layer=2, mlp="swiglu", norm="rmsnorm"),
        "rmsnorm_gelu": lambda: GPT(**shape, n_layer=2, mlp="gelu", norm="rmsnorm"),
        "mup": lambda: GPT(**shape, n_layer=2, parametrization="mup", base_width=8,
                           mup_input_mult=2.0, mup_output_mult=3.0),
    }[family]()
    randomize(model)
    return model.eval()


def randomize(model: GPT) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3)


def save_checkpoint(model: GPT, path: Path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": step, "epoch": 0}, path)


def make_run(run_dir: Path, sampler, model: GPT, steps: tuple[int, ...] = (7,)) -> Path:
    """A run dir whose trail holds ``model`` re-randomised per step; ``last.ckpt`` is the final
    step, with ``model``'s own weights."""
    write_run_files(run_dir, sampler, model)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    for i, step in enumerate(steps[:-1]):
        torch.manual_seed(100 + i)
        randomize(model)
        save_checkpoint(model, run_dir / "checkpoints" / f"step-{step}.ckpt", step)
    model.load_state_dict(final)
    if len(steps) > 1:
        save_checkpoint(model, run_dir / "checkpoints" / f"step-{steps[-1]}.ckpt", steps[-1])
    save_checkpoint(model, run_dir / "checkpoints" / "last.ckpt", steps[-1])
    return run_dir


# A finished run's files as the default run writes them (trimmed to what readers use): the
# capability jump at onset 549 with its lead-lag, three topology jumps, chance levels.
ICL_JUMP = {"series": "probe/icl/acc", "step": 649, "onset_step": 549, "resolution": 50,
            "size": 0.3411, "score": 7.14, "tokens": 707200}
TOPO_JUMPS = [
    {"series": "topo/attn1/head0/prefix_match", "step": 574, "onset_step": 524, "resolution": 25,
     "size": 0.1353, "score": 38.4, "tokens": 625600},
    {"series": "topo/attn0/head0/entropy", "step": 599, "onset_step": 549, "resolution": 25,
     "size": -0.1579, "score": -12.25, "tokens": 652800},
]


def write_run_summary(run_dir: Path, status: str = "completed", overrides: tuple[str, ...] = (),
                      events: list[dict] | None = None, final_acc: float = 1.0,
                      error: str | None = None, transitions: dict | None = None) -> Path:
    """summary.json, events.jsonl, .hydra/overrides.yaml (and transitions.json when given) of a
    run that ended with ``status``: what elab-show and the end-of-run report read."""
    import json

    import yaml

    events = [ICL_JUMP, *TOPO_JUMPS] if events is None else events
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    capability = [e for e in events if e["series"].startswith("probe/")]
    lead_lag = [{**e, "before": [], "after": [],
                 "same": [{"series": t["series"], "onset_step": t["onset_step"],
                           "lead_steps": e["onset_step"] - t["onset_step"]}
                          for t in events if not t["series"].startswith("probe/")]}
                for e in capability]
    summary = {
        "status": status, "error": error, "steps": 1838, "total_steps": 1838,
        "tokens_seen": 1999744, "tokens_per_s": 37145.2, "wall_time_s": 61.5,
        "n_params": 99520, "flops_per_token": 422400,
        "metrics": {"probe/icl/acc": final_acc, "probe/icl/logprob": -0.002, "train/loss": 0.01},
        "chance": {"probe/icl/acc": {"value": 0.125, "plateau": 0.25},
                   "probe/icl/logprob": {"value": -2.0794}},
        "jumps": events, "lead_lag": lead_lag,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if transitions is not None:
        (run_dir / "transitions.json").write_text(json.dumps(transitions))
    return run_dir
