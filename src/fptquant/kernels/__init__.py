"""Kernels: Triton code with a pure-PyTorch reference of identical numerics, chosen by one switch.

``FPTQUANT_KERNELS=torch|triton|auto`` (default ``auto``: Triton on CUDA tensors, PyTorch otherwise;
``TRITON_INTERPRET=1`` runs the Triton kernels on the CPU for tests).
"""

from .backend import backend_for, triton_available
from .norm_quantize import norm_quantize, rms_norm_reference
from .quantize import quantize_per_token, quantize_per_token_reference
from .transform_quantize import transform_quantize, transform_quantize_reference

__all__ = [
    "backend_for",
    "norm_quantize",
    "quantize_per_token",
    "quantize_per_token_reference",
    "rms_norm_reference",
    "transform_quantize",
    "transform_quantize_reference",
    "triton_available",
]
