"""Few-token decode of :mod:`.w4a4_matmul` on the CUDA cores' 4-way integer dot (``dp4a``).

At M = 2–16 a tensor-core tile is mostly padding, and the GEMM's cost is unpacking the weights into
the MMA's register layout; the one-token GEMV (:mod:`.triton_w4a4_gemv`) streams the weights but spends
two multiply-adds a code and token. Here one ``dp4a`` multiplies four weight codes by four activation
codes and adds them: a 32-bit weight word (8 codes) costs four integer operations to unpack, shared
by all tokens, then two ``dp4a`` a token.

The weight word's nibbles are two's complement; ``xor 0x88888888`` makes each ``v + 8`` (0..15), the
low nibbles (even k) and high nibbles (odd k) are masked out as unsigned bytes, and the activation
codes are regrouped into even-k and odd-k words to meet them. ``dp4a.u32.s32`` then sums
``(v + 8)·a``; subtracting ``8·Σa`` (itself one ``dp4a`` of the activation words with ``0x01010101``)
leaves ``Σ v·a`` exactly, in int32 (``nibbles="offset"``). Two ways need no ``Σa``, with ``dp4a.s32.s32``:
``"signed"`` sign-extends the nibbles into bytes (``b | (b & 8)·30`` sets a byte's high half where its nibble
is negative, with no carry between bytes); ``"x16"`` leaves each nibble in its byte's high half, the signed
byte ``16·v`` (``and 0xF0F0F0F0``, after a shift by four for the low ones), and shifts the sum back by four.
The even and odd activation words are one byte permute (``prmt``) each. The interpreter has no inline
assembly, so there the same sums and permutes are spelled out byte by byte (the arithmetic is what the
CPU tests check; ``tests/test_hopper_compile.py`` checks the instructions).

:func:`.w4a4_matmul.w4a4_matmul` picks it for 1–4 tokens: on the H100 at M = 8 it beat every tensor-core
tile on all five LLaMA-3 shapes (1.6–2.1× BF16 against 1.1–1.5×; session 13), from M = 8 the sliced
tensor-core kernel is ahead; at one token it streams the weights faster than the GEMV, whose two multiply-adds
a code bound it on the integer ALUs (8B down 13.4 against 15.0 µs; session 19). Over interleaved gate/up rows it
takes the SwiGLU epilogue of :mod:`.w4a4_swiglu` at the same token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from .backend import interpreting
from .triton_pdl import programmatic_launch, release_dependents, release_mode, wait_for_inputs
from .triton_quantize import TRITON_DTYPES
from .triton_w4a4_matmul import _finish_tile, split_k_output, split_k_plan

NIBBLE_BIAS = tl.constexpr(-2004318072)  # 0x88888888 as int32: xor makes each two's complement nibble v + 8
LOW_NIBBLES = tl.constexpr(0x0F0F0F0F)
HIGH_NIBBLES = tl.constexpr(-252645136)  # 0xF0F0F0F0 as int32
ONES = tl.constexpr(0x01010101)
NIBBLE_MODES = {"offset": 0, "signed": 1, "x16": 2}


@dataclass(frozen=True)
class Dp4aConfig:
    block_n: int = 32  # output channels a program
    block_k_words: int = 16  # 32-bit weight words (8 codes each) a row and step
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4
    nibbles: str = "offset"  # the weight nibbles as v + 8 ("offset"), sign-extended ("signed"), or as 16·v ("x16")
    pdl: bool = True  # launched as a programmatic dependent of the quantize before it (.triton_pdl)
    release: str = "after_loop"  # when the kernel after it may launch: "start", "after_loop" (its sums done), "none"


def pick_dp4a_config(n: int, m: int = 1) -> Dp4aConfig:
    """The H100 sweeps (docs/RESULTS.md). Session 19, offset nibbles: 32 channels × 32 words on the widest layers
    (8B gate+up 23.2 µs at one token, 24.4 at four), 16 × 64 on the others. Session 21, nibbles as 16·v with
    unmasked loads, one token: 8 channels × 128 words on two warps for the narrower layers (8B down 12.2 against
    12.9 µs with 16 × 64 on four warps, o 5.1 against 5.2, qkv within 0.1 µs); its accumulators (tokens ×
    channels × words) would spill at 16 tokens."""
    if n >= 16384:
        return Dp4aConfig(32, 32, num_warps=4, num_stages=4, nibbles="x16")
    if m == 1:
        return Dp4aConfig(8, 128, num_warps=2, num_stages=4, nibbles="x16")
    return Dp4aConfig(16, 64, num_warps=4, num_stages=4, nibbles="x16")


@triton.jit
def _dp4a(a, b, c, SIGNED: tl.constexpr, INTERPRET: tl.constexpr):
    """``c + Σ_i a_i · s8(b_i)`` over the four bytes of int32 words ``a`` (u8, or s8 with SIGNED) and ``b``."""
    if INTERPRET:
        acc = c
        for i in tl.static_range(4):
            ai = ((a << (24 - 8 * i)) >> 24) if SIGNED else ((a >> (8 * i)) & 0xFF)
            acc += ai * ((b << (24 - 8 * i)) >> 24)
        return acc
    if SIGNED:
        return tl.inline_asm_elementwise(
            "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32, is_pure=True, pack=1
        )
    return tl.inline_asm_elementwise(
        "dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32, is_pure=True, pack=1
    )


@triton.jit
def _byte(w, i: tl.constexpr):
    return (w >> (8 * i)) & 0xFF


@triton.jit
def _even_odd(a0, a1, INTERPRET: tl.constexpr):
    """Words of codes 8j..8j+3 and 8j+4..8j+7 → words of the even codes (0, 2, 4, 6) and the odd ones."""
    if INTERPRET:
        even = _byte(a0, 0) | (_byte(a0, 2) << 8) | (_byte(a1, 0) << 16) | (_byte(a1, 2) << 24)
        odd = _byte(a0, 1) | (_byte(a0, 3) << 8) | (_byte(a1, 1) << 16) | (_byte(a1, 3) << 24)
        return even, odd
    even = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x6420;", "=r,r,r", [a0, a1], dtype=tl.int32,
                                     is_pure=True, pack=1)  # fmt: skip
    odd = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7531;", "=r,r,r", [a0, a1], dtype=tl.int32,
                                    is_pure=True, pack=1)  # fmt: skip
    return even, odd


@triton.jit
def _sign_extended(nibbles):
    """Four nibbles, one in the low half of each byte, as four signed bytes: ``(b & 8)·30`` is 0xF0 in a byte
    whose nibble is negative and 0 elsewhere, and stays within its byte."""
    return nibbles | ((nibbles & 0x08080808) * 30)


@triton.jit
def _dp4a_kernel(
    a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, KW, stride_am, stride_wn, stride_om, kw_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BKW: tl.constexpr, STAGES: tl.constexpr, NIBBLES: tl.constexpr, INTERPRET: tl.constexpr, PDL: tl.constexpr,
    RELEASE: tl.constexpr, inv=1.0, SWIGLU: tl.constexpr = False, ROUND_TY: tl.constexpr = tl.bfloat16,
):  # fmt: skip
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    release_dependents(PDL and RELEASE == 1)  # the kernel after this one may launch now, and wait for it
    wait_for_inputs(PDL)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    j = tl.arange(0, BKW)
    c = tl.arange(0, 2 * BKW)
    w_ptrs = w_ptr + (rn % N)[:, None].to(tl.int64) * stride_wn + j[None, :]  # wrapped rows: no row masks
    a_ptrs = a_ptr + (rm % M)[:, None].to(tl.int64) * stride_am + c[None, :]  # padded tokens are never stored
    acc = tl.zeros((BM, BN, BKW), dtype=tl.int32)
    row_sum = tl.zeros((BM, BKW), dtype=tl.int32)
    start = split * kw_per_split
    end = tl.minimum(KW, start + kw_per_split)
    for kw in tl.range(start, end, BKW, num_stages=STAGES):
        # two activation words (codes 8j..8j+3, 8j+4..8j+7) a weight word
        if EVEN_K:  # no masks: their compares and selects were a fifth of the loop's instructions
            w = tl.load(w_ptrs + kw)
            a = tl.load(a_ptrs + 2 * kw)
        else:  # words past K load zeros
            w = tl.load(w_ptrs + kw, mask=(kw + j < end)[None, :], other=0)
            a = tl.load(a_ptrs + 2 * kw, mask=(2 * kw + c < 2 * end)[None, :], other=0)
        a0, a1 = tl.split(tl.reshape(a, (BM, BKW, 2)))
        even, odd = _even_odd(a0, a1, INTERPRET)
        if NIBBLES == 2:
            lo = ((w << 4) & HIGH_NIBBLES)[None, :, :]
            hi = (w & HIGH_NIBBLES)[None, :, :]
        elif NIBBLES == 1:
            lo = _sign_extended(w & LOW_NIBBLES)[None, :, :]
            hi = _sign_extended((w >> 4) & LOW_NIBBLES)[None, :, :]
        else:
            u = w ^ NIBBLE_BIAS
            lo = (u & LOW_NIBBLES)[None, :, :]
            hi = ((u >> 4) & LOW_NIBBLES)[None, :, :]
        acc = _dp4a(lo, even[:, None, :], acc, NIBBLES != 0, INTERPRET)
        acc = _dp4a(hi, odd[:, None, :], acc, NIBBLES != 0, INTERPRET)
        if NIBBLES == 0:
            row_sum = _dp4a(tl.full((BM, BKW), ONES, tl.int32), even, row_sum, False, INTERPRET)
            row_sum = _dp4a(tl.full((BM, BKW), ONES, tl.int32), odd, row_sum, False, INTERPRET)
    release_dependents(PDL and RELEASE == 2)  # the sums are done: the next kernel may launch and wait for them
    # zero weight words past K add (0 + 8)·0 with the offset: the activation there is masked to zero too
    total = tl.sum(acc, axis=2)
    if NIBBLES == 2:
        total = total >> 4  # Σ 16·v·a, a multiple of 16: exact
    elif NIBBLES == 0:
        total -= 8 * tl.sum(row_sum, axis=1)[:, None]
    _finish_tile(total, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split, pid_n * (BN // 2), inv,
                 HAS_BIAS, False, SPLIT, SWIGLU, ROUND_TY, INTERPRET)  # fmt: skip


def dp4a_matmul(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: Dp4aConfig | None = None,
    swiglu_inv: float | None = None,
) -> torch.Tensor:
    """``(M, K)`` int8 codes (M ≤ 16) × ``(N, K/2)`` packed weights → ``(M, N)``, like
    :func:`.w4a4_matmul.w4a4_matmul`; with ``swiglu_inv`` the SwiGLU epilogue (:mod:`.w4a4_swiglu`), int8 codes
    ``(M, N / 2)`` out."""
    cfg = config or pick_dp4a_config(packed.shape[0], codes.shape[0])
    m, k = codes.shape
    n = packed.shape[0]
    if codes.dtype != torch.int8 or m > 16 or k % 8:
        raise ConfigError(f"the dp4a kernel takes int8 codes of at most 16 rows and K a multiple of 8, got "
                          f"{codes.dtype} ({m}, {k})")  # fmt: skip
    if cfg.nibbles not in NIBBLE_MODES:
        raise ConfigError(f"nibbles must be one of {', '.join(NIBBLE_MODES)}, got {cfg.nibbles!r}")
    kw = k // 8
    split, kw_per_split = split_k_plan(kw, cfg.split_k, cfg.block_k_words)
    swiglu = swiglu_inv is not None
    if swiglu and (split > 1 or cfg.block_n % 2):
        raise ConfigError(f"the SwiGLU epilogue needs whole output tiles of an even width: no split-K, got {cfg}")
    words_a = codes.contiguous().view(torch.int32)  # 4 codes a word
    words_w = packed.contiguous().view(torch.int32)  # 8 codes a word
    out = split_k_output((m, n), split, out_dtype, codes.device, swiglu)
    pdl = cfg.pdl and programmatic_launch(codes.device)
    _dp4a_kernel[(triton.cdiv(n, cfg.block_n), split)](
        words_a, words_w, act_scale.reshape(-1), weight_scale, bias if bias is not None else weight_scale, out,
        m, n, kw, words_a.stride(0), words_w.stride(0), out.stride(0), kw_per_split,
        HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=kw % cfg.block_k_words == 0 and kw_per_split * split == kw,
        BM=triton.next_power_of_2(m), BN=cfg.block_n,
        BKW=cfg.block_k_words, STAGES=cfg.num_stages, NIBBLES=NIBBLE_MODES[cfg.nibbles], INTERPRET=interpreting(),
        PDL=pdl, RELEASE=release_mode(cfg.release), inv=1.0 if swiglu_inv is None else swiglu_inv, SWIGLU=swiglu,
        ROUND_TY=TRITON_DTYPES[out_dtype], num_warps=cfg.num_warps, launch_pdl=pdl,
    )  # fmt: skip
    return out if swiglu else out.to(out_dtype)
