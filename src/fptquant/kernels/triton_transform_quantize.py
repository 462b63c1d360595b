"""Triton kernel of :mod:`.transform_quantize`: tiles of ``T`` tokens × one ``n1×n2`` block, 2-D dots only.

A tile holds the block ``b`` of ``T`` tokens as a ``(T·N1) × N2`` matrix (row ``(t, r)``, column ``c``;
``N1``, ``N2`` the factors padded to powers of two). Then ``Z = Xn · P2`` is one 2-D dot, and
``Y = (I_T ⊗ P1ᵀ) · Z`` another, against the block-diagonal ``I_T ⊗ P1ᵀ`` built once on the host: the
``T`` small products become one tensor-core-sized dot, at the price of multiplying zeros, which is cheap
here because the kernel is bound by memory. Neither dot needs a permute or a 3-D (batched) dot: a
permute between the dots gave wrong rows on the H100 under Triton 3.6, and the batched dots of the
previous version ran at 0.1–12% of copy bandwidth.

Programs are persistent (a grid of at most a few waves, each looping over token groups) so the factors
are read once per program. Rows that need two passes: dynamic scales over several tiles (``nb > 1``
blocks, or the columns split into ``CHUNK``-wide pieces to bound registers) first find the row's max
(recomputing the tiles) and then write the codes; the second read of ``x`` mostly hits L2. A static
scale, or one tile per row, is one pass.
"""

from __future__ import annotations

import functools
import weakref

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .quantize import QMAX
from .triton_quantize import _rint

MAX_TILE = 16384  # padded elements of x a program holds at once (T·N1·N2)


@triton.jit
def _token_max(rows, T: tl.constexpr, N1: tl.constexpr):
    """Per-token max of per-row values ``(T·N1,) -> (T,)``."""
    return tl.max(tl.reshape(rows, (T, N1)), axis=1)


@triton.jit
def _to_rows(per_token, T: tl.constexpr, N1: tl.constexpr):
    """Broadcast per-token values to the tile's rows ``(T,) -> (T·N1,)``."""
    return tl.reshape(tl.broadcast_to(per_token[:, None], (T, N1)), (T * N1,))


@triton.jit
def _token_range(y, T: tl.constexpr, N1: tl.constexpr):
    """Per-token ``(max, min)`` of a tile's values ``(T·N1, C) -> (T,), (T,)``."""
    return _token_max(tl.max(y, axis=1), T, N1), -_token_max(-tl.min(y, axis=1), T, N1)


@triton.jit
def _p2_columns(p2_ptr, j, N2: tl.constexpr, CHUNK: tl.constexpr):
    cols = j * CHUNK + tl.arange(0, CHUNK)
    return tl.load(p2_ptr + tl.arange(0, N2)[:, None] * N2 + cols[None, :])


