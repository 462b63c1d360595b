"""Triton kernel of :mod:`.quantize`: one program per block of rows, each row read once (up to 32768 values)
or in two passes (amax, then codes). GATED: the rows are formed from a gate and an up projection as they are
read (:func:`.quantize.gated_product`), so a gated MLP's product never goes to memory."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..errors import ConfigError
from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .quantize import ONE_PASS_ROW, QMAX, QMIN
from .triton_pdl import programmatic_launch, release_dependents, wait_for_inputs


@triton.jit
def _rint(y, INTERPRET: tl.constexpr):
    """Round half to even. libdevice's rint (one cvt.rni) on the GPU; the interpreter lacks it, so there a
    floor-based form (on the GPU that form would let the compiler fuse y's product into y + 0.5 as an FMA)."""
    if INTERPRET:
        r = tl.floor(y + 0.5)
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        r = tl.where(((r - y) == 0.5) & odd, r - 1.0, r)
    else:
        r = libdevice.rint(y)
    return r


TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

# 1.5 * 2^23: adding it leaves round-half-even(v) in a float32's low mantissa bits
ROUNDING_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _int4_codes(v, CODES_TY: tl.constexpr):
    """``clamp(round_half_even(v), -8, 7)`` as ``CODES_TY`` (int8 or e4m3). Clamping first (to integers) gives
    the same codes, and keeps the compiler from fusing v's product into the magic add as an FMA. The sum's
    float32 bits are ``0x4B400000 + round(v)``, so for int8 codes the low byte is the two's complement code:
    no rounding or conversion instruction (those run at a quarter or less of the float32 rate on Hopper)."""
    r = tl.minimum(tl.maximum(v, -8.0), 7.0) + ROUNDING_MAGIC
    if CODES_TY == tl.int8:
        return r.to(tl.int32, bitcast=True).to(tl.int8)
    return (r - ROUNDING_MAGIC).to(CODES_TY)


@triton.jit
def _round_to(v, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 -> the nearest ``DTYPE`` value (ties to even); the interpreter's bfloat16 cast truncates, so it
    gets the rounding spelled out on the bits."""
    if INTERPRET and DTYPE == tl.bfloat16:
        return _upper_half(_bf16_rounded(v))
    return v.to(DTYPE)


@triton.jit
def _bf16_rounded(v):
    """float32 -> the nearest bfloat16 value (ties to even), kept as float32: integer operations only (a
    conversion runs at a quarter of the float32 rate on Hopper, and the gated kernels round twice a value)."""
    bits = v.to(tl.uint32, bitcast=True)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _upper_half(v):
    """The upper 16 bits of float32 ``v`` as bfloat16: ``v`` truncated to bf16 (a byte move, no conversion)."""
    return (v.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _swiglu(g, u):
    """``silu(g) · u`` as float32 holding values of ``g``'s dtype, rounded where the unfused ``F.silu(g) * u``
    rounds (silu, then the product). The division is the approximate one: an IEEE division per value made
    the kernel bound by arithmetic, and it moves silu by an ulp of float32, rarely a bfloat16 rounding."""
    gf = g.to(tl.float32)
    act = gf / (1.0 + tl.exp(-gf))
    if g.dtype == tl.bfloat16:
        return _bf16_rounded(_bf16_rounded(act) * u.to(tl.float32))
    return (act.to(g.dtype).to(tl.float32) * u.to(tl.float32)).to(g.dtype).to(tl.float32)


@triton.jit
def _load_piece(x_row, u_row, row_ok, START: tl.constexpr, WIDTH: tl.constexpr, K, GATED: tl.constexpr):
    cols = START + tl.arange(0, WIDTH)
    mask = row_ok[:, None] & (cols < K)[None, :]
    x = tl.load(x_row + cols[None, :], mask=mask, other=0.0)
    if GATED:  # masked lanes: silu(0) · 0 = 0
        x = _swiglu(x, tl.load(u_row + cols[None, :], mask=mask, other=0.0))
    return x.to(tl.float32)


@triton.jit
def _normed(x, r, w_ptr, START: tl.constexpr, WIDTH: tl.constexpr, K, ROUND_TO: tl.constexpr, WEIGHT: tl.constexpr,
            INTERPRET: tl.constexpr):  # fmt: skip
    """The RMSNorm of a piece as the unfused model computes it (:func:`.norm_quantize.rms_norm_reference`):
    ``x · r`` rounded to the input's dtype, times the weight, rounded again."""
    y = x * r[:, None]
    if ROUND_TO != tl.float32:
        y = _round_to(y, ROUND_TO, INTERPRET).to(tl.float32)
    if WEIGHT:
        cols = START + tl.arange(0, WIDTH)
        y = tl.load(w_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)[None, :] * y
        if ROUND_TO != tl.float32:
            y = _round_to(y, ROUND_TO, INTERPRET).to(tl.float32)
    return y


@triton.jit
def _store_piece(q_row, x, inv, row_ok, START: tl.constexpr, WIDTH: tl.constexpr, K):
    cols = START + tl.arange(0, WIDTH)
    q = _int4_codes(x * inv[:, None], q_row.dtype.element_ty)
    mask = row_ok[:, None] & (cols < K)[None, :]
    tl.store(q_row + cols[None, :], q, mask=mask)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, u_ptr, w_ptr, q_ptr, s_ptr, M, K, stride_x, stride_u, stride_q, clip, static_amax, eps_amax, inv_k,
    norm_eps, STATIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
    W1: tl.constexpr, W2: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr, ROUND_TO: tl.constexpr,
    WEIGHT: tl.constexpr, INTERPRET: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """ONE_TILE: the row is read once, as up to three column pieces of power-of-two widths BLOCK_K, W1, W2
    (0: absent) that add up to K where K allows (576 = 512 + 64, 28672 = 16384 + 8192 + 4096), so no lane
    holds padding; else one padded piece. Otherwise two passes over K in BLOCK_K steps (amax, then codes).
    NORM (one tile only): the rows quantized are the RMSNorm of ``x`` (``eps`` ``norm_eps``, a weight with
    WEIGHT, the norm's output rounded to ROUND_TO), so the normalized activations never go to memory."""
    release_dependents(PDL)  # a decode GEMM after this may launch now and wait for the codes (.triton_pdl)
    wait_for_inputs(PDL)  # launched early itself: nothing is read or written before the kernel before it is done
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_row = x_ptr + rows[:, None].to(tl.int64) * stride_x
    u_row = u_ptr + rows[:, None].to(tl.int64) * stride_u
    q_row = q_ptr + rows[:, None].to(tl.int64) * stride_q
    if ONE_TILE:
        x0 = _load_piece(x_row, u_row, row_ok, 0, BLOCK_K, K, GATED)
        x1 = x0  # unused unless W1
        x2 = x0
        if W1 > 0:
            x1 = _load_piece(x_row, u_row, row_ok, BLOCK_K, W1, K, GATED)
        if W2 > 0:
            x2 = _load_piece(x_row, u_row, row_ok, BLOCK_K + W1, W2, K, GATED)
        if NORM:  # the row's mean square (masked lanes hold zeros), then the norm of every piece
            squares = tl.sum(x0 * x0, axis=1)
            if W1 > 0:
                squares += tl.sum(x1 * x1, axis=1)
            if W2 > 0:
                squares += tl.sum(x2 * x2, axis=1)
            r = tl.math.rsqrt(squares * inv_k + norm_eps)
            x0 = _normed(x0, r, w_ptr, 0, BLOCK_K, K, ROUND_TO, WEIGHT, INTERPRET)
            if W1 > 0:
                x1 = _normed(x1, r, w_ptr, BLOCK_K, W1, K, ROUND_TO, WEIGHT, INTERPRET)
            if W2 > 0:
                x2 = _normed(x2, r, w_ptr, BLOCK_K + W1, W2, K, ROUND_TO, WEIGHT, INTERPRET)
        amax = tl.max(tl.abs(x0), axis=1)
        if W1 > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(x1), axis=1))
        if W2 > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(x2), axis=1))
        if STATIC:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32) + static_amax
        else:
            amax = tl.maximum(amax * clip, eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + rows, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=row_ok)
        _store_piece(q_row, x0, inv, row_ok, 0, BLOCK_K, K)
        if W1 > 0:
            _store_piece(q_row, x1, inv, row_ok, BLOCK_K, W1, K)
        if W2 > 0:
            _store_piece(q_row, x2, inv, row_ok, BLOCK_K + W1, W2, K)
    else:  # two passes over K: amax, then codes (the second read mostly hits L2)
        if STATIC:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32) + static_amax
        else:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                x = _load_piece(x_row + k, u_row + k, row_ok, 0, BLOCK_K, K - k, GATED)
                amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
            amax = tl.maximum(amax * clip, eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + rows, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=row_ok)
        for k in range(0, K, BLOCK_K):
            x = _load_piece(x_row + k, u_row + k, row_ok, 0, BLOCK_K, K - k, GATED)
            _store_piece(q_row + k, x, inv, row_ok, 0, BLOCK_K, K - k)


