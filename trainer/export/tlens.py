"""``--to transformer_lens``: a TransformerLens ``HookedTransformer`` saved as a directory.

The config is mapped, not guessed: ``normalization_type="LN"`` (TransformerLens' LayerNorm has a
bias, set to zero) or ``"RMS"`` (``model.norm=rmsnorm``, eps 1e-5),
``positional_embedding_type="rotary"`` over the whole head (``rotary_dim=d_head``) with
``rotary_adjacent_pairs=False`` (halves, the lab's and GPT-NeoX's convention), ``gated_mlp=True`` with ``act_fn="silu"`` for SwiGLU (``W_gate`` = the lab's gate rows,
``W_in`` = its value rows) or ``act_fn="gelu"`` (exact GELU), ``attn_only=True`` without an MLP.
Weights are laid out the way TransformerLens' own Llama/NeoX conversions lay them out
(``W_Q[head, d_model, d_head]``, ``W_O[head, d_head, d_model]``, ``W_in[d_model, d_mlp]``); the
biases the lab has no counterpart for are zero. Looped models are unrolled.

The rotary tables travel with the weights: TransformerLens computes its angles as
``pos / base^(2i/d)``, the lab as ``pos * base^(-2i/d)``; in float32 the two differ by up to 1.5e-5
at position 255, which came to 3.6e-5 in the logits of a 2-layer model trained on the world. The
saved tables (``blocks.<i>.attn.rotary_cos/sin``, the first 2048 positions) make them the lab's.

The directory holds ``tl_config.json`` (the ``HookedTransformerConfig`` fields), ``model.safetensors``
(the state dict), ``load_tl.py`` (a loader that needs only TransformerLens, no lab) and, for text
runs, the tokenizer files, which the loader hands to the model so ``to_tokens`` works.
``HookedTransformer`` exists in TransformerLens < 4 (4.0 replaced it with ``TransformerBridge``);
the ``interp`` extra pins that range.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from trainer.export.common import mlp_width, split_qkv, split_swiglu, unrolled_blocks
from trainer.models.mup import as_sp

NEEDS = ("transformer_lens", "safetensors")
CONFIG_FILE, WEIGHTS_FILE, LOADER_FILE = "tl_config.json", "model.safetensors", "load_tl.py"
# TransformerLens keeps this many positions of its rotary tables (AbstractAttention's initial
# cache) and loads saved tables of that shape.
ROTARY_CACHE_ROWS = 2048

LOADER = '''\
"""Load this directory as a TransformerLens HookedTransformer: `model = load(DIR)`."""
import json, pathlib, warnings

from safetensors.torch import load_file


def load(path=pathlib.Path(__file__).parent, device="cpu"):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    path = pathlib.Path(path)
    cfg = HookedTransformerConfig(**json.loads((path / "tl_config.json").read_text()), device=device)
    tokenizer = None
    if (path / "tokenizer.json").exists():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer, TL 3.x
        model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_state_dict(load_file(path / "model.safetensors", device=device), strict=False)
    return model.eval()
'''


def tl_config(model: Any, n_layers: int, text: bool) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields (JSON-safe) for the lab model."""
    cfg = model.config
    kinds = {"swiglu": ("silu", True), "gelu": ("gelu", False), "none": ("silu", False)}
    act_fn, gated = kinds[cfg.mlp]
    return {
        "model_name": f"emergence-lab-{type(model).__name__}", "d_model": cfg.d_model,
        "d_head": cfg.head_dim, "n_heads": cfg.n_head, "n_layers": n_layers,
        "n_ctx": cfg.max_seq_len, "d_vocab": cfg.vocab_size, "d_vocab_out": cfg.vocab_size,
        "d_mlp": mlp_width(model) or None, "act_fn": act_fn, "gated_mlp": gated,
        "attn_only": cfg.mlp == "none", "eps": 1e-5,
        "normalization_type": "RMS" if cfg.norm == "rmsnorm" else "LN",
        "positional_embedding_type": "rotary", "rotary_dim": cfg.head_dim,
        "rotary_base": float(cfg.rope_base), "rotary_adjacent_pairs": False,
        "original_architecture": "emergence-lab",
        # Text runs: TransformerLens prepends the tokenizer's BOS, here <|eos|>, which is what
        # a document follows in training.
        "default_prepend_bos": text, "init_weights": False,
    }


