"""The one switch between Triton kernels and their PyTorch references."""

from __future__ import annotations

import functools
import os

import torch

from ..errors import ConfigError

CHOICES = ("auto", "torch", "triton")

# Hopper's shared memory, for the kernels' tile plans: what one program (thread block) may have, and what the
# driver keeps besides for each program resident on an SM (an SM holds 228 KB for all of its programs)
SHARED_BYTES = 227 * 1024
DRIVER_SHARED_BYTES = 1024


def stages_that_fit(stages: int, stage_bytes: int, fixed_bytes: int) -> int:
    """The most of ``stages`` (at least two) pipeline slots of ``stage_bytes`` each that fit in one program's
    shared memory beside ``fixed_bytes``; 0 where not even two do."""
    while stages >= 2 and stages * stage_bytes + fixed_bytes > SHARED_BYTES:
        stages -= 1
    return stages if stages >= 2 else 0


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int | None:
    """The streaming multiprocessors of a CUDA ``device`` (None for any other device, or under the interpreter)."""
    if interpreting() or device.type != "cuda":
        return None
    return _device_sms(device.index if device.index is not None else torch.cuda.current_device())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend_for(x: torch.Tensor, requested: str | None = None) -> str:
    """``"triton"`` or ``"torch"`` for a kernel call on ``x``."""
    choice = requested or os.environ.get("FPTQUANT_KERNELS", "auto")
    if choice not in CHOICES:
        raise ConfigError(f"kernel backend must be one of {', '.join(CHOICES)}, got {choice!r}")
    runnable = triton_available() and (x.is_cuda or interpreting())
    if choice == "triton" and not runnable:
        raise ConfigError("the triton kernel backend needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    if choice == "auto":
        return "triton" if runnable else "torch"
    return choice
