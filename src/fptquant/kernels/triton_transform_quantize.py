"""Triton kernel of :mod:`.transform_quantize`: tiles of ``T`` tokens × one ``n1×n2`` block, 2-D dots only.

A tile holds the block ``b`` of ``T`` tokens as a ``(T·N1) × N2`` matrix ``X`` (row ``(t, r)``, column ``c``;
``N1``, ``N2`` the factors padded to powers of two). ``W = (I_T ⊗ P1ᵀ) · X`` is one 2-D dot against the
block-diagonal ``I_T ⊗ P1ᵀ`` built once on the host (the ``T`` small products become one tensor-core-sized
dot, multiplying zeros, which is cheap in a kernel bound by memory), and ``Y = W · P2`` another. Neither
needs a permute or a 3-D dot (a permute between the dots gave wrong rows on the H100 under Triton 3.6).

In this order a bf16 ``X`` is the first dot's shared-memory operand straight from its pipelined load, and
``W`` the second dot's register operand straight from the first dot's accumulator: no pass over ``X`` in
registers and no trip of ``W`` through shared memory. The bfloat16 ``hi + lo`` pairs cost three tensor-core
dots where fp16 cost one, and need no range check (bf16 has float32's exponents); the earlier fp16 kernel
spent its time on the per-token prescale of ``X`` and the layout changes around its dots, not on the dots.

Programs are persistent (a grid of at most a few waves, each looping over token groups) so the factors
are read once per program. Rows of several blocks (``nb > 1``) with dynamic scales go to the batched kernel of
:mod:`.triton_blocks_quantize` where a row fits in registers (:func:`prefers_batched`); otherwise they take two
passes here: the row's range over all its blocks, then the codes (recomputing the tiles; the second read of ``x``
mostly hits L2). A static scale, or one block per row, is one pass.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from ..math.quantization import SCALE_EPS
from .backend import DRIVER_SHARED_BYTES, SHARED_BYTES, interpreting
from .quantize import QMAX
from .transform_quantize import bf16_split
from .triton_pdl import programmatic_launch, release_dependents, wait_for_inputs
from .triton_quantize import _int4_codes, _round_to, _swiglu, _upper_half

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
def _token_range(y, T: tl.constexpr, N1: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Per-token ``(max, min)`` of a tile's values ``(T·N1, C) -> (T,), (T,)``; with SYMMETRIC (one clip ratio
    for both ends) ``(max|y|, -max|y|)``, one reduction instead of two."""
    if SYMMETRIC:
        top = _token_max(tl.max(tl.abs(y), axis=1), T, N1)
        return top, -top
    return _token_max(tl.max(y, axis=1), T, N1), -_token_max(-tl.min(y, axis=1), T, N1)


@triton.jit
def _clipped_amax(top, bottom, clip_lo, clip_hi, eps_amax):
    """The per-token range scaled by the clip of each end (``max(-min·lo, max·hi)``), at least ``eps_amax``."""
    return tl.maximum(tl.maximum(-bottom * clip_lo, top * clip_hi), eps_amax)


