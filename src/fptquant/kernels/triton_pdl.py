"""Programmatic dependent launch (Hopper): a decode GEMM starts while the quantize that feeds it still runs.

At 1–16 tokens a W4A4 linear is a quantize of a few µs, then a GEMM that streams the weights. Launched one
after the other, the weight stream waits for the quantize and for a launch. With programmatic dependent launch
the quantize lets its dependent launch as soon as all its programs run (``griddepcontrol.launch_dependents``);
the GEMM's programs ask L2 for their weights, which the quantize never writes (one bulk prefetch a row, up to
a byte budget over the first programs), then wait until the quantize has finished and its codes are visible
(``griddepcontrol.wait``) before they read codes or scales or write their output.

A kernel launched this way after one that does not release it starts when that one's programs finish, and
still waits: the instructions are safe whatever came before. The interpreter has neither, so there ``ENABLED``
is false and they are left out. ``FPTQUANT_PDL=0`` turns the launch mode off (the kernels then run as before).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .backend import interpreting

PREFETCH_BUDGET_BYTES = 16 << 20  # about what HBM delivers during a one-token quantize and a launch


def programmatic_launch(device: torch.device) -> bool:
    """Whether kernels on ``device`` use programmatic dependent launch (Hopper or newer, not interpreted)."""
    if interpreting() or device.type != "cuda" or os.environ.get("FPTQUANT_PDL", "1") == "0":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def prefetch_programs(row_bytes: int, rows: int, budget_bytes: int = PREFETCH_BUDGET_BYTES) -> int:
    """How many programs (of ``rows`` weight rows of ``row_bytes`` each) prefetch within the budget."""
    return budget_bytes // max(1, row_bytes * rows)


def prefetchable(*byte_offsets: int) -> bool:
    """Bulk prefetches need 16-byte aligned addresses: every row start and split start must be one."""
    return all(v % 16 == 0 for v in byte_offsets)


@triton.jit
def release_dependents(ENABLED: tl.constexpr):
    if ENABLED:
        gdc_launch_dependents()


@triton.jit
def wait_for_inputs(ENABLED: tl.constexpr):
    if ENABLED:
        gdc_wait()


@triton.jit
def prefetch_rows_to_l2(first_row, rows, row_bytes, stride_bytes):
    """Thread ``r < rows`` asks L2 for ``row_bytes`` (rounded down to 16) from ``first_row + r·stride_bytes``:
    one bulk prefetch a row, issued once, where a tensor of row pointers would repeat it on every thread that
    holds a copy of an element."""
    tl.inline_asm_elementwise(
        """{
        .reg .pred p;
        .reg .u32 t, n;
        .reg .u64 o, a;
        mov.u32 t, %tid.x;
        and.b32 n, $3, 0xFFFFFFF0;
        setp.lt.u32 p, t, $2;
        setp.ne.and.u32 p, n, 0, p;
        mul.wide.u32 o, t, $4;
        add.u64 a, $1, o;
        @p cp.async.bulk.prefetch.L2.global [a], n;
        mov.u32 $0, 0;
        }""",
        "=r,l,r,r,r",
        [first_row, rows, row_bytes, stride_bytes],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )
