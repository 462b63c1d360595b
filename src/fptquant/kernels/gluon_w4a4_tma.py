"""Prefill of :mod:`.w4a4_matmul` on Hopper in Gluon (Triton's explicit-layout dialect): a persistent,
warp-specialized INT8 GEMM of one-byte codes.

Triton's ``tl.dot`` pipeliner waits for every integer wgmma group before the next loads
(``wgmma.wait_group 0``: docs/RESULTS.md, session 7), so the INT8 kernels of :mod:`.triton_w4a4_tma` stall the
tensor cores once a K step. Gluon states the schedule itself:

- one loader warp streams ``(BM, BK)`` activation and ``(BN, BK)`` weight tiles by TMA into a ring of
  ``STAGES`` shared-memory slots, each slot guarded by a ``ready`` barrier (bytes landed) and an ``empty`` one
  (its MMA finished);
- the ``num_warps`` MMA warps keep one asynchronous wgmma group in flight (``wait_group 1``) and free a slot
  as soon as the group that read it is done;
- the epilogue ``(acc · s_tok) · s_ch (+ bias)`` goes through shared memory to a TMA store, which overlaps the
  next tile's main loop.

Same numbers as the pointer GEMM: exact int32 sums, then the float32 epilogue, rounded once. Gluon has no
interpreter: CI checks its sm_90a build (tests/test_hopper_compile.py), the GPU script its numbers.
"""

from __future__ import annotations

import functools

import torch
import triton

from .backend import interpreting, sm_count, stages_that_fit
from .triton_w4a4_tma import tma_fits

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError:  # an older Triton: the Triton TMA kernel serves
    gluon = None
# Gluon is experimental and its API moved between releases; this kernel is written against 3.6 (the GPU machine)
# and checked on 3.9 (tests/test_hopper_compile.py). Older ones take the Triton TMA kernel.
if gluon is not None and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 6):
    gluon = None

