"""FPTQuant: mergeable pre-RoPE, value and MLP transforms, residual rotation, online Hadamard and S_n."""

from .method import FPTQuant
from .options import FPTQuantOptions

__all__ = ["FPTQuant", "FPTQuantOptions"]
