"""Prefill of :mod:`.w4a4_matmul` on Hopper's tensor-memory accelerator (TMA): a persistent GEMM of
one-byte codes.

The pointer-based GEMM of :mod:`.triton_w4a4_matmul` reaches 1.34× BF16 at M = 8192 with the weights
unpacked to a byte first (docs/RESULTS.md): each warp computes its own addresses and issues its own
``cp.async`` copies, and every tile starts a new program. Here one program per SM walks the output
tiles in grouped order, and each ``(BM, BK)`` / ``(BN, BK)`` tile arrives by one TMA copy that also
zero-fills past the matrix edges (no masks, no wrapped rows). The epilogue is the pointer GEMM's, so
both compute the same numbers: ``(Σ a·w) · s_tok · s_ch (+ bias)``, exact int32 sums on the INT8 route,
FP8 promoted to float32 every ``promote`` products.

TMA needs 16-byte aligned rows: K a multiple of 16 (:func:`tma_fits`); other shapes take the pointer GEMM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .backend import sm_count, stages_that_fit
from .triton_w4a4_matmul import GemmConfig, _dot, _tile_epilogue


@triton.jit
def _tma_kernel(
    a_desc, w_desc, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
    HAS_BIAS: tl.constexpr, FP8: tl.constexpr, ACC_TY: tl.constexpr, PROMOTE: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    k_steps = tl.cdiv(K, BK)
    per_group = GROUP_M * grid_n
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, PROGRAMS, flatten=True, warp_specialize=WARP_SPECIALIZE):
        first_m = (tile // per_group) * GROUP_M  # grouped order: programs running together share weight tiles in L2
        rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % rows_in_group
        pid_n = (tile % per_group) // rows_in_group
        acc = tl.zeros((BM, BN), dtype=ACC_TY)
        for ks in range(k_steps):
            a = a_desc.load([pid_m * BM, ks * BK])
            w = w_desc.load([pid_n * BN, ks * BK])
            acc = _dot(a, w, acc, False, FP8, PROMOTE)
        # the epilogue in two column halves: its register-to-store layout change goes through shared memory,
        # which the pipeline's tile buffers already fill (a whole 256x128 float32 tile would not fit beside them)
        left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN // 2)
        _tile_epilogue(left, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, 0, HAS_BIAS, False, 1)
        rn += BN // 2
        _tile_epilogue(right, rm, rn, M, N, sa_ptr, sw_ptr, bias_ptr, out_ptr, stride_om, 0, HAS_BIAS, False, 1)


def tma_fits(codes: torch.Tensor, weights: torch.Tensor) -> bool:
    """TMA copies rows whose starts are 16-byte aligned: contiguous one-byte operands with K % 16 == 0."""
    k = codes.shape[1]
    aligned = all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (codes, weights))
    return aligned and k % 16 == 0 and weights.shape[1] == k and weights.element_size() == 1


def pipeline_stages(cfg: GemmConfig, out_dtype: torch.dtype) -> int:
    """``cfg.num_stages``, fewer where the tile buffers and the half-tile epilogue would not fit in shared
    memory (a 256x128 tile with float32 out fits 3 stages, not 4)."""
    epilogue = cfg.block_m * cfg.block_n // 2 * out_dtype.itemsize
    stage = (cfg.block_m + cfg.block_n) * cfg.block_k
    return stages_that_fit(cfg.num_stages, stage, epilogue + 1024) or min(cfg.num_stages, 2)


def _programs(device: torch.device) -> int:
    return sm_count(device) or 4


def tma_matmul(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    weights: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    cfg: GemmConfig,
) -> torch.Tensor:
    """``(M, K)`` codes × ``(N, K)`` weight codes one a byte (same dtype, int8 or e4m3) → ``(M, N)``, tiled as
    ``cfg`` says (its split-K, swap and unpacking fields do not apply here)."""
    m, k = codes.shape
    n = weights.shape[0]
    fp8 = codes.dtype == torch.float8_e4m3fn
    a_desc = TensorDescriptor.from_tensor(codes, [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor.from_tensor(weights, [cfg.block_n, cfg.block_k])
    out = torch.empty((m, n), dtype=out_dtype, device=codes.device)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    programs = min(tiles, _programs(codes.device))
    _tma_kernel[(programs,)](
        a_desc, w_desc, act_scale, weight_scale, bias if bias is not None else weight_scale, out, m, n, k,
        out.stride(0), HAS_BIAS=bias is not None, FP8=fp8, ACC_TY=tl.float32 if fp8 else tl.int32,
        PROMOTE=cfg.block_k if cfg.promote is None else cfg.promote, BM=cfg.block_m, BN=cfg.block_n,
        BK=cfg.block_k, GROUP_M=cfg.group_m, PROGRAMS=programs, WARP_SPECIALIZE=cfg.warp_specialize,
        num_warps=cfg.num_warps, num_stages=pipeline_stages(cfg, out_dtype),
    )  # fmt: skip
    return out
