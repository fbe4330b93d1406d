"""``--to hf``: a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

The lab's GPT is pre-norm (LayerNorm without bias, or RMSNorm with ``model.norm=rmsnorm``), RoPE
rotating the two halves of each head (the GPT-NeoX / Llama convention), bias-free linears, and a
SwiGLU, GELU or no MLP. Three ``transformers`` architectures express it exactly:

* LayerNorm, SwiGLU or no MLP -> ``StableLmForCausalLM``: LayerNorm (its bias set to zero),
  separate q/k/v/o projections without bias, ``silu(gate_proj x) * up_proj x`` (the lab's up rows
  are ``[gate; value]``), rotary with ``partial_rotary_factor=1.0`` (its default is 0.25).
* RMSNorm, SwiGLU or no MLP -> ``LlamaForCausalLM`` (the same layout with RMSNorm, eps 1e-5).
* LayerNorm, GELU -> ``GPTNeoXForCausalLM`` with ``use_parallel_residual=False`` (sequential
  pre-norm), ``attention_bias=False``, exact (erf) GELU, MLP biases zero. Its fused
  ``query_key_value`` rows are per head ``[q_h; k_h; v_h]``, the lab's ``[q; k; v]``: reordered.

An attention-only model gets a one-unit MLP whose weights are zero, which adds exactly 0 (a
zero-width one would too, but torch warns about its zero-element tensors on every load).
RMSNorm with a GELU MLP has no counterpart here (Llama-style models gate their MLP): refused, with
``--to transformer_lens`` as the way out. Looped models are unrolled
(``common.unrolled_blocks``); item-vector models are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.export.common import (
    check_expressible,
    mlp_width,
    split_qkv,
    split_swiglu,
    unrolled_blocks,
)
from trainer.models.mup import as_sp

NEEDS = ("transformers", "safetensors")


def _rope(model: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": float(model.config.rope_base),
            "partial_rotary_factor": 1.0}


def _common_config(model: Any, n_layers: int, eos_id: int | None) -> dict[str, Any]:
    cfg = model.config
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": n_layers, "num_attention_heads": cfg.n_head,
            "intermediate_size": max(1, mlp_width(model)), "max_position_embeddings": cfg.max_seq_len,
            "tie_word_embeddings": cfg.tie_embeddings, "rope_parameters": _rope(model),
            "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}


def _llama_layout(model: Any, blocks: list[Any]) -> dict[str, torch.Tensor]:
    """Weights under the parameter names StableLm and Llama share."""
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.tok_emb.weight}
    for i, block in enumerate(blocks):
        p = f"model.layers.{i}."
        q, k, v = split_qkv(block)
        sd |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
               p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": block.attn.proj.weight,
               p + "input_layernorm.weight": block.norm1.weight}
        if block.mlp is not None:
            gate, value = split_swiglu(block)
            sd |= {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": value,
                   p + "mlp.down_proj.weight": block.mlp.down.weight,
                   p + "post_attention_layernorm.weight": block.norm2.weight}
    sd["model.norm.weight"] = model.norm.weight
    sd["lm_head.weight"] = model.head.weight
    return sd


def _stablelm(model: Any, blocks: list[Any], eos_id: int | None):
    from transformers import StableLmConfig, StableLmForCausalLM

    config = StableLmConfig(**_common_config(model, len(blocks), eos_id), hidden_act="silu",
                            layer_norm_eps=1e-5, use_parallel_residual=False,
                            num_key_value_heads=model.config.n_head, use_qkv_bias=False,
                            qk_layernorm=False)
    return StableLmForCausalLM, config, _llama_layout(model, blocks)


def _llama(model: Any, blocks: list[Any], eos_id: int | None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**_common_config(model, len(blocks), eos_id), hidden_act="silu",
                         rms_norm_eps=1e-5, num_key_value_heads=model.config.n_head,
                         head_dim=model.config.head_dim, attention_bias=False, mlp_bias=False)
    return LlamaForCausalLM, config, _llama_layout(model, blocks)


def _neox(model: Any, blocks: list[Any], eos_id: int | None):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = model.config
    config = GPTNeoXConfig(**_common_config(model, len(blocks), eos_id), hidden_act="gelu",
                           layer_norm_eps=1e-5, use_parallel_residual=False,
                           attention_bias=False)
    sd: dict[str, torch.Tensor] = {"gpt_neox.embed_in.weight": model.tok_emb.weight}
    for i, block in enumerate(blocks):
        p = f"gpt_neox.layers.{i}."
        per_head = [w.view(cfg.n_head, cfg.head_dim, cfg.d_model) for w in split_qkv(block)]
        qkv = torch.stack(per_head, dim=1).reshape(3 * cfg.d_model, cfg.d_model)
        sd |= {p + "attention.query_key_value.weight": qkv,
               p + "attention.dense.weight": block.attn.proj.weight,
               p + "input_layernorm.weight": block.norm1.weight,
               p + "post_attention_layernorm.weight": block.norm2.weight,
               p + "mlp.dense_h_to_4h.weight": block.mlp.up.weight,
               p + "mlp.dense_4h_to_h.weight": block.mlp.down.weight}
    sd["gpt_neox.final_layer_norm.weight"] = model.norm.weight
    sd["lm_head.weight"] = model.head.weight
    return GPTNeoXForCausalLM, config, sd


def convert(model: Any, eos_id: int | None = None):
    """The ``transformers`` model holding the lab model's weights, and a note (or None)."""
    model = as_sp(model)  # muP's multipliers folded into the weights: the same logits
    blocks, note = unrolled_blocks(model)
    cfg = model.config
    check_expressible(model, "hf")
    if cfg.norm == "rmsnorm":
        build = _llama
    else:
        build = _neox if cfg.mlp == "gelu" else _stablelm
    cls, config, weights = build(model, blocks, eos_id)
    hf_model = cls(config)
    state = hf_model.state_dict()
    missing = set(weights) - set(state)
    if missing:
        raise RuntimeError(f"{cls.__name__} has no parameter(s) {sorted(missing)}")
    with torch.no_grad():
        for name, tensor in state.items():
            # Everything the lab has no counterpart for is a bias (norms, GELU MLP) or belongs to
            # an attention-only model's one-unit MLP: zero keeps the function the lab's.
            if name in weights:
                tensor.copy_(weights[name])
            else:
                tensor.zero_()
    return hf_model.eval(), note


def export(model: Any, out: Path, eos_id: int | None = None):
    """Write ``out`` (config.json, model.safetensors); returns the in-memory model and a note."""
    from transformers.utils import logging as hf_logging

    hf_model, note = convert(model, eos_id)
    hf_logging.disable_progress_bar()  # a bar per file, per checkpoint of a trail
    hf_model.save_pretrained(out)
    return hf_model, note


def logits_fn(hf_model: Any):
    return lambda ids: hf_model(ids).logits
