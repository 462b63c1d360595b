"""Programmatic dependent launch (Hopper): a decode GEMM starts while the quantize that feeds it still runs.

At 1–16 tokens a W4A4 linear is a quantize of a few µs, then a GEMM that streams the weights; launched one
after the other, the GEMM's launch and start-up wait for the quantize. With programmatic dependent launch the
quantize lets its dependent launch as soon as all its programs run (``griddepcontrol.launch_dependents``), and
the GEMM's programs, already resident, wait until the quantize has finished and its codes are visible
(``griddepcontrol.wait``) before they read anything. On the H100 (session 20) this took 0.7–1.6 µs off the
one-token LLaMA-3-8B linears. Asking L2 for the weights before the wait (a bulk prefetch a row) was no faster at
a 4 MB budget and slower at larger ones. Four-stage sliced configs on few programs lost 5–7 µs when launched
early (sessions 20–21, cause not found); the picks there use five stages, which do not.

The same holds the other way (session 21): the quantize kernels are launched this way too and wait before
touching memory, and the decode GEMMs release the kernel after them once their K loop is done
(``release="after_loop"``), so the next linear's quantize is resident when a GEMM ends. Releasing at the GEMM's
start instead cost up to 6 µs on some configs, which suggests the next GEMM's programs were placed on the SMs
too early. Every kernel launched this way waits before its first global read or write, so it
neither reads what the kernel before it is still writing nor overwrites what that kernel still reads.

A caller that passes its token count gets the launch mode only up to ``DECODE_MAX_TOKENS``: the transform quantize,
whose prefill-sized persistent grids lost up to a quarter of their bandwidth when launched early (session 22).

A kernel launched this way after one that does not release it starts when that one's programs finish, and
still waits: the instructions are safe whatever came before. The interpreter has neither, so there ``ENABLED``
is false and they are left out. ``FPTQUANT_PDL=0`` turns the launch mode off (the kernels then run as before).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..errors import ConfigError
from .backend import interpreting

RELEASE_MODES = {"none": 0, "start": 1, "after_loop": 2}  # when a decode GEMM lets the kernel after it launch
DECODE_MAX_TOKENS = 64  # the most tokens a call given as ``tokens`` takes the launch mode with


def release_mode(release: str) -> int:
    """A decode GEMM config's ``release`` as its kernel's constant, or a clear error."""
    if release not in RELEASE_MODES:
        raise ConfigError(f"release must be one of {', '.join(RELEASE_MODES)}, got {release!r}")
    return RELEASE_MODES[release]


def programmatic_launch(device: torch.device, tokens: int | None = None) -> bool:
    """Whether kernels on ``device`` use programmatic dependent launch (Hopper or newer, not interpreted), for a
    call of ``tokens`` tokens where given (decode-sized only). Asked before every decode quantize and GEMM launch,
    so the device's generation is looked up once."""
    if interpreting() or device.type != "cuda" or os.environ.get("FPTQUANT_PDL", "1") == "0":
        return False
    if tokens is not None and tokens > DECODE_MAX_TOKENS:
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _hopper_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit
def release_dependents(ENABLED: tl.constexpr):
    if ENABLED:
        gdc_launch_dependents()


@triton.jit
def wait_for_inputs(ENABLED: tl.constexpr):
    if ENABLED:
        gdc_wait()
