"""Rotary embedding and SwiGLU as hand-written autograd functions: the same math as the plain
tensor formulas (``rope_reference``, ``silu(gate) * value``), in fewer passes over memory.

Why: on a CPU, and on a GPU without ``torch.compile``, these elementwise ops are memory-bound, and
autograd's default graph for them costs more than their FLOPs. The plain RoPE formula (chunk,
four multiplies, an add and a subtract, a cat, then the copies of the qkv permute) took ~5% of a
``gpt_small`` training step, SwiGLU's chunk backward another cat. Here:

- ``rotary_qkv`` reads the qkv projection once and writes q, k (rotated) and v as contiguous
  [B, H, T, h] tensors for SDPA; its backward is the inverse rotation (RoPE is orthogonal)
  written straight into the qkv gradient's layout. It saves no activations.
- ``swiglu`` writes the gate and value gradients into one buffer instead of concatenating them.

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


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        h, act = ctx.saved_tensors
        gate, value = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_value = grad_h.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_value)
        torch.ops.aten.silu_backward.grad_input(grad * value, gate, grad_input=grad_gate)
        return grad_h


def swiglu(h: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """``silu(gate) * value`` for ``h = [gate | value]`` on the last dimension."""
    if plain or torch.compiler.is_compiling():
        gate, value = h.chunk(2, dim=-1)
        return F.silu(gate) * value
    return _SwiGLU.apply(h)
