"""Triton kernel of :mod:`.w4a4_matmul`.

Weights stay packed in memory and are unpacked in registers, tile by tile, to the dot's 8-bit type.
Two orientations: ``out = a · wᵀ`` (prefill), or with ``swap`` ``outᵀ = w · aᵀ`` so that the weight
fills the MMA's 64-row side when M is tiny (decode). ``split_k > 1`` lets several programs share one
output tile along K, summing float32 partials with atomics (decode with few output tiles).
``split_nibbles`` never interleaves the unpacked weight tile: the low nibbles (even k) and the high
nibbles (odd k) meet the even and odd activation columns in two dots, so the register shuffle moves
from the weight tile to the activation tile, 4× smaller at decode (16 tokens against 64 weight rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from .backend import interpreting
from .triton_quantize import TRITON_DTYPES
from .triton_swiglu_codes import _swiglu_codes_epilogue


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    split_k: int = 1
    swap: bool = False
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    magic_unpack: bool = True
    promote: int | None = None  # FP8: products per exact float32 promotion (None: block_k; 0: never, inexact)
    unpack_first: bool = False  # prefill: unpack the weights to one byte a code in a scratch pass, then GEMM
    split_nibbles: bool = False  # even-k and odd-k halves as two dots (no interleave of the weight tile)
    tma: bool = False  # with unpack_first: the persistent TMA kernel (.triton_w4a4_tma) where the shapes allow
    warp_specialize: bool = False  # TMA kernel: Triton's producer/consumer warp split of the K loop
    gluon: bool = False  # with tma, INT8 on Hopper: the warp-specialized Gluon kernel (.gluon_w4a4_tma)


@triton.jit
def _nibble_values(packed, MAGIC: tl.constexpr, FP8: tl.constexpr):
    """``uint8`` → its low nibbles (even k) and high nibbles (odd k) as signed values (fp16 or int8).

    MAGIC builds each value as an fp16 bit pattern ``0x6400 | (v + 8)`` = 1024 + v + 8 (xor 8 turns a
    two's complement nibble into offset binary) and subtracts 1032: two integer ops and one half-precision
    subtraction instead of an int→float conversion, which runs at a quarter of the ALU rate."""
    if MAGIC:
        u = (packed ^ 0x88).to(tl.int16)
        lo = ((u & 0xF) | 0x6400).to(tl.float16, bitcast=True) - 1032.0
        hi = ((u >> 4) | 0x6400).to(tl.float16, bitcast=True) - 1032.0
    else:
        s = packed.to(tl.int8, bitcast=True)
        lo = (s << 4) >> 4  # arithmetic shifts sign-extend the nibble
        hi = s >> 4
        if FP8:
            lo = lo.to(tl.float16)
            hi = hi.to(tl.float16)
    return lo, hi


@triton.jit
def _unpack(packed, R: tl.constexpr, C: tl.constexpr, MAGIC: tl.constexpr, FP8: tl.constexpr, DOT_TY: tl.constexpr):
    """``(R, C/2)`` uint8 → ``(R, C)`` codes, low nibble first, as e4m3 (FP8) or int8."""
    lo, hi = _nibble_values(packed, MAGIC, FP8)
    return tl.reshape(tl.join(lo, hi), (R, C)).to(DOT_TY)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, n_bytes, BLOCK: tl.constexpr, DOT_TY: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.load(packed_ptr + offs, mask=offs < n_bytes, other=0)
    codes = _unpack(tl.reshape(b, (1, BLOCK)), 1, 2 * BLOCK, True, True, DOT_TY)
    out = 2 * tl.program_id(0) * BLOCK + tl.arange(0, 2 * BLOCK)
    tl.store(out_ptr + out, tl.reshape(codes, (2 * BLOCK,)), mask=out < 2 * n_bytes)


def unpack_weights(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(N, K/2)`` packed int4 → ``(N, K)`` codes one a byte (e4m3 or int8), on the GPU."""
    out = torch.empty((packed.shape[0], packed.shape[1] * 2), dtype=dtype, device=packed.device)
    block = 2048
    dot_ty = tl.float8e4nv if dtype == torch.float8_e4m3fn else tl.int8
    _unpack_kernel[(triton.cdiv(packed.numel(), block),)](packed, out, packed.numel(), BLOCK=block, DOT_TY=dot_ty)
    return out


@triton.jit
def _dot(a, w, acc, SWAP: tl.constexpr, FP8: tl.constexpr, PROMOTE: tl.constexpr):
    """``acc + a · wᵀ`` (or its transpose with SWAP), exact in int32 or promoted every PROMOTE fp8 products."""
    if FP8 and PROMOTE > 0:  # Hopper's fp8 accumulator is inexact: promote to float32 every PROMOTE products
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc, max_num_imprecise_acc=PROMOTE)
        else:
            acc = tl.dot(a, tl.trans(w), acc, max_num_imprecise_acc=PROMOTE)
    elif FP8:
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    else:
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _tile_epilogue(
    acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split,
    HAS_BIAS: tl.constexpr, SWAP: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """``(acc · s_tok) · s_ch (+ bias once)`` of an ``(M, N)`` tile (``(N, M)`` with SWAP), stored, or added
    atomically when K is split."""
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    if SWAP:
        out = acc.to(tl.float32) * sa[None, :] * sw[:, None]
        offs = rm[None, :].to(tl.int64) * stride_om + rn[:, None]
        mask = (rm < M)[None, :] & (rn < N)[:, None]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None] * (split == 0)
    else:
        out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        offs = rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        mask = (rm < M)[:, None] & (rn < N)[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :] * (split == 0)
    if SPLIT > 1:
        tl.atomic_add(out_ptr + offs, out, mask=mask, sem="relaxed")
    else:
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _finish_tile(
    acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split, first_code, inv,
    HAS_BIAS: tl.constexpr, SWAP: tl.constexpr, SPLIT: tl.constexpr, SWIGLU: tl.constexpr, ROUND_TY: tl.constexpr,
    INTERPRET: tl.constexpr,
):  # fmt: skip
    """Every GEMM's end: :func:`_tile_epilogue`, or with SWIGLU (interleaved gate/up rows, whole unswapped tiles)
    down_proj's codes from :mod:`.triton_swiglu_codes`, columns ``first_code ...``."""
    if SWIGLU:
        _swiglu_codes_epilogue(acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, first_code, inv,
                               HAS_BIAS, ROUND_TY, INTERPRET)  # fmt: skip
    else:
        _tile_epilogue(acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split, HAS_BIAS, SWAP, SPLIT)


