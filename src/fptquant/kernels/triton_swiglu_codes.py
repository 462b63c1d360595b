"""The epilogue of a gate+up GEMM that writes down_proj's INT4 codes instead of gate and up (:mod:`.w4a4_swiglu`).

The gate and up weight rows alternate (:func:`.w4a4_swiglu.interleave_gate_up`), so each output tile holds
matching gate and up columns side by side: the tile is scaled and rounded as the two linears would return
it, split into its even (gate) and odd (up) columns, and ``silu(gate) · up`` is quantized with the static
scale of down_proj's input. The product never goes to memory, nor do gate and up.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_quantize import _int4_codes, _round_to, _swiglu


@triton.jit
def _swiglu_codes_epilogue(
    acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, q_ptr, stride_qm, first_code, inv,
    HAS_BIAS: tl.constexpr, ROUND_TY: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """``acc``: an ``(BM, BN)`` int32 tile of interleaved gate/up sums (rows ``rm``, columns ``rn``, ``rn[0]``
    even). Stores the ``(BM, BN / 2)`` codes of ``silu(g) · u`` at columns ``first_code ...`` of ``q_ptr``."""
    BM: tl.constexpr = acc.shape[0]
    BN: tl.constexpr = acc.shape[1]
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(_round_to(out, ROUND_TY, INTERPRET), (BM, BN // 2, 2)))
    codes = _int4_codes(_swiglu(gate, up) * inv, tl.int8)
    cols = first_code + tl.arange(0, BN // 2)
    mask = (rm < M)[:, None] & (cols < N // 2)[None, :]
    tl.store(q_ptr + rm[:, None].to(tl.int64) * stride_qm + cols[None, :], codes, mask=mask)
