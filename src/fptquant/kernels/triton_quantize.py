"""Triton kernel of :mod:`.quantize`: one program per block of rows, two passes over K (amax, then codes)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .quantize import QMAX, QMIN


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


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, M, K, stride_x, stride_q, clip, static_amax, eps_amax,
    STATIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
    INTERPRET: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_K)
    x_row = x_ptr + rows[:, None].to(tl.int64) * stride_x
    q_row = q_ptr + rows[:, None].to(tl.int64) * stride_q
    if ONE_TILE:  # the whole row fits one tile: read it once
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STATIC:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32) + static_amax
        else:
            amax = tl.maximum(tl.max(tl.abs(x), axis=1) * clip, eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + rows, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=row_ok)
        q = tl.minimum(tl.maximum(_rint(x * inv[:, None], INTERPRET), -8.0), 7.0)
        tl.store(q_row + cols[None, :], q.to(tl.float16).to(q_ptr.dtype.element_ty), mask=mask)
    else:  # two passes over K: amax, then codes (the second read mostly hits L2)
        if STATIC:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32) + static_amax
        else:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                mask = row_ok[:, None] & (k + cols[None, :] < K)
                x = tl.load(x_row + k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
            amax = tl.maximum(amax * clip, eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + rows, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=row_ok)
        for k in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & (k + cols[None, :] < K)
            x = tl.load(x_row + k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(_rint(x * inv[:, None], INTERPRET), -8.0), 7.0)
            tl.store(q_row + k + cols[None, :], q.to(tl.float16).to(q_ptr.dtype.element_ty), mask=mask)


def quantize_tile(k: int) -> tuple[int, int, int]:
    """``(rows a program, columns a tile, warps)`` for rows of ``k`` values: the whole row in one tile up to
    32768 values (two passes ran 70B's K = 28672 at 57% of copy bandwidth), about 8192 values a program."""
    whole = triton.next_power_of_2(k)
    block_k = whole if whole <= 32768 else 4096
    block_m = max(1, min(32, 8192 // block_k))
    return block_m, block_k, 16 if block_m * block_k >= 32768 else 8 if block_m * block_k >= 8192 else 4


def quantize_rows(
    x: torch.Tensor,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    codes_dtype=torch.int8,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_m`` rows a program and ``num_warps`` (default: :func:`quantize_tile`) are for the benchmark's
    tile sweep."""
    assert QMAX == 7 and QMIN == -8
    M, K = x.shape
    codes = torch.empty((M, K), dtype=codes_dtype, device=x.device)
    scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    default_m, block_k, default_warps = quantize_tile(K)
    block_m = block_m or default_m
    num_warps = num_warps or default_warps
    grid = (triton.cdiv(M, block_m),)
    _quantize_rows_kernel[grid](
        x, codes, scales, M, K, x.stride(0), codes.stride(0), float(clip_ratio),
        QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS,
        STATIC=static_scale is not None, BLOCK_M=block_m, BLOCK_K=block_k,
        ONE_TILE=block_k >= K, INTERPRET=interpreting(), num_warps=num_warps,
    )  # fmt: skip
    return codes, scales[:, None]