def row_pieces(k: int) -> tuple[int, int, int]:
    """``k`` as at most three power-of-two widths, widest first, zeros for absent ones (``(512, 64, 0)`` for
    576), where one padded tile would waste over a third of its lanes; else, or where three widths do not add
    up to ``k``, ``(next power of two, 0, 0)`` (that piece is then padded). On the H100 (session 13) pieces
    raised K = 576 from 74% to 85% of copy bandwidth and cost 1536 and 14336 (89% to 71%, 99% to 93%)."""
    whole = triton.next_power_of_2(k)
    widths = [1 << b for b in range(k.bit_length() - 1, -1, -1) if k >> b & 1]
    if len(widths) > 3 or 2 * whole <= 3 * k:
        return whole, 0, 0
    return tuple(widths + [0] * (3 - len(widths)))


def quantize_tile(k: int) -> tuple[int, int, int, tuple[int, int, int] | None]:
    """``(rows a program, warps, widest piece, pieces)``: rows of up to ``ONE_PASS_ROW`` values are read once, as the
    pieces of :func:`row_pieces` (two passes ran 70B's K = 28672 at 57% of copy bandwidth, one tile 78%),
    about 8192 values a program; longer rows take two passes of 4096-wide tiles (pieces None)."""
    whole = triton.next_power_of_2(k)
    if whole > ONE_PASS_ROW:
        return 2, 8, 4096, None
    pieces = row_pieces(k)
    if whole == 2048:  # graph-timed sweep, K = 1536: 2 rows on 4 warps 102.6% / 100.5% of copy at M = 8192 / 32768,
        return 2, 4, pieces[0], pieces  # 4 rows on 8 warps 90.3% / 92.9%
    block_m = max(1, min(32, 8192 // whole))
    values = block_m * whole
    return block_m, 16 if values >= 32768 else 8 if values >= 8192 else 4, pieces[0], pieces


def quantize_rows(
    x: torch.Tensor,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    codes_dtype=torch.int8,
    block_m: int | None = None,
    num_warps: int | None = None,
    up: torch.Tensor | None = None,
    norm: tuple[torch.Tensor | None, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_m`` rows a program and ``num_warps`` (default: :func:`quantize_tile`) are for the benchmark's
    tile sweep. ``up``: the rows quantized are ``silu(x) · up`` (rows of ``up`` as strided as ``x``'s).
    ``norm``: ``(weight or None, eps)``, the rows quantized are the RMSNorm of ``x``
    (:func:`.norm_quantize.rms_norm_reference`); rows of at most ``ONE_PASS_ROW`` values."""
    assert QMAX == 7 and QMIN == -8
    M, K = x.shape
    codes = torch.empty((M, K), dtype=codes_dtype, device=x.device)
    scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    default_m, default_warps, block_k, pieces = quantize_tile(K)
    block_m = block_m or default_m
    num_warps = num_warps or default_warps
    grid = (triton.cdiv(M, block_m),)
    u = up if up is not None else x  # unread unless gated
    weight, eps = norm if norm is not None else (None, 0.0)
    if norm is not None and (pieces is None or up is not None):
        raise ConfigError(
            f"the fused RMSNorm takes rows of at most {ONE_PASS_ROW} values and no up projection (K = {K})"
        )
    pdl = programmatic_launch(x.device)
    _quantize_rows_kernel[grid](
        x, u, weight if weight is not None else x, codes, scales, M, K, x.stride(0), u.stride(0), codes.stride(0),
        float(clip_ratio), QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS, 1.0 / K, float(eps),
        STATIC=static_scale is not None, BLOCK_M=block_m, BLOCK_K=block_k, ONE_TILE=pieces is not None,
        W1=pieces[1] if pieces else 0, W2=pieces[2] if pieces else 0, GATED=up is not None, NORM=norm is not None,
        ROUND_TO=TRITON_DTYPES[x.dtype], WEIGHT=weight is not None, INTERPRET=interpreting(), PDL=pdl,
        num_warps=num_warps, launch_pdl=pdl,
    )  # fmt: skip
    return codes, scales[:, None]
