"""Rotary embedding and SwiGLU as hand-written autograd functions: the same math as the plain
tensor formulas (``rope_reference``, ``silu(gate) * value``), in fewer passes over memory.

Why: on a CPU, and on a GPU without ``torch.compile``, these elementwise ops are memory-bound, and
autograd's default graph for them costs more than their FLOPs. The plain RoPE formula (chunk,
four multiplies, an add and a subtract, a cat, then the copies of the qkv permute) took ~5% of a
``gpt_small`` training step, SwiGLU's chunk backward another cat. Here:

- ``rotary_qkv`` reads the qkv projection once and writes q, k (rotated) and v as contiguous
  [B, H, T, h] tensors for SDPA; its backward is the inverse rotation (RoPE is orthogonal)
  written straight into the qkv gradient's layout. It saves no activations.
- ``swiglu`` takes the gate and value as two contiguous tensors (see its docstring) and
  allocates three large tensors per call, not five.

Under ``torch.compile`` the plain formulas are used instead: inductor fuses them itself. The
functions here have no double backward (they raise); the model's explicit attention path
(``return_attn=True``) uses the plain formulas throughout and has one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of a [..., T, h] tensor by position (GPT-NeoX /
    Llama convention); ``cos``/``sin`` are [T, h/2]. The definition the fast path must equal."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _rotate_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor,
                 inverse: bool) -> None:
    """out = rope(x) (or its inverse) in four kernels, each over half the head."""
    half = x.shape[-1] // 2
    x1, x2, o1, o2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    sign = 1.0 if inverse else -1.0
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=sign)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin, value=-sign)


class _RotaryQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, T, _, H, h = qkv.shape
        src = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, h], a view
        q, k, v = (qkv.new_empty(B, H, T, h) for _ in range(3))
        _rotate_into(src[0], cos, sin, q, inverse=False)
        _rotate_into(src[1], cos, sin, k, inverse=False)
        v.copy_(src[2])
        ctx.save_for_backward(cos, sin)
        return q, k, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        # Three separate gradients: no stack of them into one tensor before the copy below.
        cos, sin = ctx.saved_tensors
        B, H, T, h = grad_q.shape
        grad_qkv = grad_q.new_empty(B, T, 3, H, h)
        dst = grad_qkv.permute(2, 0, 3, 1, 4)
        _rotate_into(grad_q, cos, sin, dst[0], inverse=True)
        _rotate_into(grad_k, cos, sin, dst[1], inverse=True)
        dst[2].copy_(grad_v)
        return grad_qkv, None, None


def rotary_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plain: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv``: the projection's output viewed [B, T, 3, H, h] (rows q; k; v, heads contiguous);
    ``cos``/``sin``: [T, h/2] tables of the positions of these T tokens. Returns q, k, v as
    [B, H, T, h], q and k rotated. ``plain``: the reference formula (differentiable twice)."""
    cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
    if plain or torch.compiler.is_compiling():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return rope_reference(q, cos, sin), rope_reference(k, cos, sin), v
    return _RotaryQKV.apply(qkv, cos, sin)


def pair_interleave(n_head: int, head_dim: int) -> torch.Tensor:
    """Row order of the qkv weight [q; k; v] under which each head's RoPE pairs (j, j + h/2) of q
    and k come out of the projection adjacent, as (real, imaginary) pairs: ``rotary_pairs``
    rotates them with one complex multiply. v keeps its rows. Attention scores are unchanged: q
    and k of a head are permuted alike, and a dot product does not see the order of its terms."""
    half = head_dim // 2
    within = torch.arange(head_dim).view(2, half).t().reshape(-1)  # 0, h/2, 1, h/2 + 1, ...
    rows = (torch.arange(n_head)[:, None] * head_dim + within).reshape(-1)
    width = n_head * head_dim
    return torch.cat([rows, rows + width, torch.arange(2 * width, 3 * width)])


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    return torch.view_as_complex(x.unflatten(-1, (x.shape[-1] // 2, 2)))


class _RotaryPairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cis: torch.Tensor):
        B, T, _, H, h = qkv.shape
        qk = qkv.new_empty(B, T, 2, H, h)
        torch.mul(_as_complex(qkv[:, :, :2]), cis, out=_as_complex(qk))
        ctx.save_for_backward(cis)
        return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        (cis,) = ctx.saved_tensors
        B, H, T, h = grad_q.shape
        grad_qkv = grad_q.new_empty(B, T, 3, H, h)
        inverse = cis.conj().resolve_conj()
        for i, grad in enumerate((grad_q, grad_k)):
            torch.mul(_as_complex(grad.transpose(1, 2)), inverse[:, i],
                      out=_as_complex(grad_qkv[:, :, i]))
        grad_qkv[:, :, 2].copy_(grad_v.transpose(1, 2))
        return grad_qkv, None


class RopeSlice:
    """The rotation tables of the T positions of one forward pass, shared by its layers: ``cos``
    and ``sin`` [T, h/2], and the complex table of ``rotary_pairs``, built on first use."""

    __slots__ = ("cos", "sin", "_pairs")

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.cos, self.sin, self._pairs = cos, sin, None

    def pairs(self, n_head: int, dtype: torch.dtype) -> torch.Tensor:
        """cos + i sin, [T, 2, n_head, h/2] (q and k of every head: a contiguous operand)."""
        key = (n_head, dtype)
        if self._pairs is None or self._pairs[0] != key:
            cis = torch.complex(self.cos.to(dtype), self.sin.to(dtype))
            self._pairs = (key, cis[:, None, None, :].expand(-1, 2, n_head, -1).contiguous())
        return self._pairs[1]


def rotary_pairs(
    qkv: torch.Tensor, rope: RopeSlice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoPE for a projection computed with the rows of ``pair_interleave`` (float32/float64):
    ``qkv`` viewed [B, T, 3, H, h]; returns q, k, v as [B, H, T, h] views for SDPA, q and k in
    the interleaved feature order. One complex multiply over q and k together (inner loops of
    H x h/2 numbers) where ``rotary_qkv`` runs eight kernels over half-heads; v is not copied."""
    return _RotaryPairs.apply(qkv, rope.pairs(qkv.shape[-2], qkv.dtype))


class _SwiGLU(torch.autograd.Function):
    # Three [tokens, width] tensors allocated per call instead of five: the activation is
    # recomputed in the backward into the buffer the gate's gradient was computed from. On a CPU
    # each fresh large tensor costs page faults, which were as expensive as the kernels here.
    @staticmethod
    def forward(ctx, gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, value)
        return F.silu(gate).mul_(value)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gate, value = ctx.saved_tensors
        scratch = grad * value
        grad_gate = torch.ops.aten.silu_backward(scratch, gate)
        grad_value = torch.ops.aten.silu.out(gate, out=scratch).mul_(grad)
        return grad_gate, grad_value


def swiglu(gate: torch.Tensor, value: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """``silu(gate) * value``. Pass ``gate`` and ``value`` as separate contiguous tensors (two
    matmuls on the halves of the up-projection's weight), not as views of one [gate | value]
    tensor: CPU elementwise kernels on the half-width views ran 2-4x slower than on contiguous
    tensors (silu 4.9 ms vs 1.2 ms on [16384, 344], measured)."""
    if plain or torch.compiler.is_compiling():
        return F.silu(gate) * value
    return _SwiGLU.apply(gate, value)
