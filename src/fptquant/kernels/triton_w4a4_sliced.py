"""Few-token decode of :mod:`.w4a4_matmul` (M = 2–16) on the tensor cores, K sliced across warps.

At M = 16 the GEMM (:mod:`.triton_w4a4_matmul`) spent about eight instructions a weight code: each
unpacked nibble was a byte of its own, shifted, converted and packed again into the MMA's registers.
Here the unpacking works on whole registers of four packed bytes and leaves each nibble where a byte's
sign lives: ``and 0xF0F0F0F0`` turns every high nibble ``v`` into the signed byte ``16·v`` (-128..112), a
shift by four and the same ``and`` every low nibble, so eight codes cost three instructions and need no
offset correction. The sum runs on ``16·v`` (at most ``1024·K`` in size, far inside int32) and is
shifted back by four at the end, exactly. The low nibbles (even k) and the high ones (odd k) meet the
even and odd activation columns in two dots.

With 16 tokens on the MMA's 16 rows, warps that split the output channels would each need the whole
activation tile and shuffle it to even and odd columns again. So each warp takes its own slice of K
instead (a batched 3-D dot, batch = slice), and the slices' partial sums are added once at the end.

The interpreter has no inline assembly, so there the same nibbles are taken byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from .backend import interpreting, sm_count
from .triton_pdl import programmatic_launch, release_dependents, release_mode, wait_for_inputs
from .triton_quantize import TRITON_DTYPES
from .triton_w4a4_matmul import _finish_tile, split_k_output, split_k_plan

MMA_ROWS = 16  # mma.sync's m16: the tokens, padded
H100_SMS = 132  # the tile plan's SM count where the device has none to give (the CPU interpreter)


@dataclass(frozen=True)
class SlicedConfig:  # defaults: the common pick of pick_sliced_config
    block_n: int = 32  # output channels a program
    block_k: int = 512  # codes a step, all slices together
    slices: int = 2  # K slices a step, one warp each
    split_k: int = 1
    num_stages: int = 4
    pdl: bool = True  # launched as a programmatic dependent of the quantize before it (.triton_pdl)
    release: str = "after_loop"  # when the kernel after it may launch: "start", "after_loop" (its sums done), "none"
    preload: int = 0  # steps of weights read into registers before the wait for the codes (0, 1 or 2)


def pick_sliced_config(n: int, k: int, device: torch.device | None = None) -> SlicedConfig:
    """The H100 sweeps at M = 16 (docs/RESULTS.md, sessions 15, 20 and 21). Where 32-channel programs are no
    more than the SMs of ``device`` (8B o and down): four warps a program, 1024 codes a step in five stages (whole
    linear as the quantize's programmatic dependent, session 21: 8B o 8.3 against 9.8 µs with 512 codes in four
    stages, down 16.3 against 17.9 launched plainly; four stages lost 5–7 µs when launched early). Where there
    are hundreds on a short K (8B gate+up, 896), one warp each, three stages (26.9 against 27.7 µs whole with
    four). Between, on a short K (8B qkv): 16 channels on one warp, six stages (7.7–7.9 against 8.5 µs).
    Otherwise two warps, 512 codes a step. The first two read their first step of weights before the wait for the
    codes (session 24, two calls, whole linear: o 8.0 against 8.3–8.6 µs, gate+up 26.5 against 27.2–27.3, down
    15.9–16.3 against 16.2–16.3; two steps gained less, and qkv's config lost 0.6 µs with one)."""
    sms = (sm_count(device) if device is not None else None) or H100_SMS
    programs = triton.cdiv(n, 32)
    if programs <= sms:
        return SlicedConfig(block_k=1024, slices=4, num_stages=5, preload=1)
    if programs >= 6 * sms and k <= 4096:
        return SlicedConfig(block_k=256, slices=1, num_stages=3, preload=1)
    if k <= 4096:
        return SlicedConfig(block_n=16, block_k=256, slices=1, num_stages=6)
    return SlicedConfig()


@triton.jit
def _low_nibbles_x16(w, INTERPRET: tl.constexpr):
    """``uint8`` → 16 × its low nibble as a signed ``int8``; four bytes a register op on the GPU."""
    if INTERPRET:
        return ((w << 4) & 0xF0).to(tl.int8, bitcast=True)
    return tl.inline_asm_elementwise(
        "{.reg .b32 t; shl.b32 t, $1, 4; and.b32 $0, t, 0xF0F0F0F0;}",
        "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4,
    )  # fmt: skip


@triton.jit
def _high_nibbles_x16(w, INTERPRET: tl.constexpr):
    """``uint8`` → 16 × its high nibble as a signed ``int8``."""
    if INTERPRET:
        return (w & 0xF0).to(tl.int8, bitcast=True)
    return tl.inline_asm_elementwise(
        "and.b32 $0, $1, 0xF0F0F0F0;", "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4
    )  # fmt: skip


@triton.jit
def _step_weights(w_ptrs, k, k_end, byte, UNMASKED: tl.constexpr):
    """The packed weights of the step at ``k``; zero past ``k_end`` (a tail, or a preloaded step past a short K)."""
    if UNMASKED:
        return tl.load(w_ptrs + k // 2)
    return tl.load(w_ptrs + k // 2, mask=k // 2 + byte < k_end // 2, other=0)


@triton.jit
def _step_sum(acc, a_ptrs, wp, k, k_end, code, token_ok, UNMASKED: tl.constexpr, SLICES: tl.constexpr,
              BM: tl.constexpr, KS: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """``acc`` plus the step at ``k``: the even codes meet the low nibbles, the odd ones the high nibbles. MMA rows
    past the tokens load zeros (``token_ok``) instead of repeating a token: rows wrapped onto one token's address
    made the GEMM at one token 1.7× slower than at sixteen (session 26)."""
    if UNMASKED:
        a = tl.load(a_ptrs + k, mask=token_ok, other=0)
    else:  # zero activations past K
        a = tl.load(a_ptrs + k, mask=token_ok & (k + code < k_end), other=0)
    a_even, a_odd = tl.split(tl.reshape(a, (SLICES, BM, KS // 2, 2)))
    acc = tl.dot(a_even, _low_nibbles_x16(wp, INTERPRET), acc, out_dtype=tl.int32)
    return tl.dot(a_odd, _high_nibbles_x16(wp, INTERPRET), acc, out_dtype=tl.int32)


@triton.jit
def _sliced_kernel(
    a_ptr, w_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, stride_am, stride_wn, stride_om, k_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, SLICES: tl.constexpr, STAGES: tl.constexpr, INTERPRET: tl.constexpr,
    PDL: tl.constexpr, RELEASE: tl.constexpr, PRELOAD: tl.constexpr, inv=1.0, SWIGLU: tl.constexpr = False,
    ROUND_TY: tl.constexpr = tl.bfloat16,
):  # fmt: skip
    KS: tl.constexpr = BK // SLICES  # codes a slice and step
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    release_dependents(PDL and RELEASE == 1)  # the kernel after this one may launch now, and wait for it
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    s = tl.arange(0, SLICES)[:, None, None]
    byte = s * (KS // 2) + tl.arange(0, KS // 2)[None, :, None]  # (slice, byte, 1)
    code = s * KS + tl.arange(0, KS)[None, None, :]  # (slice, 1, code)
    # wrapped channels: no masks on them
    w_ptrs = w_ptr + (rn % N)[None, None, :].to(tl.int64) * stride_wn + byte  # (slice, byte, channel)
    a_ptrs = a_ptr + rm[None, :, None].to(tl.int64) * stride_am + code  # (slice, token, code)
    token_ok = (rm < M)[None, :, None]
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    # no kernel writes the weights: the first PRELOAD steps of them are read into registers before the wait,
    # while the quantize before this kernel still runs, and meet their activations after the loop (masked: a
    # short K may end inside them)
    if PRELOAD >= 1:
        w_first = _step_weights(w_ptrs, k_start, k_end, byte, False)
    if PRELOAD >= 2:
        w_second = _step_weights(w_ptrs, k_start + BK, k_end, byte, False)
    wait_for_inputs(PDL)
    acc = tl.zeros((SLICES, BM, BN), dtype=tl.int32)
    for k in tl.range(k_start + PRELOAD * BK, k_end, BK, num_stages=STAGES):
        wp = _step_weights(w_ptrs, k, k_end, byte, EVEN_K)
        acc = _step_sum(acc, a_ptrs, wp, k, k_end, code, token_ok, EVEN_K, SLICES, BM, KS, INTERPRET)
    if PRELOAD >= 1:
        acc = _step_sum(acc, a_ptrs, w_first, k_start, k_end, code, token_ok, False, SLICES, BM, KS, INTERPRET)
    if PRELOAD >= 2:
        acc = _step_sum(acc, a_ptrs, w_second, k_start + BK, k_end, code, token_ok, False, SLICES, BM, KS, INTERPRET)
    release_dependents(PDL and RELEASE == 2)  # the sums are done: the next kernel may launch and wait for them
    total = tl.sum(acc, axis=0) >> 4  # Σ 16·v·a, a multiple of 16: the shift is exact
    _finish_tile(total, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, split, pid_n * (BN // 2), inv,
                 HAS_BIAS, False, SPLIT, SWIGLU, ROUND_TY, INTERPRET)  # fmt: skip


def sliced_matmul(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: SlicedConfig | None = None,
    swiglu_inv: float | None = None,
) -> torch.Tensor:
    """``(M, K)`` int8 codes (M ≤ 16) × ``(N, K/2)`` packed weights → ``(M, N)``, like
    :func:`.w4a4_matmul.w4a4_matmul`; with ``swiglu_inv`` the SwiGLU epilogue (:mod:`.w4a4_swiglu`), int8 codes
    ``(M, N / 2)`` out."""
    m, k = codes.shape
    n = packed.shape[0]
    cfg = config or pick_sliced_config(n, k, codes.device)
    if codes.dtype != torch.int8 or m > MMA_ROWS:
        raise ConfigError(
            f"the sliced kernel takes int8 codes of at most {MMA_ROWS} rows, got {codes.dtype} ({m}, {k})"
        )
    if any(v & (v - 1) for v in (cfg.block_n, cfg.block_k, cfg.slices)) or cfg.block_n < 16:
        raise ConfigError(f"block_n, block_k and slices must be powers of two (block_n ≥ 16), got {cfg}")
    if cfg.preload not in (0, 1, 2):
        raise ConfigError(f"preload must be 0, 1 or 2 steps of weights, got {cfg.preload}")
    if cfg.block_k // cfg.slices < 64:
        raise ConfigError(f"block_k {cfg.block_k} must give each of {cfg.slices} slices a step of ≥ 64 codes")
    codes, packed = codes.contiguous(), packed.contiguous()  # the kernel steps along K one byte at a time
    split, k_per_split = split_k_plan(k, cfg.split_k, cfg.block_k)
    swiglu = swiglu_inv is not None
    if swiglu and split > 1:
        raise ConfigError(f"the SwiGLU epilogue needs whole output tiles: no split-K, got {cfg}")
    out = split_k_output((m, n), split, out_dtype, codes.device, swiglu)
    pdl = cfg.pdl and programmatic_launch(codes.device)
    _sliced_kernel[(triton.cdiv(n, cfg.block_n), split)](
        codes, packed, act_scale.reshape(-1), weight_scale, bias if bias is not None else weight_scale, out,
        m, n, k, codes.stride(0), packed.stride(0), out.stride(0), k_per_split,
        HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=k % cfg.block_k == 0 and k_per_split * split == k,
        BM=MMA_ROWS, BN=cfg.block_n, BK=cfg.block_k, SLICES=cfg.slices, STAGES=cfg.num_stages,
        INTERPRET=interpreting(), PDL=pdl, RELEASE=release_mode(cfg.release), PRELOAD=cfg.preload,
        inv=1.0 if swiglu_inv is None else swiglu_inv, SWIGLU=swiglu, ROUND_TY=TRITON_DTYPES[out_dtype],
        num_warps=cfg.slices, launch_pdl=pdl,
    )  # fmt: skip
    return out if swiglu else out.to(out_dtype)
