"""FlatQuant: per-layer learnable Kronecker affine transforms, learnable clipping, layer-wise calibration."""

from .method import FlatQuant, FlatQuantLayers
from .options import FlatQuantOptions

__all__ = ["FlatQuant", "FlatQuantLayers", "FlatQuantOptions"]