def _norm(name: str, norm: Any) -> dict[str, torch.Tensor]:
    """A TransformerLens norm's parameters: ``w``, and for LayerNorm a zero ``b``."""
    out = {f"{name}.w": norm.weight.detach()}
    if isinstance(norm, torch.nn.LayerNorm):
        out[f"{name}.b"] = torch.zeros_like(norm.weight)
    return out


def state_dict(model: Any, blocks: list[Any]) -> dict[str, torch.Tensor]:
    cfg = model.config
    n, h, d = cfg.n_head, cfg.head_dim, cfg.d_model
    zeros = torch.zeros
    sd = {"embed.W_E": model.tok_emb.weight.detach(), **_norm("ln_final", model.norm),
          "unembed.W_U": model.head.weight.detach().T, "unembed.b_U": zeros(cfg.vocab_size)}
    rows = min(cfg.max_seq_len, ROTARY_CACHE_ROWS)
    cos, sin = (torch.cat([t[:rows], t[:rows]], dim=-1) for t in (model.rope_cos, model.rope_sin))
    for i, block in enumerate(blocks):
        p = f"blocks.{i}."
        q, k, v = (w.view(n, h, d).transpose(1, 2) for w in split_qkv(block))  # [n, d_model, h]
        sd |= {p + "attn.rotary_cos": cos, p + "attn.rotary_sin": sin}
        sd |= {**_norm(p + "ln1", block.norm1),
               p + "attn.W_Q": q, p + "attn.W_K": k, p + "attn.W_V": v,
               p + "attn.b_Q": zeros(n, h), p + "attn.b_K": zeros(n, h), p + "attn.b_V": zeros(n, h),
               p + "attn.W_O": block.attn.proj.weight.detach().T.reshape(n, h, d),
               p + "attn.b_O": zeros(d)}
        if block.mlp is None:
            continue
        if cfg.mlp == "swiglu":
            gate, value = split_swiglu(block)
            sd |= {p + "mlp.W_gate": gate.T, p + "mlp.W_in": value.T}
        else:
            sd[p + "mlp.W_in"] = block.mlp.up.weight.detach().T
        sd |= {**_norm(p + "ln2", block.norm2),
               p + "mlp.b_in": zeros(cfg.mlp_hidden),
               p + "mlp.W_out": block.mlp.down.weight.detach().T, p + "mlp.b_out": zeros(d)}
    return {k: v.contiguous().clone() for k, v in sd.items()}


def convert(model: Any, text: bool = False):
    """The ``HookedTransformer`` holding the lab model's weights, its config fields, its
    state dict and a note (or None)."""
    model = as_sp(model)  # muP's multipliers folded into the weights: the same logits
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    blocks, note = unrolled_blocks(model)
    fields = tl_config(model, len(blocks), text)
    weights = state_dict(model, blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tl_model = HookedTransformer(HookedTransformerConfig(**fields, device="cpu"))
    missing, unexpected = tl_model.load_state_dict(weights, strict=False)
    # strict=False only for the buffers TransformerLens computes itself (the masks).
    params = {name for name, _ in tl_model.named_parameters()}
    if unexpected or params & set(missing):
        raise RuntimeError(f"TransformerLens state dict mismatch: missing "
                           f"{sorted(params & set(missing))}, unexpected {sorted(unexpected)}")
    return tl_model.eval(), fields, weights, note


def export(model: Any, out: Path, text: bool = False):
    """Write ``out``; returns the in-memory model and a note."""
    from safetensors.torch import save_file

    tl_model, fields, weights, note = convert(model, text)
    (out / CONFIG_FILE).write_text(json.dumps(fields, indent=2) + "\n")
    save_file(weights, str(out / WEIGHTS_FILE))
    (out / LOADER_FILE).write_text(LOADER)
    return tl_model, note


def logits_fn(tl_model: Any):
    return lambda ids: tl_model(ids, return_type="logits")
