"""A small decoder-only transformer: RoPE, pre-norm, SwiGLU or GELU MLP, tied embeddings.

Two attention paths compute the same function: PyTorch's fused SDPA for training, and an explicit
softmax(QK^T)V that can return the attention weights the probes and topology metrics read (SDPA on
CPU returns no weights and has no double backward). Besides token embeddings the model takes
continuous items (vectors through a linear projection) at positions chosen by ``item_mask``, which the
in-context classification data needs.

``attn_only`` (no MLPs) and ``looped`` (weight-shared blocks applied K times) are variants of this
model; see their modules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MLP_KINDS = ("swiglu", "gelu", "none")
INIT_SCHEMES = ("gpt2", "torch")
_FIELD_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "int | None": (int, type(None)),
}


@dataclass
class GPTConfig:
    vocab_size: int
    max_seq_len: int
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    mlp: str = "swiglu"
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    item_dim: int | None = None
    n_loops: int = 1
    init: str = "gpt2"

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), _FIELD_TYPES[f.type]
            if not isinstance(value, expected) or (
                isinstance(value, bool) and bool not in expected
            ):
                problems.append(f"model.{f.name}={value!r} must be of type {f.type}")
        if not problems:
            if self.init not in INIT_SCHEMES:
                problems.append(f"model.init={self.init!r} is not one of {list(INIT_SCHEMES)}")
            if self.mlp not in MLP_KINDS:
                problems.append(f"model.mlp={self.mlp!r} is not one of {list(MLP_KINDS)}")
            if self.d_model % self.n_head:
                problems.append(
                    f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}"
                )
            elif (self.d_model // self.n_head) % 2:
                problems.append(
                    f"model.d_model/model.n_head={self.d_model // self.n_head} must be even (RoPE)"
                )
            for key in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "n_loops"):
                if getattr(self, key) < 1:
                    problems.append(f"model.{key}={getattr(self, key)} must be >= 1")
            if not 0.0 <= self.dropout < 1.0:
                problems.append(f"model.dropout={self.dropout} must lie in [0, 1)")
        if problems:
            raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model)
        # SwiGLU has three matrices instead of two: 2/3 keeps the parameter count of a GELU MLP.
        return int(2 * hidden / 3) if self.mlp == "swiglu" else hidden


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of a [B, H, T, h] tensor by position."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            y = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), weights


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        width = cfg.mlp_hidden
        self.up = nn.Linear(cfg.d_model, 2 * width if cfg.mlp == "swiglu" else width, bias=False)
        self.down = nn.Linear(width, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = Attention(cfg)
        self.mlp = None if cfg.mlp == "none" else MLP(cfg)
        self.norm2 = None if self.mlp is None else nn.LayerNorm(cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, need_weights=False):
        a, weights = self.attn(self.norm1(x), cos, sin, need_weights)
        x = x + self.drop(a)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


class GPT(nn.Module):
    """Decoder-only transformer. ``forward`` returns logits, or a dict with hidden states and
    attention weights for the probes (``return_hidden`` / ``return_attn``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(
                f"unknown model config key(s): {', '.join('model.' + k for k in unknown)}; "
                f"known: {sorted(fields)}"
            )
        self.config = cfg = GPTConfig(**kwargs)
        if cfg.n_loops != 1 and type(self).block_schedule is GPT.block_schedule:
            raise ValueError(f"model.n_loops={cfg.n_loops}: only model=looped repeats its blocks")
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.item_proj = nn.Linear(cfg.item_dim, cfg.d_model, bias=False) if cfg.item_dim else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model, bias=False)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.init == "gpt2":
            self._init_gpt2()
        # "torch" keeps PyTorch's defaults (N(0, 1) embeddings, Kaiming-uniform linears). Measured
        # here: the attention-only model learns in-context classification within ~600 steps with
        # them and untied embeddings, and stays at chance for 5000 steps with GPT-2's init.

    def _init_gpt2(self) -> None:
        """N(0, 0.02) weights; residual projections scaled by 1/sqrt(2 x depth) (GPT-2), which keeps
        the residual stream's variance flat in deep models."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        depth = self.config.n_layer * self.config.n_loops
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * depth))

    def block_schedule(self) -> list[Block]:
        """The blocks in the order they are applied (the looped model repeats them)."""
        return list(self.blocks)

    def embed(
        self,
        input_ids: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
        item_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        if self.item_proj is not None and item_vectors is not None:
            items = self.item_proj(item_vectors.to(x.dtype))
            x = torch.where(item_mask.unsqueeze(-1), items, x)
        return self.drop(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
        item_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
        return_attn: bool = False,
    ):
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds model.max_seq_len={self.config.max_seq_len}"
            )
        x = self.embed(input_ids, item_vectors, item_mask)
        hidden, attn = [x], []
        for block in self.block_schedule():
            x, weights = block(x, self.rope_cos, self.rope_sin, need_weights=return_attn)
            hidden.append(x)
            attn.append(weights)
        logits = self.head(self.norm(x))
        if not (return_hidden or return_attn):
            return logits
        return {"logits": logits, "hidden": hidden, "attn": attn if return_attn else None}

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward = 3x forward), as in nanoGPT/PaLM: 6 per
        applied weight (blocks count once per loop; the head's matmul counts even when tied) plus
        the attention score and value products."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        block_params = sum(p.numel() for p in self.blocks.parameters())
        applied_weights = block_params * cfg.n_loops + cfg.vocab_size * cfg.d_model
        if self.item_proj is not None:
            applied_weights += self.item_proj.weight.numel()
        return int(6 * applied_weights + 12 * cfg.n_layer * cfg.n_loops * cfg.d_model * T)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only: embeddings and linear weights decay, norms do not."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