@triton.jit
def _tile(
    x_ptr, p2_ptr, p2_whole, bd, tok, row_ok, r, b, j, n1: tl.constexpr, n2: tl.constexpr, stride_x,
    T: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, CHUNK: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y[:, j·CHUNK : (j+1)·CHUNK]`` of block ``b`` of the tile's tokens, float32 ``(T·N1, CHUNK)``,
    with the numerics of the reference: a power-of-two prescale per (token, block), fp16 operands, float32
    accumulation, ``Z`` rounded to fp16. ``p2_whole``: all of P2, loaded once per program, when the tile
    takes whole columns (else its columns are loaded here)."""
    c = tl.arange(0, N2)
    mask = row_ok[:, None] & (c < n2)[None, :]
    offs = tok.to(tl.int64)[:, None] * stride_x + (b * n1 * n2 + r * n2)[:, None] + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # max|x| = m·2^e, m in [0.5, 1): scale by 2^-e, read off the fp32 exponent bits
    xmax = _to_rows(_token_max(tl.max(tl.abs(x), axis=1), T, N1), T, N1)
    biased = (xmax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.where(xmax > 0, biased - 126, 0)
    scale = ((127 - e) << 23).to(tl.float32, bitcast=True)
    unscale = ((127 + e) << 23).to(tl.float32, bitcast=True)
    xn = (x * scale[:, None]).to(tl.float16)
    if CHUNK == N2:
        p2 = p2_whole
    else:
        p2 = _p2_columns(p2_ptr, j, N2, CHUNK)
    if UPCAST:  # the interpreter's half-precision dot is unreliable; fp16 values are exact in fp32
        z = tl.dot(xn.to(tl.float32), p2.to(tl.float32), input_precision="ieee").to(tl.float16)
        y = tl.dot(bd.to(tl.float32), z.to(tl.float32), input_precision="ieee")
    else:
        z = tl.dot(xn, p2).to(tl.float16)
        y = tl.dot(bd, z)
    return y * unscale[:, None]


@triton.jit
def _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, b, j, n1: tl.constexpr, n2: tl.constexpr, stride_q,
                 CHUNK: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    q = tl.minimum(tl.maximum(_rint(y * inv_rows[:, None], INTERPRET), -8.0), 7.0)
    q = q.to(tl.float16).to(q_ptr.dtype.element_ty)  # exact: |q| <= 8
    cols = j * CHUNK + tl.arange(0, CHUNK)
    offs = tok.to(tl.int64)[:, None] * stride_q + (b * n1 * n2 + r * n2)[:, None] + cols[None, :]
    tl.store(q_ptr + offs, q, mask=row_ok[:, None] & (cols < n2)[None, :])


@triton.jit
def _kron_quantize_kernel(
    x_ptr, bd_ptr, p2_ptr, q_ptr, s_ptr, M, nb, stride_x, stride_q, clip_lo, clip_hi, static_amax, eps_amax,
    n1: tl.constexpr, n2: tl.constexpr, STATIC: tl.constexpr, ONE_TILE: tl.constexpr, T: tl.constexpr,
    N1: tl.constexpr, N2: tl.constexpr, CHUNK: tl.constexpr, UPCAST: tl.constexpr, INTERPRET: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    R: tl.constexpr = T * N1
    PIECES: tl.constexpr = N2 // CHUNK
    i = tl.arange(0, R)
    bd = tl.load(bd_ptr + i[:, None] * R + i[None, :])
    # the factors stay in the program across its tiles (P2 was read again for every tile: as many bytes as x at 64x64)
    if CHUNK == N2:
        p2_whole = _p2_columns(p2_ptr, 0, N2, N2)
    else:  # column pieces load their own (P2 whole would hold the registers the pieces save)
        p2_whole = bd
    r = i % N1
    # STAGES > 1: the next tile's loads are issued (cp.async) while this one is computed; without it a
    # program waits for every tile's load, and a one-pass (dynamic, one-tile) loop was not pipelined at all
    for g in tl.range(tl.program_id(0), tl.cdiv(M, T), tl.num_programs(0), num_stages=STAGES):
        tok_t = g * T + tl.arange(0, T)
        tok = g * T + i // N1
        row_ok = (tok < M) & (r < n1)
        if STATIC:
            amax = tl.zeros((T,), dtype=tl.float32) + static_amax
        elif ONE_TILE:
            y = _tile(x_ptr, p2_ptr, p2_whole, bd, tok, row_ok, r, 0, 0, n1, n2, stride_x, T, N1, N2, CHUNK, UPCAST)
            top, bottom = _token_range(y, T, N1)
            amax = tl.maximum(tl.maximum(-bottom * clip_lo, top * clip_hi), eps_amax)
        else:  # first pass: the row's min and max over all its tiles
            top = tl.full((T,), float("-inf"), dtype=tl.float32)
            bottom = tl.full((T,), float("inf"), dtype=tl.float32)
            for u in range(0, nb * PIECES):
                y = _tile(x_ptr, p2_ptr, p2_whole, bd, tok, row_ok, r, u // PIECES, u % PIECES, n1, n2, stride_x,
                          T, N1, N2, CHUNK, UPCAST)  # fmt: skip
                tile_top, tile_bottom = _token_range(y, T, N1)
                top, bottom = tl.maximum(top, tile_top), tl.minimum(bottom, tile_bottom)
            amax = tl.maximum(tl.maximum(-bottom * clip_lo, top * clip_hi), eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + tok_t, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=tok_t < M)
        inv_rows = _to_rows(inv, T, N1)
        if ONE_TILE and not STATIC:  # y is the tile just computed
            _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, 0, 0, n1, n2, stride_q, CHUNK, INTERPRET)
        else:
            for u in range(0, nb * PIECES):
                y = _tile(x_ptr, p2_ptr, p2_whole, bd, tok, row_ok, r, u // PIECES, u % PIECES, n1, n2, stride_x,
                          T, N1, N2, CHUNK, UPCAST)  # fmt: skip
                _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, u // PIECES, u % PIECES, n1, n2, stride_q,
                             CHUNK, INTERPRET)  # fmt: skip


@functools.cache
def _program_slots(device_index: int) -> int:
    return 4 * torch.cuda.get_device_properties(device_index).multi_processor_count


_PREPARED: dict[tuple, tuple] = {}  # (ids, versions, tiling) -> (weakrefs of P1 and P2, prepared factors)


def _block_diagonal_factors(p1: torch.Tensor, p2: torch.Tensor, t: int, n1p: int, n2p: int):
    """``I_T ⊗ P1ᵀ`` (``T·N1`` square) and ``P2`` (``N2`` square), zero-padded, fp16; kept per factor pair
    (until either is changed in place or freed) so a call launches nothing but the kernel."""
    key = (id(p1), p1._version, id(p2), p2._version, t, n1p, n2p)
    hit = _PREPARED.get(key)
    if hit is not None and hit[0]() is p1 and hit[1]() is p2:
        return hit[2]
    if len(_PREPARED) >= 64:
        _PREPARED.pop(next(iter(_PREPARED)))
    prepared = _prepare(p1, p2, t, n1p, n2p)
    _PREPARED[key] = (weakref.ref(p1), weakref.ref(p2), prepared)
    return prepared


def _prepare(p1: torch.Tensor, p2: torch.Tensor, t: int, n1p: int, n2p: int):
    p1t = torch.zeros(n1p, n1p, dtype=torch.float16, device=p1.device)
    p1t[: p1.shape[0], : p1.shape[0]] = p1.t().half()
    bd = torch.kron(torch.eye(t, dtype=torch.float16, device=p1.device), p1t)
    p2p = torch.zeros(n2p, n2p, dtype=torch.float16, device=p2.device)
    p2p[: p2.shape[0], : p2.shape[0]] = p2.half()
    return bd.contiguous(), p2p.contiguous()


def tile_shape(n1: int, n2: int, tokens: int | None = None, chunk: int | None = None) -> tuple[int, int, int, int]:
    """``(T, N1, N2, CHUNK)``: tokens per tile and padded sizes. Defaults from the H100 sweep
    (docs/RESULTS.md): whole columns (splitting them was always slower) and tiles of at most 4096 values
    (4 tokens at most)."""
    n1p, n2p = max(16, triton.next_power_of_2(n1)), max(16, triton.next_power_of_2(n2))
    t = tokens or max(1, min(4, 4096 // (n1p * n2p)))
    chunk = chunk or n2p
    if t & (t - 1) or chunk & (chunk - 1) or chunk > n2p or n2p % chunk:
        raise ConfigError(f"tokens per tile ({t}) and chunk ({chunk}) must be powers of two, chunk ≤ {n2p}")
    if t * n1p * n2p > MAX_TILE:
        raise ConfigError(f"fused transform+quantize tile of {t}×{n1p}×{n2p} exceeds {MAX_TILE} values")
    return t, n1p, n2p, chunk


def default_stages(n1p: int) -> int:
    """Tiles of x in flight per program. Graph-timed on the H100 (session 13, M = 8192, three repeats): 3 stages
    for the wide factors (64×64: 61–63% of copy against 54–56% with 2; 112×128: 37% against 31%), 1 below
    (32×48: 46–47% against 35–37%; 1 was also fastest for 24×24, 32×128 heads and 9×64 heads in the sweep)."""
    return 3 if n1p >= 64 else 1


def default_warps(t: int, n1p: int, chunk: int) -> int:
    """4 warps (one warpgroup: wgmma needs 64 rows per warpgroup), 8 for the largest tiles."""
    return 8 if t * n1p * chunk >= 16384 else 4


def kron_quantize_rows(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    nb: int,
    clip_ratio: float | tuple[float, float],
    static_scale: float | None,
    codes_dtype=torch.int8,
    tokens: int | None = None,
    chunk: int | None = None,
    programs: int | None = None,
    num_warps: int | None = None,
    stages: int | None = None,
    upcast: bool | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(M, K)`` and float32 scales ``(M,)`` of the rows of ``x`` (``K = nb·n1·n2``); ``clip_ratio``
    one factor or a learned two-sided ``(lo, hi)`` pair (:func:`.quantize.quantize_per_token_reference`).
    ``tokens``, ``chunk``, ``programs``, ``num_warps`` and ``stages`` are tuning knobs (benchmarks sweep them)."""
    M, K = x.shape
    t, n1p, n2p, chunk = tile_shape(p1.shape[0], p2.shape[0], tokens, chunk)
    bd, p2p = _block_diagonal_factors(p1, p2, t, n1p, n2p)
    if out is None:
        codes = torch.empty((M, K), dtype=codes_dtype, device=x.device)
        scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    else:  # preallocated (M, K) codes and (M,) scales, e.g. filled with a sentinel by a test
        codes, scales = out
    lo, hi = clip_ratio if isinstance(clip_ratio, tuple) else (clip_ratio, clip_ratio)
    groups = triton.cdiv(M, t)
    if programs is None:
        programs = groups if not x.is_cuda else min(groups, _program_slots(x.device.index or 0))
    _kron_quantize_kernel[(max(1, programs),)](
        x, bd, p2p, codes, scales, M, nb, x.stride(0), codes.stride(0),
        float(lo), float(hi), QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS, n1=p1.shape[0], n2=p2.shape[0],
        STATIC=static_scale is not None, ONE_TILE=nb == 1 and chunk == n2p, T=t, N1=n1p, N2=n2p, CHUNK=chunk,
        UPCAST=interpreting() if upcast is None else upcast, INTERPRET=interpreting(),
        STAGES=stages or default_stages(n1p), num_warps=num_warps or default_warps(t, n1p, chunk),
    )  # fmt: skip
    return codes, scales[:, None]
