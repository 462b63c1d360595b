"""Batch-1 decode of :mod:`.w4a4_matmul` on the CUDA cores: one token's codes against packed INT4 weights.

At M = 1 a tensor-core tile is at most 1/16 used, and all the kernel has to do is stream the weights
at HBM speed: ``N·K/2`` bytes against ``2·N·K`` multiply-adds, a few integer operations a byte. Each
program owns ``BN`` output channels and walks K in ``BKH``-byte steps (``2·BKH`` codes), with the loads
software-pipelined (``STAGES`` tiles in flight). The nibbles are sign-extended with shifts, multiplied
by the activation codes and summed in int32 lanes: exact, like the GEMM, and reduced across lanes once
at the end rather than every step. ``SPLIT > 1`` shares K between programs (float32 atomics) when N
alone leaves SMs idle. The epilogue is the GEMM's: ``(acc · s_tok) · s_ch + bias``.

:func:`quantize_gemv` also quantizes the token inside the kernel (each program reads the whole row for its
max, from L2 after the first): at one token the separate quantize launch took up to a quarter of the
linear's time. Its codes are :func:`.quantize.quantize_per_token`'s, bit for bit (the same formula).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..math.quantization import SCALE_EPS
from .quantize import QMAX
from .triton_quantize import _int4_codes
from .triton_w4a4_matmul import split_k_output, split_k_plan


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 16  # output channels a program
    block_k_bytes: int = 256  # packed bytes a row and step (2x as many codes)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4


@triton.jit
def _nibble_products(wp, lo, hi):
    """``(BN, BKH)`` int32 products of the packed weights' low and high nibbles with codes 2j and 2j + 1."""
    s = wp.to(tl.int8, bitcast=True).to(tl.int32)
    return ((s << 28) >> 28) * lo[None, :] + (s >> 4) * hi[None, :]


@triton.jit
def _epilogue(acc, token_scale, sw_ptr, bias_ptr, out_ptr, rn, N, split, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """``(Σ acc · s_tok) · s_ch (+ bias once)``, stored, or added atomically when K is split."""
    out = tl.sum(acc, axis=1).to(tl.float32) * token_scale * tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32) * (split == 0)
    if SPLIT > 1:
        tl.atomic_add(out_ptr + rn, out, mask=rn < N, sem="relaxed")
    else:
        tl.store(out_ptr + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)


