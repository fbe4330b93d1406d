"""A small decoder-only transformer: RoPE, pre-norm, SwiGLU or GELU MLP, tied embeddings.

Two attention paths compute the same function: PyTorch's fused SDPA for training, and an explicit
softmax(QK^T)V that can return the attention weights the probes and topology metrics read (SDPA on
CPU returns no weights and has no double backward). Besides token embeddings the model takes
continuous items (vectors through a linear projection) at positions chosen by ``item_mask``, which the
in-context classification data needs.

``attn_only`` (no MLPs) and ``looped`` (weight-shared blocks applied K times) are variants of this
model; see their modules. RoPE and SwiGLU run as the memory-lean autograd functions of ``ops.py``;
``generate`` (``generate.py``) decodes with a key/value cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import trainer.models.mup as mup
from trainer.models.generate import KVCache, generate
from trainer.models.ops import (
    RopeSlice,
    pair_interleave,
    pair_table,
    rotary_pairs,
    rotary_qkv,
    swiglu,
)

MLP_KINDS = ("swiglu", "gelu", "none")
NORM_KINDS = ("layernorm", "rmsnorm")
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
    # When set, the width of a head, and the number of heads follows: n_head = d_model / head_dim
    # (n_head is then ignored). A size sweep over d_model keeps heads the same size this way;
    # left unset, n_head stays fixed and heads widen with d_model. Resolved in __post_init__:
    # after construction both fields hold the model's actual values.
    head_dim: int | None = None
    norm: str = "layernorm"
    mlp_multiple_of: int = 8
    # Multiplies every initial weight matrix and embedding (not the norms' scales) after ``init``:
    # the knob that decides whether in-context learning arrives after a plateau or smoothly.
    init_scale: float = 1.0
    # sp | mup (``mup.py``): with mup the multipliers are taken from the ratio d_model /
    # base_width, and at d_model = base_width the model is SP's. base_head_dim: the head width at
    # the base width, resolved in __post_init__ (set explicitly only by model.json).
    parametrization: str = "sp"
    base_width: int | None = None
    mup_input_mult: float = 1.0
    mup_output_mult: float = 1.0
    base_head_dim: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), _FIELD_TYPES[f.type]
            if not isinstance(value, expected) or (
                isinstance(value, bool) and bool not in expected
            ):
                problems.append(f"model.{f.name}={value!r} must be of type {f.type}")
        if not problems:
            given_head_dim = self.head_dim
            if self.init not in INIT_SCHEMES:
                problems.append(f"model.init={self.init!r} is not one of {list(INIT_SCHEMES)}")
            if self.mlp not in MLP_KINDS:
                problems.append(f"model.mlp={self.mlp!r} is not one of {list(MLP_KINDS)}")
            if self.norm not in NORM_KINDS:
                problems.append(f"model.norm={self.norm!r} is not one of {list(NORM_KINDS)}")
            elif self.norm == "rmsnorm" and not hasattr(nn, "RMSNorm"):
                problems.append("model.norm='rmsnorm' needs torch >= 2.4")
            if self.head_dim is not None:
                if self.head_dim < 2 or self.head_dim % 2 or self.d_model % self.head_dim:
                    problems.append(
                        f"model.head_dim={self.head_dim} must be even (RoPE) and divide "
                        f"model.d_model={self.d_model}"
                    )
                else:
                    self.n_head = self.d_model // self.head_dim
            elif self.n_head >= 1:  # (n_head < 1 is reported below with the other sizes)
                if self.d_model % self.n_head:
                    problems.append(
                        f"model.d_model={self.d_model} is not divisible by "
                        f"model.n_head={self.n_head}"
                    )
                elif (self.d_model // self.n_head) % 2:
                    problems.append(
                        f"model.d_model/model.n_head={self.d_model // self.n_head} must be even "
                        "(RoPE)"
                    )
                else:
                    self.head_dim = self.d_model // self.n_head
            for key in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "n_loops",
                        "mlp_multiple_of"):
                if getattr(self, key) < 1:
                    problems.append(f"model.{key}={getattr(self, key)} must be >= 1")
            if not self.init_scale > 0.0:
                problems.append(f"model.init_scale={self.init_scale} must be > 0")
            if not problems:
                problems += self._parametrization_problems(given_head_dim)
            if not 0.0 <= self.dropout < 1.0:
                problems.append(f"model.dropout={self.dropout} must lie in [0, 1)")
        if problems:
            raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

    def _parametrization_problems(self, given_head_dim: int | None) -> list[str]:
        if self.parametrization not in mup.PARAMETRIZATIONS:
            return [f"model.parametrization={self.parametrization!r} is not one of "
                    f"{list(mup.PARAMETRIZATIONS)}"]
        if self.base_width is not None and self.base_width < 1:
            return [f"model.base_width={self.base_width} must be >= 1"]
        if self.parametrization == "sp":
            return [f"model.{key}={getattr(self, key)} applies only with model.parametrization=mup"
                    for key in ("mup_input_mult", "mup_output_mult") if getattr(self, key) != 1.0]
        if self.base_width is None:
            return [f"model.base_width={self.base_width} must be an integer >= 1 with "
                    "model.parametrization=mup (the width at which muP equals SP)"]
        problems = [f"model.{key}={getattr(self, key)} must be > 0"
                    for key in ("mup_input_mult", "mup_output_mult") if not getattr(self, key) > 0]
        if self.base_head_dim is None:
            # A d_model sweep with model.head_dim set keeps the heads' width, else their number.
            if given_head_dim is not None:
                self.base_head_dim = given_head_dim
            elif self.base_width % self.n_head:
                problems.append(f"model.base_width={self.base_width} is not divisible by "
                                f"model.n_head={self.n_head}")
            else:
                self.base_head_dim = self.base_width // self.n_head
        return problems

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: mlp_ratio x d_model, times 2/3 for SwiGLU (three matrices
        instead of two: 2/3 keeps the parameter count of a GELU MLP), then rounded to the nearest
        multiple of ``mlp_multiple_of``. Why round: a width like 341 (d_model=128) runs the
        matmuls ~7% slower per FLOP on a CPU than 344 (measured, scripts/bench_model.py), and
        GPUs want multiples of 8 too. ``mlp_multiple_of=1`` gives the widths of checkpoints
        written before the rounding (341 for d_model=128)."""
        hidden = int(self.mlp_ratio * self.d_model)
        if self.mlp == "swiglu":
            hidden = int(2 * hidden / 3)
        m = self.mlp_multiple_of
        return max(m, m * math.floor(hidden / m + 0.5))


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [seq_len, head_dim/2] of the angle of frequency i at each position, built once
    per model (the rotation itself is ``ops.rotary_pairs`` / ``ops.rotary_qkv``)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def causal_mask(n_query: int, n_key: int, start: int, device: torch.device) -> torch.Tensor:
    """[n_query, n_key] True where query start+i may attend to key j (j <= start+i)."""
    rows = torch.arange(start, start + n_query, device=device).unsqueeze(1)
    return torch.arange(n_key, device=device) <= rows


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-5)
    return nn.LayerNorm(cfg.d_model, bias=False)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.scale = mup.attention_scale(cfg)  # None: SDPA's 1/sqrt(head_dim)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        rows = pair_interleave(cfg.n_head, cfg.head_dim)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_rows_inverse", torch.argsort(rows), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: RopeSlice,
        need_weights: bool = False,
        cache: KVCache | None = None,
        slot: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``rope``: the tables of these T tokens' positions. With a ``cache`` the keys and values
        of earlier tokens come from it and the new ones are stored in ``slot``."""
        B, T, C = x.shape
        # The explicit path keeps the plain formulas for their double backward; without grad
        # (the monitors' forward passes) the fused rotation is the same function, and cheaper.
        plain = (need_weights and torch.is_grad_enabled()) or torch.compiler.is_compiling()
        if (not plain and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled(x.device.type)):
            # q and k come out with their rotation pairs adjacent (a permutation of the weight's
            # rows; the parameter keeps its layout): one complex multiply rotates them.
            q, k, v = rotary_pairs(x, self.qkv.weight, self.pair_rows, self.pair_rows_inverse, rope,
                                   self.n_head)
        else:
            qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
            q, k, v = rotary_qkv(qkv, rope.cos, rope.sin, plain=plain)
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.append(slot, k, v)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1)
            scores = scores / math.sqrt(self.head_dim) if self.scale is None else scores * self.scale
            allowed = causal_mask(T, k.shape[-2], start, x.device)
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            y = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                   scale=self.scale)
            else:  # decoding: one new token sees every stored key, several need the offset mask
                mask = None if T == 1 else causal_mask(T, k.shape[-2], start, x.device)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                   scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), weights


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        width = cfg.mlp_hidden
        self.up = nn.Linear(cfg.d_model, 2 * width if cfg.mlp == "swiglu" else width, bias=False)
        self.down = nn.Linear(width, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, plain: bool = False) -> torch.Tensor:
        if self.kind == "swiglu":  # up.weight holds [gate; value] rows: one matmul per half
            w = self.up.weight
            half = w.shape[0] // 2
            h = swiglu(F.linear(x, w[:half]), F.linear(x, w[half:]), plain)
        else:
            h = F.gelu(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = None if cfg.mlp == "none" else MLP(cfg)
        self.norm2 = None if self.mlp is None else make_norm(cfg)
        # None without dropout: on the default model a no-op module call per residual branch
        # cost ~1% of the training step.
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None

    def forward(self, x, rope, need_weights=False, cache=None, slot=0):
        """``need_weights``: the explicit path (attention weights, plain formulas throughout)."""
        a, weights = self.attn(self.norm1(x), rope, need_weights, cache, slot)
        x = x + (a if self.drop is None else self.drop(a))
        if self.mlp is not None:
            m = self.mlp(self.norm2(x), plain=need_weights and torch.is_grad_enabled())
            x = x + (m if self.drop is None else self.drop(m))
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
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None  # as in Block
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_pairs", pair_table(cos, sin, cfg.n_head), persistent=False)
        if cfg.init == "gpt2":
            self._init_gpt2()
        mup.scale_hidden_init(self)
        # Python floats, 1.0 under SP: the default forward multiplies by nothing.
        self.input_mult, self.readout_mult = mup.input_mult(cfg), mup.readout_mult(cfg)
        if cfg.init_scale != 1.0:
            weights = {id(m.weight): m.weight for m in self.modules()
                       if isinstance(m, (nn.Linear, nn.Embedding))}  # tied: scaled once
            with torch.no_grad():
                for w in weights.values():
                    w.mul_(cfg.init_scale)
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
        if self.input_mult != 1.0:
            x = x * self.input_mult
        return x if self.drop is None else self.drop(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
        item_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
        return_attn: bool = False,
        cache: KVCache | None = None,
    ):
        """Logits [B, T, vocab]. With a ``cache`` (``generate``), ``input_ids`` are the tokens after
        the ones the cache holds, and the logits are theirs."""
        start = 0 if cache is None else cache.pos
        end = start + input_ids.shape[1]
        if end > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {end} exceeds model.max_seq_len={self.config.max_seq_len}"
            )
        rope = RopeSlice(self.rope_cos[start:end], self.rope_sin[start:end], self.rope_pairs[start:end])
        x = self.embed(input_ids, item_vectors, item_mask)
        hidden, attn = [x], []
        for slot, block in enumerate(self.block_schedule()):
            x, weights = block(x, rope, return_attn, cache, slot)
            hidden.append(x)
            attn.append(weights)
        if cache is not None:
            cache.advance(end - start)
        x = self.norm(x)
        logits = self.head(x if self.readout_mult == 1.0 else x * self.readout_mult)
        if not (return_hidden or return_attn):
            return logits
        return {"logits": logits, "hidden": hidden, "attn": attn if return_attn else None}

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | None = None,
        use_cache: bool = True,
    ) -> torch.LongTensor:
        """Continue each row of ``input_ids`` [B, T] by up to ``max_new_tokens`` tokens and return
        [B, T + n]: greedy at ``temperature=0``, else sampled from softmax(logits / temperature)
        over the ``top_k`` likeliest tokens, drawing from ``generator``. Rows that emit
        ``eos_token_id`` are padded with it; generation stops when every row has. With the
        key/value cache (``use_cache``) a new token costs O(T); past ``max_seq_len`` the context
        is cropped to its last ``max_seq_len`` tokens and the window is recomputed each step.
        Runs in eval mode (the model's mode is restored) and without gradients."""
        return generate(self, input_ids, max_new_tokens, temperature, top_k, generator,
                        eos_token_id, use_cache)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward = 3x forward), as in nanoGPT/PaLM: 6 per
        weight of every matrix multiply applied to the token (blocks count once per loop; the
        head counts even when tied; the embedding lookup and the norms' scales do not) plus the
        attention score and value products, 12 x layers x d_model x seq_len."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        block_matrices = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)
        applied_weights = block_matrices * cfg.n_loops + cfg.vocab_size * cfg.d_model
        if self.item_proj is not None:
            applied_weights += self.item_proj.weight.numel()
        return int(6 * applied_weights + 12 * cfg.n_layer * cfg.n_loops * cfg.d_model * T)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only: embeddings and linear weights decay, norms do not.
        Under muP the hidden matrices form a third group with their own lr scale and decay."""
        return mup.optimizer_groups(self, weight_decay)
