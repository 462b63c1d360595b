"""Parse bit settings such as ``w4a4kv4``, ``w4a8kv8``, ``w4a16`` or ``w8a8``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..math.quantization import SUPPORTED_BITS

_PATTERN = re.compile(r"^w(\d+)a(\d+)(?:kv(\d+))?$")


@dataclass(frozen=True)
class BitsSpec:
    """Bit-widths of weights, linear-layer input activations and the KV cache (16 = not quantized)."""

    weights: int = 16
    activations: int = 16
    kv_cache: int = 16

    def __str__(self) -> str:
        s = f"w{self.weights}a{self.activations}"
        return s + (f"kv{self.kv_cache}" if self.kv_cache < 16 else "")

    @property
    def label(self) -> str:
        """The papers' table notation, e.g. ``W4A4KV4``."""
        return str(self).upper()


def parse_bits(spec: str) -> BitsSpec:
    """``w4a4kv4`` -> ``BitsSpec(4, 4, 4)``; a missing ``kv`` part means a 16-bit KV cache."""
    text = spec.strip().lower()
    m = _PATTERN.match(text)
    if not m:
        raise ConfigError(
            f"bad bits spec {spec!r}: expected w<bits>a<bits>[kv<bits>], e.g. w4a4kv4, w4a8kv8, w4a16, w8a8"
        )
    values = [int(g) if g is not None else 16 for g in m.groups()]
    for name, b in zip(("weight", "activation", "kv-cache"), values, strict=True):
        if b not in SUPPORTED_BITS:
            raise ConfigError(f"bad bits spec {spec!r}: {name} bit-width {b} is not one of {SUPPORTED_BITS}")
    return BitsSpec(*values)