@triton.jit
def _gemv_kernel(
    a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, N, KH, stride_wn, kh_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, FP8: tl.constexpr, EVEN_K: tl.constexpr, BN: tl.constexpr,
    BKH: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    j = tl.arange(0, BKH)
    c = tl.arange(0, 2 * BKH)
    w_ptrs = w_ptr + (rn % N)[:, None].to(tl.int64) * stride_wn + j[None, :]  # wrapped rows: no row masks
    acc = tl.zeros((BN, BKH), dtype=tl.int32)
    start = split * kh_per_split  # in bytes (pairs of codes): passed as such so that its alignment is known
    end = tl.minimum(KH, start + kh_per_split)
    for kb in tl.range(start, end, BKH, num_stages=STAGES):
        if EVEN_K:
            wp = tl.load(w_ptrs + kb)
            a = tl.load(a_ptr + 2 * kb + c)
        else:  # zero codes past K: the masked weight bytes unpack to zeros too
            wp = tl.load(w_ptrs + kb, mask=(kb + j < end)[None, :], other=0)
            a = tl.load(a_ptr + 2 * kb + c, mask=2 * kb + c < 2 * end, other=0.0)
        if FP8:
            a = a.to(tl.float32)
        a_lo, a_hi = tl.split(tl.reshape(a.to(tl.int32), (BKH, 2)))  # codes 2j (low nibble), 2j + 1 (high)
        acc += _nibble_products(wp, a_lo, a_hi)
    _epilogue(acc, tl.load(sa_ptr), sw_ptr, bias_ptr, out_ptr, rn, N, split, HAS_BIAS, SPLIT)


@triton.jit
def _quantize_gemv_kernel(
    x_ptr, w_ptr, sw_ptr, bias_ptr, out_ptr, N, KH, stride_wn, kh_per_split, clip, static_amax, eps_amax,
    STATIC: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, BN: tl.constexpr,
    BKH: tl.constexpr, STAGES: tl.constexpr, XBLOCK: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    if STATIC:
        amax = static_amax
    else:  # the row's max over all of K (not just this program's split), as quantize_per_token takes it
        top = tl.zeros((XBLOCK,), dtype=tl.float32)
        for k0 in range(0, 2 * KH, XBLOCK):
            cols = k0 + tl.arange(0, XBLOCK)
            top = tl.maximum(top, tl.abs(tl.load(x_ptr + cols, mask=cols < 2 * KH, other=0.0).to(tl.float32)))
        amax = tl.maximum(tl.max(top, axis=0) * clip, eps_amax)
    seven = amax * 0.0 + 7.0  # div_rn takes tensors: one IEEE division each, as quantize_per_token does
    inv = tl.math.div_rn(seven, amax)
    rn = pid_n * BN + tl.arange(0, BN)
    j = tl.arange(0, BKH)
    c = tl.arange(0, 2 * BKH)
    w_ptrs = w_ptr + (rn % N)[:, None].to(tl.int64) * stride_wn + j[None, :]
    acc = tl.zeros((BN, BKH), dtype=tl.int32)
    start = split * kh_per_split
    end = tl.minimum(KH, start + kh_per_split)
    for kb in tl.range(start, end, BKH, num_stages=STAGES):
        if EVEN_K:
            wp = tl.load(w_ptrs + kb)
            x = tl.load(x_ptr + 2 * kb + c)
        else:  # zero activations past K quantize to zero codes
            wp = tl.load(w_ptrs + kb, mask=(kb + j < end)[None, :], other=0)
            x = tl.load(x_ptr + 2 * kb + c, mask=2 * kb + c < 2 * end, other=0.0)
        q = _int4_codes(x.to(tl.float32) * inv, tl.int8).to(tl.int32)
        q_lo, q_hi = tl.split(tl.reshape(q, (BKH, 2)))
        acc += _nibble_products(wp, q_lo, q_hi)
    _epilogue(acc, tl.math.div_rn(amax, seven), sw_ptr, bias_ptr, out_ptr, rn, N, split, HAS_BIAS, SPLIT)


def pick_gemv_config(n: int, k: int) -> GemvConfig:
    """The H100 sweep's best configs for K >= 4096 (docs/results/2026-11-23-session9/gemm_decode_*.json): no
    split of K anywhere (splitting was slower on every shape, 10.3 against 7.3 µs on 8B o_proj, and needs a zeroed
    float32 output and a conversion); 32-row programs for the widest N, 16 rows of 1024 codes a step from
    N = 2048, and 8-row programs below (N = 1024 then still makes 128 programs; not in the sweep)."""
    if k < 4096:
        return GemvConfig()
    if n >= 16384:
        return GemvConfig(block_n=32, block_k_bytes=256, num_warps=4, num_stages=4)
    if n >= 2048:
        return GemvConfig(block_n=16, block_k_bytes=512, num_warps=4, num_stages=3)
    return GemvConfig(block_n=8, block_k_bytes=256, num_warps=2, num_stages=4)


def _plan(k: int, n: int, config: GemvConfig | None) -> tuple[GemvConfig, int, int]:
    """``(config, split, codes per split)``: K shared in whole ``2·block_k_bytes`` steps."""
    cfg = config or pick_gemv_config(n, k)
    return cfg, *split_k_plan(k, cfg.split_k, 2 * cfg.block_k_bytes)


def gemv(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """``(1, K)`` codes × ``(N, K/2)`` packed weights → ``(1, N)``, like :func:`.w4a4_matmul.w4a4_matmul`."""
    k, n = codes.shape[1], packed.shape[0]
    cfg, split, k_per_split = _plan(k, n, config)  # K/2 and k_per_split/2 go to the kernel: bytes, not codes
    codes = codes.contiguous()
    out = split_k_output((1, n), split, out_dtype, codes.device)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n), split)](
        codes, packed, act_scale, weight_scale, bias if bias is not None else weight_scale, out, n, k // 2,
        packed.stride(0), k_per_split // 2,
        HAS_BIAS=bias is not None, SPLIT=split, FP8=codes.dtype == torch.float8_e4m3fn,
        EVEN_K=k_per_split * split == k, BN=cfg.block_n, BKH=cfg.block_k_bytes, STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return out.to(out_dtype)


def quantize_gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """One token ``x (1, K)`` (float) quantized per token (symmetric INT4, ``clip_ratio`` or a static scale)
    and multiplied by the packed weights: :func:`gemv` after :func:`.quantize.quantize_per_token`, one launch."""
    k, n = x.shape[1], packed.shape[0]
    cfg, split, k_per_split = _plan(k, n, config)
    x = x.contiguous()
    out = split_k_output((1, n), split, out_dtype, x.device)
    _quantize_gemv_kernel[(triton.cdiv(n, cfg.block_n), split)](
        x, packed, weight_scale, bias if bias is not None else weight_scale, out, n, k // 2, packed.stride(0),
        k_per_split // 2, float(clip_ratio), QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS,
        STATIC=static_scale is not None, HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=k_per_split * split == k,
        BN=cfg.block_n, BKH=cfg.block_k_bytes, STAGES=cfg.num_stages, XBLOCK=min(4096, triton.next_power_of_2(k)),
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return out.to(out_dtype)
