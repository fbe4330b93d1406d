"""Random numbers for a whole range of rows at once, each row still its own independent stream.

``data_mixers.base.row_rng`` builds one generator per (step, row): exact, but building a
generator costs ~10-20 us, which at 64 rows a step is most of a generated sampler's time. Here
every row of a step lives in one Philox4x64 counter space instead:

* the key is ``(seed, stream)``; counter word 3 holds the step;
* row ``r`` owns counter blocks ``[r * K, (r + 1) * K)`` of word 0, where ``K`` blocks of four
  64-bit words cover the row's draws (fixed by the caller's widths, not by the row range asked).

So one generator positioned at block ``start * K`` draws rows ``start .. stop - 1`` in a single
vectorised call, and row ``r`` gets the same numbers whether it is asked alone, inside a rank's
share or inside the whole batch: the batch stays a pure function of (seed, step, row, config),
resume is exact, and data-parallel ranks take disjoint rows of the same global batch.

Normals come from the row's own uniforms by Box-Muller (two uniforms, two normals), which always
consumes the same count; numpy's ziggurat rejects a variable number of draws, which would shift
the next row's stream.
"""

from __future__ import annotations

import threading

import numpy as np

_MASK64 = 0xFFFFFFFFFFFFFFFF
_local = threading.local()


def _bit_generator() -> np.random.Philox:
    """One Philox per thread, repositioned by setting its state (~5 us) rather than built anew
    (~20 us, most of it gathering OS entropy the key then overrides). Per thread, so that
    concurrent callers never interleave their draws."""
    if not hasattr(_local, "philox"):
        _local.philox = np.random.Philox(key=[0, 0])
        _local.generator = np.random.Generator(_local.philox)
    return _local.philox


def row_draws(
    seed: int, stream: int, step: int, start: int, stop: int, n_uniforms: int, n_normals: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Uniforms in [0, 1) ``[stop - start, n_uniforms]`` and, when ``n_normals``, standard normals
    ``[stop - start, n_normals]`` (float32) for rows ``start .. stop - 1`` of ``step``.

    A row's numbers depend on (seed, stream, step, row, n_uniforms, n_normals) only."""
    n_pairs = (n_normals + 1) // 2
    width = n_uniforms + 2 * n_pairs
    blocks = max(1, -(-width // 4))
    philox = _bit_generator()
    philox.state = {
        "bit_generator": "Philox",
        "state": {
            "counter": np.array([start * blocks, 0, 0, step & _MASK64], dtype=np.uint64),
            "key": np.array([seed & _MASK64, stream & _MASK64], dtype=np.uint64),
        },
        "buffer": np.zeros(4, dtype=np.uint64),
        "buffer_pos": 4,
        "has_uint32": 0,
        "uinteger": 0,
    }
    draws = _local.generator.random((stop - start, 4 * blocks))
    if not n_normals:
        return draws[:, :n_uniforms], None
    pairs = draws[:, n_uniforms:width].reshape(-1, 2, n_pairs)
    # 1 - u lies in (0, 1], so the logarithm is finite; it stays in float64 to keep the tails
    # (|z| up to ~8.6). The angle only sets a direction: float32 trig is ~8x faster here and
    # exact to float32, the precision the item vectors are stored in.
    radius = np.sqrt(-2.0 * np.log1p(-pairs[:, 0])).astype(np.float32)
    angle = ((2.0 * np.pi) * pairs[:, 1]).astype(np.float32)
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return draws[:, :n_uniforms], normals[:, :n_normals]