@triton.jit
def _split(v):
    """float32 -> bfloat16 ``hi`` and ``lo``, each truncated (:func:`~.transform_quantize.bf16_split`)."""
    hi = _upper_half(v)
    return hi, _upper_half(v - hi.to(tl.float32))


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    if UPCAST:  # the interpreter has no bfloat16 dot; bf16 values and their products are exact in float32
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _tile(
    x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, row_ok, r, b, n1: tl.constexpr, n2: tl.constexpr, stride_x,
    stride_u, N2: tl.constexpr, X_SPLIT: tl.constexpr, P1_LO: tl.constexpr, P2_LO: tl.constexpr,
    P2_EYE: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y`` of block ``b`` of the tile's tokens, float32 ``(T·N1, N2)``: ``W = (I_T ⊗ P1ᵀ) · X`` then
    ``Y = W · P2``, every operand as bfloat16 ``hi + lo`` pairs (the reference's numerics). A bf16 ``x`` is
    its own ``hi``: it goes from the pipelined load to the tensor cores untouched; a factor that bfloat16
    holds exactly (P1_LO / P2_LO false: its ``lo`` is zero) skips its ``lo`` dot, which would add zeros.
    With ROUND_MID, ``W`` is rounded to the nearest bfloat16 and meets ``P2`` once (no ``lo`` of ``W``).
    With GAIN, ``Y`` is scaled by ``gain`` (float32). With GATED, ``X`` is ``silu(x) · u``, formed in registers."""
    c = tl.arange(0, N2)
    mask = row_ok[:, None] & (c < n2)[None, :]
    col = (b * n1 * n2 + r * n2)[:, None] + c[None, :]
    x = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_x + col, mask=mask, other=0.0)
    if GATED:  # masked lanes: silu(0) · 0 = 0
        x = _swiglu(x, tl.load(u_ptr + tok.to(tl.int64)[:, None] * stride_u + col, mask=mask, other=0.0))
        if not X_SPLIT:  # a bf16 value in float32: its upper half is the bf16 operand, exactly
            x = _upper_half(x)
    return _transform(x, p1h, p1l, p2h, p2l, gain, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, UPCAST)


@triton.jit
def _transform(
    x, p1h, p1l, p2h, p2l, gain, X_SPLIT: tl.constexpr, P1_LO: tl.constexpr, P2_LO: tl.constexpr,
    P2_EYE: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y = (P1ᵀ · X) · P2`` as the dots of the numerics above (2-D, or 3-D with the factors broadcast over the
    batch: :mod:`.triton_blocks_quantize`). With P2_EYE (``P2 = I``: FlatQuant's head mixing ``M ⊗ I`` before
    o_proj) ``Y`` is what the second dot would give, without it: ``W`` in bfloat16, or ``W``'s ``hi + lo``
    (exact in float32)."""
    if X_SPLIT:
        xh, xl = _split(x.to(tl.float32))
        w = _dot(p1h, xh, None, UPCAST)
        if P1_LO:
            w = _dot(p1l, xh, w, UPCAST)
        w = _dot(p1h, xl, w, UPCAST)
    else:
        w = _dot(p1h, x, None, UPCAST)
        if P1_LO:
            w = _dot(p1l, x, w, UPCAST)
    if P2_EYE:
        if ROUND_MID:
            y = _round_to(w, tl.bfloat16, UPCAST).to(tl.float32)
        else:
            wh, wl = _split(w)
            y = wh.to(tl.float32) + wl.to(tl.float32)
    elif ROUND_MID:  # bfloat16 transform numerics: one product fewer, the one that bounds large tiles
        wb = _round_to(w, tl.bfloat16, UPCAST)
        y = _dot(wb, p2h, None, UPCAST)
        if P2_LO:
            y = _dot(wb, p2l, y, UPCAST)
    else:
        wh, wl = _split(w)
        y = _dot(wh, p2h, None, UPCAST)
        y = _dot(wl, p2h, y, UPCAST)
        if P2_LO:
            y = _dot(wh, p2l, y, UPCAST)
    if GAIN:  # the transform is gain · (P1 ⊗ P2), e.g. a Hadamard's 1/√2 left over by factors bf16 holds exactly
        y = y * gain
    return y


@triton.jit
def _load_factors(p1_ptr, p2_ptr, R: tl.constexpr, N2: tl.constexpr, P1_LO: tl.constexpr, P2_LO: tl.constexpr,
                  P2_EYE: tl.constexpr):  # fmt: skip
    """The factors' bfloat16 ``hi`` and ``lo`` halves (:func:`split_factors`), read once per program: ``(R, R)``
    for ``I_T ⊗ P1ᵀ`` (``R = T·N1``), ``(N2, N2)`` for ``P2``. A ``lo`` half that is zero, or a ``P2`` that is
    the identity, is not read (the dots that would use it are left out)."""
    i, c = tl.arange(0, R), tl.arange(0, N2)
    p1h = tl.load(p1_ptr + i[:, None] * R + i[None, :])
    p1l = p1h  # unused unless P1_LO
    if P1_LO:
        p1l = tl.load(p1_ptr + R * R + i[:, None] * R + i[None, :])
    p2h = tl.zeros((N2, N2), dtype=tl.bfloat16)  # unused with P2_EYE
    if not P2_EYE:
        p2h = tl.load(p2_ptr + c[:, None] * N2 + c[None, :])
    p2l = p2h
    if P2_LO:
        p2l = tl.load(p2_ptr + N2 * N2 + c[:, None] * N2 + c[None, :])
    return p1h, p1l, p2h, p2l


@triton.jit
def _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, b, n1: tl.constexpr, n2: tl.constexpr, stride_q,
                 N2: tl.constexpr):  # fmt: skip
    q = _int4_codes(y * inv_rows[:, None], q_ptr.dtype.element_ty)
    cols = tl.arange(0, N2)
    offs = tok.to(tl.int64)[:, None] * stride_q + (b * n1 * n2 + r * n2)[:, None] + cols[None, :]
    tl.store(q_ptr + offs, q, mask=row_ok[:, None] & (cols < n2)[None, :])


@triton.jit
def _kron_quantize_kernel(
    x_ptr, u_ptr, p1_ptr, p2_ptr, q_ptr, s_ptr, M, nb, stride_x, stride_u, stride_q, clip_lo, clip_hi, static_amax,
    eps_amax, gain, n1: tl.constexpr, n2: tl.constexpr, STATIC: tl.constexpr, SYMMETRIC: tl.constexpr,
    ONE_TILE: tl.constexpr, T: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, X_SPLIT: tl.constexpr,
    P1_LO: tl.constexpr, P2_LO: tl.constexpr, P2_EYE: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr,
    GATED: tl.constexpr, UPCAST: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    release_dependents(PDL)  # a decode GEMM after this may launch now and wait for the codes (.triton_pdl)
    wait_for_inputs(PDL)  # launched early itself: nothing is read or written before the kernel before it is done
    R: tl.constexpr = T * N1
    i = tl.arange(0, R)
    p1h, p1l, p2h, p2l = _load_factors(p1_ptr, p2_ptr, R, N2, P1_LO, P2_LO, P2_EYE)
    r = i % N1
    # STAGES > 1: the next tile's loads are issued (cp.async) while this one is computed
    for g in tl.range(tl.program_id(0), tl.cdiv(M, T), tl.num_programs(0), num_stages=STAGES):
        tok_t = g * T + tl.arange(0, T)
        tok = g * T + i // N1
        row_ok = (tok < M) & (r < n1)
        if ONE_TILE:  # one pass: the tile is every value of its tokens
            y = _tile(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, row_ok, r, 0, n1, n2, stride_x, stride_u,
                      N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
            if STATIC:
                amax = tl.zeros((T,), dtype=tl.float32) + static_amax
            else:
                top, bottom = _token_range(y, T, N1, SYMMETRIC)
                amax = _clipped_amax(top, bottom, clip_lo, clip_hi, eps_amax)
        elif STATIC:
            amax = tl.zeros((T,), dtype=tl.float32) + static_amax
        else:  # first pass: the row's min and max over all its blocks
            top = tl.full((T,), float("-inf"), dtype=tl.float32)
            bottom = tl.full((T,), float("inf"), dtype=tl.float32)
            for b in range(0, nb):
                y = _tile(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, row_ok, r, b, n1, n2, stride_x, stride_u,
                          N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
                tile_top, tile_bottom = _token_range(y, T, N1, SYMMETRIC)
                top, bottom = tl.maximum(top, tile_top), tl.minimum(bottom, tile_bottom)
            amax = _clipped_amax(top, bottom, clip_lo, clip_hi, eps_amax)
        inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
        tl.store(s_ptr + tok_t, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=tok_t < M)
        inv_rows = _to_rows(inv, T, N1)
        if ONE_TILE:
            _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, 0, n1, n2, stride_q, N2)
        else:
            for b in range(0, nb):
                y = _tile(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, row_ok, r, b, n1, n2, stride_x, stride_u,
                          N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
                _store_codes(q_ptr, y, inv_rows, tok, row_ok, r, b, n1, n2, stride_q, N2)


_RESIDENT: dict[tuple, int] = {}  # (device, kernel, compile-time arguments) -> programs that fit on the GPU at once


def _resident_programs(kernel, device_index: int, args: tuple, constants: dict, per_sm: int | None = None) -> int:
    """Programs of ``kernel`` compiled with ``constants`` that the GPU holds at once, by its shared memory and
    registers, at most 16 warps an SM (4 programs of 4 warps, 16 of one warp): the persistent grid must not exceed
    it, or the programs left over run their whole share of the tokens as a second wave after the rest have
    finished. One-warp programs of SmolLM2's 24×24 at M = 8192 (session 23, H100): 16 an SM 67.3% of copy, 8
    66.3%, 32 64.2%. ``per_sm``: at most that many an SM."""
    key = (device_index, id(kernel), per_sm, *sorted(constants.items()))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **constants)
        compiled._init_handles()
        props = triton.runtime.driver.active.utils.get_device_properties(device_index)
        sm_shared = props["max_shared_mem"] + DRIVER_SHARED_BYTES
        by_shared = sm_shared // (compiled.metadata.shared + DRIVER_SHARED_BYTES)
        by_registers = props["max_num_regs"] // max(1, compiled.n_regs * 32 * constants["num_warps"])
        most = min(max(4, 16 // constants["num_warps"]), per_sm or 16)
        _RESIDENT[key] = max(1, min(most, by_shared, by_registers)) * props["multiprocessor_count"]
    return _RESIDENT[key]


_PREPARED: dict[tuple, tuple] = {}  # (ids, versions, tokens a tile) -> (weakrefs of P1 and P2, Prepared)


def _prepared_factors(
    p1: torch.Tensor, p2: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor, bool, bool, bool]:
    """:func:`split_factors`, whether each ``lo`` half is nonzero and whether ``P2`` is the identity, kept per
    factor pair (until either is changed in place or freed) so a call launches nothing but the kernel (the first
    one reads three flags)."""
    key = (id(p1), p1._version, id(p2), p2._version, t)
    hit = _PREPARED.get(key)
    if hit is not None and hit[0]() is p1 and hit[1]() is p2:
        return hit[2]
    if len(_PREPARED) >= 64:
        _PREPARED.pop(next(iter(_PREPARED)))
    p1s, p2s = split_factors(p1, p2, t)
    eye = torch.equal(p2, torch.eye(p2.shape[0], dtype=p2.dtype, device=p2.device))
    prepared = (p1s, p2s, bool(p1s[1].any()), bool(p2s[1].any()), eye)
    _PREPARED[key] = (weakref.ref(p1), weakref.ref(p2), prepared)
    return prepared


def split_factors(p1: torch.Tensor, p2: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``I_T ⊗ P1ᵀ`` and ``P2``, zero-padded to powers of two, each as its bfloat16 ``hi`` stacked on its ``lo``
    (``(2, T·N1, T·N1)`` and ``(2, N2, N2)``)."""
    n1p, n2p = padded(p1.shape[0]), padded(p2.shape[0])
    p1t = torch.zeros(n1p, n1p, dtype=torch.float32, device=p1.device)
    p1t[: p1.shape[0], : p1.shape[0]] = p1.t().float()
    bd = torch.kron(torch.eye(t, dtype=torch.float32, device=p1.device), p1t)
    p2p = torch.zeros(n2p, n2p, dtype=torch.float32, device=p2.device)
    p2p[: p2.shape[0], : p2.shape[0]] = p2.float()
    return torch.stack(bf16_split(bd)).contiguous(), torch.stack(bf16_split(p2p)).contiguous()


def padded(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def tile_shape(n1: int, n2: int, tokens: int | None = None) -> tuple[int, int, int]:
    """``(T, N1, N2)``: tokens per tile and the padded factor sizes. By default 64 rows (``T·N1``: one warpgroup's
    wgmma tile), fewer tokens where the tile would exceed ``MAX_TILE`` values. The H100 sweep of session 14
    (docs/RESULTS.md) put a 64-row tile on 4 warps first for every factor pair narrower than 128."""
    n1p, n2p = padded(n1), padded(n2)
    t = tokens or max(1, 64 // n1p)
    while tokens is None and t > 1 and t * n1p * n2p > MAX_TILE:
        t //= 2
    if t & (t - 1):
        raise ConfigError(f"tokens per tile ({t}) must be a power of two")
    if t * n1p * n2p > MAX_TILE:
        raise ConfigError(f"fused transform+quantize tile of {t}×{n1p}×{n2p} exceeds {MAX_TILE} values")
    return t, n1p, n2p


SM_SHARED_BYTES = SHARED_BYTES + DRIVER_SHARED_BYTES  # what one H100 SM holds for all its programs


def shared_bytes(t: int, n1p: int, n2p: int, stages: int, halves: tuple[int, int] = (2, 2), gated: bool = False) -> int:
    """Shared memory a program uses at most (checked against sm_90a builds): ``stages`` bf16 tiles of x (of the
    gate and up with ``gated``, plus the product, which reaches the tensor cores through shared memory), the
    factors' bf16 halves (``halves``: 2 for ``hi`` and ``lo``, 1 where bfloat16 holds the factor exactly; of
    ``I_T ⊗ P1ᵀ`` and ``P2``), and scratch for reductions and layout changes."""
    tile = t * n1p * n2p
    inputs = stages * 2 * tile * (2 if gated else 1) + (2 * tile if gated else 0)
    return inputs + 2 * halves[0] * (t * n1p) ** 2 + 2 * halves[1] * n2p**2 + tile + 8192


def default_stages(t: int, n1p: int, n2p: int, halves: tuple[int, int] = (2, 2), gated: bool = False) -> int:
    """Tiles of x in flight per program: up to 3, as many as leave room for two programs an SM (one program
    alone waits on each tile's dependent dots and reductions); where even one stage leaves no room for two,
    as many as fit (2 at 112×128, 1 there with ``gated``). The H100 sweep of session 14: 3 stages first at 64×64
    (74% against 65%), 32×48 and 24×24; at 32×128 (two 64 KB factors) 1 stage, which keeps two programs, first."""
    size = {s: shared_bytes(t, n1p, n2p, s, halves, gated) for s in (3, 2, 1)}
    fits = [s for s in (3, 2, 1) if size[s] <= SHARED_BYTES]
    pairs = [s for s in fits if 2 * (size[s] + DRIVER_SHARED_BYTES) <= SM_SHARED_BYTES]
    return (pairs or fits or [1])[0]


def default_warps(t: int, n1p: int, n2p: int) -> int:
    """4 warps (one warpgroup: wgmma needs 64 rows per warpgroup), 8 for the largest tiles (112×128: 38% of copy
    against 25% on 4 warps)."""
    return 8 if t * n1p * n2p >= 16384 else 4


def prefers_batched(nb: int, n1p: int, n2p: int, static: bool, n2: int | None = None) -> bool:
    """Where the batched kernel is the default.

    - Rows of several blocks with dynamic scales that fit one step: one pass instead of two (84–93% of copy
      bandwidth against 44–58% for LLaMA-3-8B's ``T_d``, session 22).
    - Rows of one small block: at most ``SMALL_BLOCK`` padded values, or, with dynamic scales, ``PADDED_BLOCK``
      where its ``n2`` columns are padded (a step is then read ahead). Tiles here hold two such tokens, spend half
      their first dot on the zeros of ``I_T ⊗ P1ᵀ`` and meet at block-wide barriers.

    Session 23 (H100, M = 8192 / 32768, same run), a one-warp program a token against the tiled kernel: 24×24
    67.2% / 71.3% of copy against 53.1% / 53.5% with dynamic scales, 72.7% / 72.8% against 65.1% / 66.3% static;
    9×64 64.0% / 77.1% against 63.5% / 72.0% dynamic, 76.8% / 88.7% against 73.7% / 83.9% static. Session 24:
    32×48 (held as 32×64) a step read ahead, eight programs an SM, 81.1% / 84.2% against 76.9% / 82.1% here with
    dynamic scales; static it stays here (83.6% against 78.5% at 8192). Larger blocks stay here (64×64: 92.4%
    against 68.5%, dynamic at 8192)."""
    from .triton_blocks_quantize import PADDED_BLOCK, SMALL_BLOCK, fits_row

    if nb == 1:
        padded = n2 is not None and n2 < n2p and n1p * n2p <= PADDED_BLOCK
        return n1p * n2p <= SMALL_BLOCK or (padded and not static)
    return not static and fits_row(nb, n1p, n2p)


def kron_quantize_rows(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    nb: int,
    clip_ratio: float | tuple[float, float],
    static_scale: float | None,
    codes_dtype=torch.int8,
    tokens: int | None = None,
    programs: int | None = None,
    num_warps: int | None = None,
    stages: int | None = None,
    upcast: bool | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    gain: float = 1.0,
    round_mid: bool = False,
    up: torch.Tensor | None = None,
    batched: bool | None = None,
    ahead: int | None = None,
    maxnreg: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(M, K)`` and float32 scales ``(M,)`` of the rows of ``x (I ⊗ gain·P1 ⊗ P2)`` (``K = nb·n1·n2``;
    ``round_mid``: the bfloat16 numerics of :mod:`.transform_quantize`; ``up``: the rows are ``silu(x) · up``);
    ``clip_ratio`` one factor or a learned two-sided ``(lo, hi)`` pair (:func:`.quantize.quantize_per_token_reference`).
    ``tokens``, ``programs``, ``num_warps`` and ``stages`` are tuning knobs (benchmarks sweep them). ``batched``:
    the kernel of :mod:`.triton_blocks_quantize`, blocks or tokens as the batch of 3-D dots (None: where
    :func:`prefers_batched`; True: there or a clear error; False: the tiled kernel here). ``tokens`` are the
    tokens a tile here, the tokens a step there; ``ahead`` (batched kernel only; None: :func:`default_ahead`) steps
    read into registers ahead of the one computed, instead of a shared-memory pipeline. ``maxnreg``: a cap on the
    registers a thread (a compile option: more programs an SM where registers bound them, spilling what no longer
    fits)."""
    from .triton_blocks_quantize import batched_knobs, check_batched, default_ahead, launch_batched, step_tokens

    M, K = x.shape
    n1p, n2p = padded(p1.shape[0]), padded(p2.shape[0])
    if batched is None:
        batched = bool(ahead) or (
            tokens is None and prefers_batched(nb, n1p, n2p, static_scale is not None, p2.shape[0])
        )
    if ahead and not batched:
        raise ConfigError("ahead is a knob of the batched transform quantize (batched=True)")
    if batched and ahead is None:
        ahead = default_ahead(nb, p2.shape[0], n2p, tokens)
    ahead = ahead or 0
    if batched and (problem := check_batched(nb, n1p, n2p, tokens, ahead)) is not None:
        raise ConfigError(f"the batched transform quantize cannot take these rows: {problem}")
    t, n1p, n2p = tile_shape(p1.shape[0], p2.shape[0], 1 if batched else tokens)
    p1s, p2s, p1_lo, p2_lo, p2_eye = _prepared_factors(p1, p2, t)
    if out is None:
        codes = torch.empty((M, K), dtype=codes_dtype, device=x.device)
        scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    else:  # preallocated (M, K) codes and (M,) scales, e.g. filled with a sentinel by a test
        codes, scales = out
    lo, hi = clip_ratio if isinstance(clip_ratio, tuple) else (clip_ratio, clip_ratio)
    u = up if up is not None else x
    args = (x, u, p1s, p2s, codes, scales, M, nb, x.stride(0), u.stride(0), codes.stride(0), float(lo), float(hi),
            QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS, float(gain))  # fmt: skip
    # a compile option too (the occupancy probe must build the launched kernel); decode-sized calls only: launched
    # early, a prefill-sized persistent grid lost up to a quarter of its bandwidth (session 22, static scales: block
    # Hadamard 74.6% of copy against 89.2%, 24×24 50.8% against 66.2%, 9×64 68.1% against 73.1%)
    pdl = programmatic_launch(x.device, tokens=M)
    constants = dict(
        n1=p1.shape[0], n2=p2.shape[0], STATIC=static_scale is not None, SYMMETRIC=lo == hi, ONE_TILE=nb == 1, T=t,
        N1=n1p, N2=n2p, X_SPLIT=x.dtype != torch.bfloat16, P1_LO=p1_lo, P2_LO=p2_lo, P2_EYE=p2_eye,
        GAIN=gain != 1.0, ROUND_MID=round_mid, GATED=up is not None,
        UPCAST=interpreting() if upcast is None else upcast, PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    if maxnreg is not None:
        constants["maxnreg"] = maxnreg
    if batched:
        values = step_tokens(nb, tokens) * nb * n1p * n2p
        knobs = batched_knobs(values, nb, num_warps, stages, x.element_size(), up is not None, ahead)
        launch_batched(args, constants | knobs, nb, tokens, programs)
        return codes, scales[:, None]
    constants |= dict(STAGES=stages or default_stages(t, n1p, n2p, (1 + p1_lo, 1 + p2_lo), up is not None),
                      num_warps=num_warps or default_warps(t, n1p, n2p))  # fmt: skip
    groups = triton.cdiv(M, t)
    if programs is None:
        held = _resident_programs(_kron_quantize_kernel, x.device.index or 0, args, constants) if x.is_cuda else groups
        programs = min(groups, held)
    _kron_quantize_kernel[(max(1, programs),)](*args, **constants)
    return codes, scales[:, None]
