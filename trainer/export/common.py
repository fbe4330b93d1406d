"""What every export target shares: the optional dependencies, the models no target can express,
the lab's blocks in the order they run, the tokenizer files, and the logit check."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError
from trainer.run_files import TOKENIZER_FILE, VOCAB_FILE, read_json, tokenizer_path

INSTALL_HINT = "pip install -e '.[interp]'"
TOLERANCE = 1e-4  # max |logit difference| an export may have against the lab's model (float32)


class MissingExtra(ConfigError):
    """An optional dependency of the ``interp`` extra is not installed."""


class ExportRefused(ConfigError):
    """The model has a feature the target format cannot express."""


def require(*modules: str) -> None:
    """Fail with the install command when an ``interp`` dependency is missing (before any work)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"exporting needs {', '.join(missing)} (the 'interp' extra): "
                           f"{INSTALL_HINT}")


def check_expressible(model: Any, target: str) -> None:
    """Refuse, before anything is written, what ``target`` cannot hold: continuous items (no
    target: they enter through a linear projection at positions the data chooses, a causal LM of
    these libraries embeds tokens), and RMSNorm with a plain GELU MLP (no ``transformers``
    architecture)."""
    if model.config.item_dim is not None:
        raise ExportRefused(
            f"--to {target}: this model reads continuous item vectors (item_dim="
            f"{model.config.item_dim}, the bursty vector data) through item_proj at positions "
            "chosen by item_mask; a token-only causal LM cannot express that input. Use "
            "elab-sample --probe to look at it, or train on item_mode=token to export.")
    if target == "hf" and model.config.norm == "rmsnorm" and model.config.mlp == "gelu":
        raise ExportRefused(
            "--to hf: model.norm=rmsnorm with model.mlp=gelu has no transformers architecture "
            "(RMSNorm models there gate their MLP: Llama, Mistral, Qwen...); --to "
            "transformer_lens expresses it, or train with mlp=swiglu or norm=layernorm")


def unrolled_blocks(model: Any) -> tuple[list[Any], str | None]:
    """The blocks in the order the forward pass applies them and, for a looped model, the note
    that its weight-shared loops became copies (exact: the same weights, the same order)."""
    blocks = model.block_schedule()
    note = None
    if model.config.n_loops > 1:
        note = (f"looped model: {model.config.n_layer} weight-shared block(s) applied "
                f"{model.config.n_loops} times were unrolled into {len(blocks)} layers holding "
                "copies of the same weights (exact; the sharing itself is not kept)")
    return blocks, note


def split_qkv(block: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused attention rows ``[q; k; v]``, each ``[n_head * head_dim, d_model]``."""
    return block.attn.qkv.weight.detach().chunk(3, dim=0)


def split_swiglu(block: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The SwiGLU up rows ``[gate; value]`` (``silu(gate) * value``)."""
    return block.mlp.up.weight.detach().chunk(2, dim=0)


def mlp_width(model: Any) -> int:
    return 0 if model.config.mlp == "none" else model.config.mlp_hidden


def write_tokenizer_files(run_dir: Path, out: Path) -> bool:
    """Copy the run's tokenizer.json and describe it for ``AutoTokenizer`` (``<|eos|>`` is the
    end-of-text token and, as in training, the token a document starts after). False when the
    run has no text tokenizer (synthetic tasks): their vocabulary.json is copied instead."""
    vocab = read_json(run_dir, VOCAB_FILE)
    if vocab["kind"] not in ("byte", "bpe"):
        shutil.copyfile(run_dir / VOCAB_FILE, out / VOCAB_FILE)
        return False
    shutil.copyfile(tokenizer_path(run_dir, vocab), out / TOKENIZER_FILE)
    eos = vocab["eos_text"]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
              "pad_token": eos, "add_bos_token": False, "model_max_length": None,
              "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": eos, "bos_token": eos, "pad_token": eos}, indent=2) + "\n")
    return True


def max_logit_difference(lab_model: Any, exported_logits, seed: int = 0) -> float:
    """Max |logit difference| on a random batch of full-length rows: ``exported_logits`` maps
    input ids [B, T] to the exported model's logits."""
    cfg = lab_model.config
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len), generator=generator)
    with torch.no_grad():
        want = lab_model(ids).float()
        got = exported_logits(ids).float()
    return float((want - got).abs().max())
