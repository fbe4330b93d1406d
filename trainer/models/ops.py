"""RoPE and SwiGLU as hand-written autograd functions: the same math as the plain tensor formulas
(``rope_reference``, ``silu(gate) * value``), in fewer kernels and fewer passes over memory.

Why: on a CPU, and on a GPU without ``torch.compile``, these elementwise ops are memory- and
overhead-bound, and autograd's default graph for them costs more than their FLOPs. The plain RoPE
formula (chunk, four multiplies, an add and a subtract, a cat, then the copies of the qkv permute)
took ~5% of a ``gpt_small`` training step, SwiGLU on views of one [gate | value] tensor ~5% more.
Here:

- ``rotary_pairs`` (float32/float64): the qkv projection and RoPE in one autograd node; the
  projection runs with the weight's rows in ``pair_interleave`` order so each head's rotation
  pairs come out side by side, q and k are rotated in place by one complex multiply, and q, k, v
  stay views of the projection's output.
- ``rotary_qkv`` (other dtypes, e.g. under autocast): reads the projection once and writes q, k
  (rotated) and v as contiguous [B, H, T, h] tensors; its backward is the inverse rotation.
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
    """A [..., h] real tensor as [..., h/2] complex (pairs of neighbours): a view whenever the
    layout allows one (last dimension dense, other strides and offset even), whatever the order
    of the other dimensions (SDPA's gradients of multi-head q and k come in the [B, T, H, h]
    layout of their inputs, seen as [B, H, T, h]); else a copy."""
    *lead, h = x.shape
    try:
        return torch.view_as_complex(x.view(*lead, h // 2, 2))
    except RuntimeError:  # e.g. an odd stride: a gradient that came through a cat or a slice
        return torch.view_as_complex(x.contiguous().view(*lead, h // 2, 2))


class _PairedProjection(torch.autograd.Function):
    """The qkv projection with the weight's rows in ``pair_interleave`` order, and RoPE on its
    output: q and k rotated in place by one complex multiply (the output is fresh, and the
    matmul's backward needs its inputs, not its output), so the forward allocates nothing beyond
    the projection and q, k, v stay views of one tensor, as in a plain attention block. One
    autograd node instead of four (row gather, matmul, rotation, their views).

    Written for a small model, where a Python-level tensor op costs about as much as a small
    kernel: ``constants`` is one plain tuple (the row order and its inverse, then
    ``RopeSlice.pairs``: the rotation, and the inverse rotations of q and k in the layout of
    their gradients), the tables made once per forward pass, and the backward runs no op it
    could do without."""

    @staticmethod
    def forward(ctx, x, weight, constants):
        rows, _, cis, _, _ = constants
        paired = weight.index_select(0, rows)
        qkv = F.linear(x, paired)
        B, T, _ = qkv.shape
        heads = cis.shape[-2]
        torch.view_as_complex(qkv.view(B, T, 3, heads, -1, 2).narrow(2, 0, 2)).mul_(cis)
        ctx.save_for_backward(x, paired)
        ctx.constants = constants  # buffers and tables: no autograd state to keep
        return qkv.view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        # The three gradients go straight into the projection's gradient: no stack of them first.
        x, paired = ctx.saved_tensors
        _, inverse_rows, _, conj_q, conj_k = ctx.constants
        B, H, T, h = grad_q.shape
        pairs = conj_q.new_empty((B, T, 3, H, h // 2))  # complex: q's and k's rows are pairs
        grad_qkv = torch.view_as_real(pairs).view(B, T, 3, H, h)
        torch.mul(_as_complex(grad_q), conj_q, out=pairs.select(2, 0).transpose(1, 2))
        torch.mul(_as_complex(grad_k), conj_k, out=pairs.select(2, 1).transpose(1, 2))
        grad_qkv.select(2, 2).copy_(grad_v.transpose(1, 2))
        flat = grad_qkv.view(B * T, 3 * H * h)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(flat, paired).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(flat.t(), x.reshape(B * T, -1)).index_select(0, inverse_rows)
        return grad_x, grad_weight, None


def pair_table(cos: torch.Tensor, sin: torch.Tensor, n_head: int) -> torch.Tensor:
    """cos + i sin laid out for ``rotary_pairs``, and its conjugate (the inverse rotation the
    backward applies): [T, 2, 2, n_head, h/2, 2] real, [:, 0] the rotation and [:, 1] its
    inverse, each for q and k of every head (contiguous operands). A model keeps one as a
    buffer (real, so ``.double()``, device moves and DDP's buffer broadcast treat it like any
    other)."""
    cis = torch.stack([torch.stack([cos, sin], dim=-1), torch.stack([cos, -sin], dim=-1)], dim=1)
    return cis[:, :, None, None].expand(-1, -1, 2, n_head, -1, -1).contiguous()


class RopeSlice:
    """The rotation tables of the T positions of one forward pass, shared by its layers: ``cos``
    and ``sin`` [T, h/2], and ``table``, the slice of a model's ``pair_table`` (built here on
    first use when the model has none)."""

    __slots__ = ("cos", "sin", "_table", "_complex")

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, table: torch.Tensor | None = None) -> None:
        self.cos, self.sin, self._table, self._complex = cos, sin, table, None

    def pairs(self, n_head: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In the complex dtype of ``dtype``: the rotation [T, 2, n_head, h/2] of q and k (pairs
        adjacent, as the forward applies it), and the inverse rotations of q and of k
        [n_head, T, h/2] (as the backward applies them to the [B, n_head, T, h/2] gradients).
        Made once per forward pass, whatever the number of layers."""
        cached = self._complex
        if cached is not None and cached[0].shape[2] == n_head and cached[0].dtype == _COMPLEX.get(dtype):
            return cached
        real = self._table
        if real is None or real.shape[3] != n_head:
            real = self._table = pair_table(self.cos, self.sin, n_head)
        if real.dtype != dtype:
            real = self._table = real.to(dtype)
        table = torch.view_as_complex(real)
        inverse = table[:, 1].permute(1, 2, 0, 3)  # [2, H, T, h/2]
        self._complex = (table[:, 0], inverse[0], inverse[1])
        return self._complex


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def rotary_pairs(
    x: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, inverse_rows: torch.Tensor,
    rope: RopeSlice, n_head: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The qkv projection of ``x`` by ``weight`` [3C, C] (rows q; k; v) with RoPE, for float32/64:
    the projection runs with the rows ``rows`` (``pair_interleave``; ``inverse_rows`` undoes it),
    so q and k come out in that interleaved feature order (attention scores do not change).
    Returns q, k, v as [B, H, T, h] views for SDPA."""
    return _PairedProjection.apply(x, weight, (rows, inverse_rows, *rope.pairs(n_head, x.dtype)))


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
