"""Layer 3: quantization methods, each a file registered by name."""

from . import flatquant, fptquant, quarot, rtn, smoothquant, spinquant  # noqa: F401  (register the methods)
from .base import Method, available_methods, get_method, register_method

__all__ = ["Method", "available_methods", "get_method", "register_method"]