@triton.jit
def _w4a4_kernel(
    a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, stride_am, stride_wn, stride_om, k_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SWAP: tl.constexpr, FP8: tl.constexpr, MAGIC: tl.constexpr,
    DOT_TY: tl.constexpr, ACC_TY: tl.constexpr, PACKED: tl.constexpr, PROMOTE: tl.constexpr,
    SPLIT_NIBBLES: tl.constexpr, EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GROUP_M: tl.constexpr, inv=1.0, SWIGLU: tl.constexpr = False, ROUND_TY: tl.constexpr = tl.bfloat16,
    INTERPRET: tl.constexpr = False,
):  # fmt: skip
    """SWIGLU (no SWAP, no SPLIT): the weight rows are interleaved gate/up ones and ``out_ptr`` takes down_proj's
    codes (:mod:`.triton_swiglu_codes`), ``inv`` the reciprocal of their static scale."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    group = pid // (GROUP_M * grid_n)  # grouped order: neighbouring programs share weight tiles in L2
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * grid_n)) // rows_in_group

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    rkw = tl.arange(0, BK // 2 if PACKED else BK)
    a_ptrs = a_ptr + (rm % M)[:, None].to(tl.int64) * stride_am + rk[None, :]  # wrapped rows: no row masks
    w_ptrs = w_ptr + (rn % N)[:, None].to(tl.int64) * stride_wn + rkw[None, :]
    if SWAP:
        acc = tl.zeros((BN, BM), dtype=ACC_TY)
    else:
        acc = tl.zeros((BM, BN), dtype=ACC_TY)
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    for k in range(k_start, k_end, BK):
        kw = k // 2 if PACKED else k
        if EVEN_K:
            a = tl.load(a_ptrs + k)
            wp = tl.load(w_ptrs + kw)
        else:  # zero activations past K make whatever the weight tail unpacks to harmless
            a = tl.load(a_ptrs + k, mask=(k + rk < k_end)[None, :], other=0.0)
            wp = tl.load(w_ptrs + kw, mask=(kw + rkw < (k_end // 2 if PACKED else k_end))[None, :], other=0)
        if PACKED and SPLIT_NIBBLES:
            w_even, w_odd = _nibble_values(wp, MAGIC, FP8)
            a_even, a_odd = tl.split(tl.reshape(a, (BM, BK // 2, 2)))  # the small tile is the one shuffled
            acc = _dot(a_even, w_even.to(DOT_TY), acc, SWAP, FP8, PROMOTE)
            acc = _dot(a_odd, w_odd.to(DOT_TY), acc, SWAP, FP8, PROMOTE)
        else:
            w = _unpack(wp, BN, BK, MAGIC, FP8, DOT_TY) if PACKED else wp
            acc = _dot(a, w, acc, SWAP, FP8, PROMOTE)

    _finish_tile(acc, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split, pid_n * (BN // 2), inv,
                 HAS_BIAS, SWAP, SPLIT, SWIGLU, ROUND_TY, INTERPRET)  # fmt: skip


def split_k_plan(length: int, split_k: int, step: int) -> tuple[int, int]:
    """``(programs, length per program)`` sharing ``length`` in whole ``step``s among at most ``split_k``
    programs (fewer where the steps run out)."""
    per_split = triton.cdiv(triton.cdiv(length, max(1, split_k)), step) * step
    return triton.cdiv(length, per_split), per_split


def split_k_output(
    shape: tuple[int, int], split: int, out_dtype: torch.dtype, device, swiglu: bool = False
) -> torch.Tensor:
    """The kernel's output buffer: zeroed float32 where ``split`` programs add partial sums atomically, else
    ``out_dtype`` itself (``.to(out_dtype)`` afterwards is then a no-op). ``swiglu``: the SwiGLU epilogue's int8
    codes of down_proj's input, half as wide (:mod:`.triton_swiglu_codes`; whole tiles, ``split`` 1)."""
    if swiglu:
        return torch.empty((shape[0], shape[1] // 2), dtype=torch.int8, device=device)
    if split > 1:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=out_dtype, device=device)


def pick_config(m: int, n: int, k: int) -> GemmConfig:
    """The best configs of the H100 sweeps (docs/RESULTS.md, W4A4 GEMM; docs/results/2026-11-23-session9/
    gemm_decode_*.json; session 13): up to 16 tokens a 16×32 tile along K in 256-code steps, the weight's
    low and high nibbles in two dots (mma.sync: 19.1, 12.6, 55.0, 37.1 µs on 8B qkv, o, gate+up, down at
    M = 16, against 27.8, 19.8, 75.6, 48.4 with the swapped tile);
    up to 64 the weight rows on the MMA's 64-row side (swap), split in two along K when N leaves SMs idle;
    prefill unpacks the weights once, then runs the one-byte GEMM (unpacking in the main loop doubled its
    time), from 4096 tokens the persistent TMA-fed one."""
    if m <= 16:  # session 13 at M = 16: the even/odd halves as two dots, 4-14% faster than one interleaved tile
        return GemmConfig(16, 32, 256, num_warps=4, num_stages=4, split_nibbles=True)
    if m <= 64:
        block_m = max(16, triton.next_power_of_2(m))
        split = 2 if n <= 4096 and k >= 2048 else 1
        return GemmConfig(block_m, 64, 512, split, swap=True, num_warps=4, num_stages=4 if split > 1 else 3)
    if m <= 1024:
        return GemmConfig(64, 128, 128, num_warps=4, num_stages=4, unpack_first=True)
    # session 13 at M = 8192, INT8: the persistent TMA kernel 477.8 / 1674.8 µs on 8B qkv / gate+up against the
    # pointer GEMM's 499.7 / 1796.4, within 3% of it on o and down (337.4 / 889.8 against 327.6 / 874.8).
    # Below 4096 tokens not: a TMA launch encodes its descriptors on the host, and the batch-1 prefill of the
    # 8B-shaped model (2048 tokens) is bound by host time already.
    # Session 16, M = 8192, INT8 codes on Hopper: the warp-specialized Gluon kernel (wgmma kept in flight), 1.7-1.9x
    # BF16 on the GEMM alone where the Triton TMA kernel gave 1.3-1.5x (docs/RESULTS.md). 128x128 tiles were best
    # or within 1% on 8B qkv, o and gate+up; 256x128 on the long K of down (692 against 724 us). FP8 codes, and
    # shapes TMA cannot copy, take the Triton kernels with the same tile.
    tma = m >= tma_min_tokens()
    if not tma or k >= 8192:
        return GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=tma, gluon=tma)
    return GemmConfig(128, 128, 128, num_warps=8, num_stages=5, unpack_first=True, tma=True, gluon=True)


