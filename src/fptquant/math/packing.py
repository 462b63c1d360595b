"""INT4 codes packed two to a byte, the storage of real 4-bit weights (and of the INT4 KV cache).

Layout: along the last dimension, element ``2i`` goes to the low nibble and ``2i + 1`` to the high
nibble of byte ``i``, each as a 4-bit two's complement value (-8..7). Unsigned codes (0..15, e.g.
asymmetric KV) use :func:`pack_uint4` / :func:`unpack_uint4` with the same nibble order.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def _check_even(t: torch.Tensor) -> None:
    if t.shape[-1] % 2:
        raise ConfigError(f"int4 packing needs an even last dimension, got {t.shape[-1]}")


def pack_uint4(codes: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` integers in 0..15 -> ``(..., K/2)`` uint8."""
    _check_even(codes)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ConfigError("pack_uint4 needs codes in 0..15")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_uint4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_uint4`: ``(..., K/2)`` uint8 -> ``(..., K)`` uint8 in 0..15."""
    out = torch.stack((packed & 0xF, packed >> 4), dim=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` integers in -8..7 -> ``(..., K/2)`` uint8 (two's complement nibbles)."""
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ConfigError("pack_int4 needs codes in -8..7")
    return pack_uint4(codes.to(torch.int16) & 0xF)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., K/2)`` uint8 -> ``(..., K)`` int8 in -8..7."""
    nibbles = unpack_uint4(packed).to(torch.int8)
    return torch.where(nibbles > 7, nibbles - 16, nibbles)
