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
