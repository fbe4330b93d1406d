"""The maximal update parametrization (muP: Yang et al. 2022, "Tensor Programs V", Table 3, in the
multiplier form of its Table 8 / the ``mup`` package's ``MuReadout`` / EleutherAI's nanoGPT-mup),
so that a learning rate tuned at one width holds at the others.

``model.parametrization=mup`` with ``model.base_width``: the width ratio is m = d_model /
base_width, and at m = 1 the model, its initialisation and its optimizer are SP's exactly.
Written here rather than taken from ``mup`` (whose ``set_base_shapes`` needs a second model built
at the base width, replaces the readout module and keeps its state on parameter attributes that
checkpoints and exports do not carry): the rules are a handful of numbers.

| weights | init | forward | AdamW lr | weight decay |
|---|---|---|---|---|
| input: token embedding, item projection | SP's | x ``mup_input_mult`` | lr | wd |
| hidden: attention qkv/proj, MLP up/down | std / sqrt(m) | - | lr / m | wd x m |
| readout (head, tied or not) | SP's | x ``mup_output_mult`` / m | lr | wd |
| norms' scales | ones | - | lr | 0 |

Attention scores are scaled by 1/head_dim, matched to SP's 1/sqrt(head_dim) at the base width:
sqrt(base_head_dim) / head_dim (with ``model.head_dim`` fixed heads keep their width and the scale
stays SP's). Hidden init: gpt2's N(0, 0.02) is width-independent and gets the 1/sqrt(m); PyTorch's
default (Kaiming-uniform) already has std proportional to 1/sqrt(fan_in), i.e. SP's base std /
sqrt(m) at every width. Weight decay as ``mup.MuAdamW`` does: torch's AdamW decays by lr x wd
per step, so the hidden matrices' wd x m keeps that decay width-independent.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch

PARAMETRIZATIONS = ("sp", "mup")
HIDDEN = ("attn.qkv.weight", "attn.proj.weight", "mlp.up.weight", "mlp.down.weight")


def width_mult(cfg: Any) -> float:
    """m = d_model / base_width under muP; 1 under SP."""
    return cfg.d_model / cfg.base_width if cfg.parametrization == "mup" else 1.0


def attention_scale(cfg: Any) -> float | None:
    """The q.k scale, or None for SDPA's default 1/sqrt(head_dim) (SP, and muP at the base head
    width)."""
    if cfg.parametrization != "mup" or cfg.head_dim == cfg.base_head_dim:
        return None
    return math.sqrt(cfg.base_head_dim) / cfg.head_dim


def input_mult(cfg: Any) -> float:
    return cfg.mup_input_mult if cfg.parametrization == "mup" else 1.0


def readout_mult(cfg: Any) -> float:
    return cfg.mup_output_mult / width_mult(cfg) if cfg.parametrization == "mup" else 1.0


def is_hidden(name: str) -> bool:
    return name.startswith("blocks.") and name.endswith(HIDDEN)


def scale_hidden_init(model: Any) -> None:
    """gpt2's width-independent std -> std / sqrt(m) on the hidden matrices (see the table)."""
    m = width_mult(model.config)
    if m == 1.0 or model.config.init != "gpt2":
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_hidden(name):
                p.mul_(1.0 / math.sqrt(m))


def optimizer_groups(model: Any, weight_decay: float) -> list[dict]:
    """SP's two groups (decay on matrices only), and the hidden matrices in a third at lr / m
    (``lr_scale``, applied by the LightningModule) and wd x m. The first group keeps the base
    lr: it is the one ``train/lr`` logs."""
    m = width_mult(model.config)
    decay, no_decay, hidden = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if m != 1.0 and is_hidden(name):
            hidden.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if hidden:
        groups.append({"params": hidden, "weight_decay": weight_decay * m, "lr_scale": 1.0 / m})
    return groups


def as_sp(model: Any) -> Any:
    """The same function in standard parametrization (what the export formats hold): muP's
    multipliers folded into the weights. The attention scale goes into the query rows, the input
    multiplier into the embeddings, the readout's into the final norm's scale (the head reads
    only it; a tied head, multiplied by the input multiplier with the embedding, is divided back
    there). An SP model is returned as it is."""
    cfg = model.config
    if cfg.parametrization == "sp":
        return model
    plain = copy.deepcopy(model)
    plain.config = dataclasses.replace(cfg, parametrization="sp", mup_input_mult=1.0,
                                       mup_output_mult=1.0)
    scale, alpha = attention_scale(cfg), input_mult(cfg)
    with torch.no_grad():
        for block in plain.blocks:
            block.attn.scale = None
            if scale is not None:
                block.attn.qkv.weight[: cfg.d_model].mul_(scale * math.sqrt(cfg.head_dim))
        plain.tok_emb.weight.mul_(alpha)
        if plain.item_proj is not None:
            plain.item_proj.weight.mul_(alpha)
        plain.norm.weight.mul_(readout_mult(cfg) / (alpha if cfg.tie_embeddings else 1.0))
    plain.input_mult = plain.readout_mult = 1.0
    return plain