if gluon is not None:
    # renamed between Triton 3.6 (the GPU machine) and 3.9 (here)
    _tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    _tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
    _thread_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier

    @gluon.jit
    def _tile_coords(tile, grid_m, grid_n, GROUP_M: gl.constexpr):
        """Grouped order: programs running together share weight tiles in L2."""
        per_group = GROUP_M * grid_n
        first_m = (tile // per_group) * GROUP_M
        rows = gl.minimum(grid_m - first_m, GROUP_M)
        return first_m + (tile % per_group) % rows, (tile % per_group) // rows

    @gluon.jit
    def _swiglu_codes(out, inv, ROUND_TY: gl.constexpr):
        """Down_proj's int8 codes of ``silu(gate) · up`` from a float32 tile of interleaved gate/up columns, in
        :func:`.triton_quantize._swiglu`'s roundings and :func:`.triton_quantize._int4_codes`' rounding trick."""
        BM: gl.constexpr = out.shape[0]
        BN: gl.constexpr = out.shape[1]
        gate, up = gl.split(gl.reshape(out.to(ROUND_TY).to(gl.float32), [BM, BN // 2, 2]))
        act = (gate / (1.0 + gl.exp(-gate))).to(ROUND_TY).to(gl.float32)
        act = (act * up).to(ROUND_TY).to(gl.float32) * inv
        magic = gl.minimum(gl.maximum(act, -8.0), 7.0) + 12582912.0  # 1.5·2^23: round half to even
        return magic.to(gl.int32, bitcast=True).to(gl.int8)

    @gluon.jit
    def _load_partition(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, STAGES: gl.constexpr,
                        GROUP_M: gl.constexpr, PROGRAMS: gl.constexpr):  # fmt: skip
        BM: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[0]
        grid_m = gl.cdiv(M, BM)
        grid_n = gl.cdiv(N, BN)
        step = 0
        for tile in range(gl.program_id(0), grid_m * grid_n, PROGRAMS):
            pid_m, pid_n = _tile_coords(tile, grid_m, grid_n, GROUP_M)
            for ks in range(gl.cdiv(K, BK)):
                slot = step % STAGES
                # a fresh barrier passes a wait on the parity before its first phase: the first round is free
                mbarrier.wait(empty.index(slot), ((step // STAGES) & 1) ^ 1)
                mbarrier.expect(ready.index(slot), (BM + BN) * BK)
                _tma_load(a_desc, [pid_m * BM, ks * BK], ready.index(slot), a_bufs.index(slot))
                _tma_load(w_desc, [pid_n * BN, ks * BK], ready.index(slot), w_bufs.index(slot))
                step += 1

    @gluon.jit
    def _mma_partition(a_bufs, w_bufs, out_buf, ready, empty, out_desc, sa_ptr, sw_ptr, bias_ptr, M, N, K, inv,
                       HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                       PROGRAMS: gl.constexpr, SWIGLU: gl.constexpr, ROUND_TY: gl.constexpr,
                       num_warps: gl.constexpr):  # fmt: skip
        BM: gl.constexpr = a_bufs.shape[1]
        BK: gl.constexpr = a_bufs.shape[2]
        BN: gl.constexpr = w_bufs.shape[1]
        INSTR_N: gl.constexpr = 128 if BN > 128 else BN  # the widest s8 wgmma Triton 3.6 lowers
        WARPS_M: gl.constexpr = num_warps if BM >= 16 * num_warps else 4
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS_M, num_warps // WARPS_M], instr_shape=[16, INSTR_N, 32]
        )
        grid_m = gl.cdiv(M, BM)
        grid_n = gl.cdiv(N, BN)
        step = 0
        for tile in range(gl.program_id(0), grid_m * grid_n, PROGRAMS):
            pid_m, pid_n = _tile_coords(tile, grid_m, grid_n, GROUP_M)
            acc = gl.zeros([BM, BN], dtype=gl.int32, layout=acc_layout)
            for ks in range(gl.cdiv(K, BK)):
                slot = step % STAGES
                mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
                acc = warpgroup_mma(a_bufs.index(slot), w_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_bufs.index(slot), w_bufs.index(slot)))
                # the previous step's group has finished: its slot may be refilled
                mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=ks > 0)
                step += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES))
            rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
            cols = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
            sa = gl.load(sa_ptr + rows, mask=rows < M, other=0.0)
            sw = gl.load(sw_ptr + cols, mask=cols < N, other=0.0)
            out = acc.to(gl.float32) * gl.expand_dims(sa, 1) * gl.expand_dims(sw, 0)
            if HAS_BIAS:
                out += gl.expand_dims(gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32), 0)
            if SWIGLU:
                out = _swiglu_codes(out, inv, ROUND_TY)
            tma.store_wait(0)  # the previous tile's store has read the buffer
            _thread_barrier()
            out_buf.store(out.to(out_desc.dtype))
            fence_async_shared()
            _thread_barrier()
            _tma_store(out_desc, [pid_m * BM, pid_n * out_desc.block_type.shape[1]], out_buf)  # clipped at the edges
        tma.store_wait(0)

    @gluon.jit
    def _gluon_tma_kernel(a_desc, w_desc, out_desc, sa_ptr, sw_ptr, bias_ptr, M, N, K, inv, HAS_BIAS: gl.constexpr,
                          STAGES: gl.constexpr, GROUP_M: gl.constexpr, PROGRAMS: gl.constexpr,
                          SWIGLU: gl.constexpr, ROUND_TY: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
        """SWIGLU: ``w_desc``'s rows are interleaved gate/up ones and ``out_desc`` takes down_proj's int8 codes,
        half as many columns (:mod:`.triton_swiglu_codes`); ``inv`` is the reciprocal of their static scale."""
        BM: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[0]
        a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BM, BK], a_desc.layout)
        w_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BN, BK], w_desc.layout)
        out_buf = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        # the argument tuples stay inline: held in a variable, their constexprs would turn into tensors
        gl.warp_specialize([
            (_mma_partition, (a_bufs, w_bufs, out_buf, ready, empty, out_desc, sa_ptr, sw_ptr, bias_ptr, M, N, K, inv,
                              HAS_BIAS, STAGES, GROUP_M, PROGRAMS, SWIGLU, ROUND_TY, num_warps)),
            (_load_partition, (a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, STAGES, GROUP_M, PROGRAMS)),
        ], [1], [40])  # fmt: skip
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))