TMA_MIN_TOKENS = 4096


def tma_min_tokens() -> int:
    """Tokens from which prefill takes the persistent TMA GEMMs: ``FPTQUANT_TMA_MIN_TOKENS``, else 4096."""
    value = os.environ.get("FPTQUANT_TMA_MIN_TOKENS", str(TMA_MIN_TOKENS))
    if not value.isdigit():
        raise ConfigError(f"FPTQUANT_TMA_MIN_TOKENS must be a token count, got {value!r}")
    return int(value)


def swiglu_config(m: int, n: int, k: int) -> GemmConfig:
    """The tile of the SwiGLU epilogue's GEMM (:mod:`.w4a4_swiglu`), which needs whole output tiles in the codes'
    orientation: where :func:`pick_config` picks a swapped or split-K one (17–64 tokens), the 64×128 prefill tile;
    in Gluon 128×256×128 in four stages (its int8 codes tile leaves room for them). H100, session 25, fused 8B /
    70B gate+up at M = 8192: 1348 / 5385 µs against 1520 / 5788 in pick_config's 128×128 tile, 256×128 with four
    stages 1351 / 5646."""
    cfg = pick_config(m, n, k)
    if cfg.swap or cfg.split_k > 1:
        return GemmConfig(64, 128, 128, num_warps=4, num_stages=4, unpack_first=True)
    if cfg.gluon:
        return GemmConfig(128, 256, 128, num_warps=8, num_stages=4, unpack_first=True, tma=True, gluon=True)
    return cfg