@functools.cache
def _shared_layout(block: tuple, dtype) -> gl.NVMMASharedLayout:
    """The TMA tile's shared-memory layout; cached, as building it costs tens of µs of Python a launch."""
    return gl.NVMMASharedLayout.get_default_for(list(block), dtype)


def gluon_stages(
    block_m: int, block_n: int, block_k: int, stages: int, out_dtype: torch.dtype, swiglu: bool = False
) -> int:
    """``stages``, fewer where the ring and the output tile would not fit in shared memory (0: not even two).
    ``swiglu``: the output tile is ``block_n / 2`` one-byte codes (``out_dtype`` is then the linears' dtype)."""
    out_tile = block_m * block_n // 2 if swiglu else block_m * block_n * out_dtype.itemsize
    return stages_that_fit(stages, (block_m + block_n) * block_k, out_tile + 4096)


def gluon_fits(codes: torch.Tensor, weights: torch.Tensor, out_dtype: torch.dtype, cfg, swiglu: bool = False) -> bool:
    """Gluon present, a Hopper GPU, int8 codes and one-byte int8 weights with 16-byte aligned rows (TMA),
    output rows of a multiple of 16 bytes (the TMA store), and ``cfg``'s tile with its output tile in shared
    memory (a 256x128 float32 one is not)."""
    if gluon is None or interpreting() or not codes.is_cuda or torch.cuda.get_device_capability(codes.device)[0] != 9:
        return False
    if not gluon_stages(cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_stages, out_dtype, swiglu):
        return False
    out_row = weights.shape[0] // 2 if swiglu else weights.shape[0] * out_dtype.itemsize
    return codes.dtype == weights.dtype == torch.int8 and tma_fits(codes, weights) and out_row % 16 == 0


GL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32", torch.int8: "int8"}


def gluon_matmul(codes, act_scale, weights, weight_scale, bias, out_dtype, cfg, swiglu_inv: float | None = None):
    """``(M, K)`` int8 codes × ``(N, K)`` int8 weight codes → ``(M, N)``, in ``cfg``'s tile (its split-K, swap
    and unpacking fields do not apply); the caller checks :func:`gluon_fits`. With ``swiglu_inv``: interleaved
    gate/up weight rows → ``(M, N / 2)`` int8 codes of down_proj's input, ``swiglu_inv`` the reciprocal of their
    static scale, gate and up rounded to ``out_dtype`` first."""
    m, k = codes.shape
    n = weights.shape[0]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    swiglu = swiglu_inv is not None
    stages = gluon_stages(bm, bn, bk, cfg.num_stages, out_dtype, swiglu)
    if not stages:
        raise ValueError(f"a {bm}x{bn}x{bk} tile with {out_dtype} output does not fit in shared memory")
    store_dtype, out_n, out_bn = (torch.int8, n // 2, bn // 2) if swiglu else (out_dtype, n, bn)
    out = torch.empty((m, out_n), dtype=store_dtype, device=codes.device)

    def desc(t, block, dtype):
        gl_dtype = getattr(gl, GL_DTYPES[dtype])
        return TensorDescriptor(t, t.shape, t.stride(), block, _shared_layout(tuple(block), gl_dtype))

    programs = min(triton.cdiv(m, bm) * triton.cdiv(n, bn), sm_count(codes.device))
    _gluon_tma_kernel[(programs,)](
        desc(codes, [bm, bk], torch.int8), desc(weights, [bn, bk], torch.int8), desc(out, [bm, out_bn], store_dtype),
        act_scale, weight_scale, bias if bias is not None else weight_scale, m, n, k,
        1.0 if swiglu_inv is None else swiglu_inv, HAS_BIAS=bias is not None, STAGES=stages, GROUP_M=cfg.group_m,
        PROGRAMS=programs, SWIGLU=swiglu, ROUND_TY=getattr(gl, GL_DTYPES[out_dtype]), num_warps=cfg.num_warps,
    )  # fmt: skip
    return out