def matmul(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: GemmConfig | None = None,
    swiglu_inv: float | None = None,
) -> torch.Tensor:
    """``swiglu_inv``: the SwiGLU epilogue (:mod:`.w4a4_swiglu`), int8 codes ``(M, N / 2)`` out."""
    m, k = codes.shape
    n = packed.shape[0]
    cfg = config or pick_config(m, n, k)
    split, k_per_split = split_k_plan(k, cfg.split_k, cfg.block_k)
    swiglu = swiglu_inv is not None
    if swiglu and (cfg.swap or split > 1 or codes.dtype != torch.int8):
        raise ConfigError(f"the SwiGLU epilogue needs int8 codes and whole unswapped tiles, got {cfg}")
    fp8 = codes.dtype == torch.float8_e4m3fn
    if cfg.unpack_first and packed.dtype == torch.uint8:
        packed = unpack_weights(packed.contiguous(), codes.dtype)
    if cfg.tma and packed.dtype == codes.dtype:
        from .gluon_w4a4_tma import gluon_fits, gluon_matmul
        from .triton_w4a4_tma import tma_fits, tma_matmul

        if cfg.gluon and gluon_fits(codes, packed, out_dtype, cfg, swiglu):
            return gluon_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, cfg, swiglu_inv)
        if tma_fits(codes, packed) and not swiglu:
            return tma_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, cfg)
    packed_weights = packed.dtype == torch.uint8  # else one code a byte, in the codes' dtype
    promote = cfg.block_k if cfg.promote is None else cfg.promote
    if cfg.split_nibbles:  # each of the two dots sums half of the block's products
        promote = min(promote, cfg.block_k // 2)
    out = split_k_output((m, n), split, out_dtype, codes.device, swiglu)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    _w4a4_kernel[grid](
        codes, packed, act_scale, weight_scale, bias if bias is not None else weight_scale, out, m, n, k,
        codes.stride(0), packed.stride(0), out.stride(0), k_per_split,
        HAS_BIAS=bias is not None, SPLIT=split, SWAP=cfg.swap, FP8=fp8, MAGIC=cfg.magic_unpack,
        DOT_TY=tl.float8e4nv if fp8 else tl.int8, ACC_TY=tl.float32 if fp8 else tl.int32, PACKED=packed_weights,
        PROMOTE=promote, SPLIT_NIBBLES=cfg.split_nibbles,
        EVEN_K=k % cfg.block_k == 0 and k_per_split * split == k, BM=cfg.block_m, BN=cfg.block_n,
        BK=cfg.block_k, GROUP_M=cfg.group_m, inv=1.0 if swiglu_inv is None else swiglu_inv, SWIGLU=swiglu,
        ROUND_TY=TRITON_DTYPES[out_dtype], INTERPRET=interpreting(), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return out if swiglu else out.to(out_dtype)
