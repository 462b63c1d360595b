"""INT4 KV cache: packed storage and a decode-attention kernel that reads it directly.

Storage per (batch, KV head, position): ``d_h/2`` bytes of codes, a scale (the model's dtype) and an
integer zero point (uint8): the value is ``(code - zero) * scale``, exactly what the fake quantizer
dequantizes to (a symmetric grid is stored as codes ``q + 8`` with zero 8). A byte holds features
``i`` (low nibble) and ``i + d_h/2`` (high nibble), so a kernel splits each head into two halves
without interleaving nibbles.

Decode attention (one query token per sequence) never dequantizes: with ``k = (c - z) s``,
``q·k = s (q·c - z Σq)``, and ``Σ_j p_j v_j = Σ_j (p_j s_j) c_j - Σ_j p_j s_j z_j``. The reference
here dequantizes and attends in float32; the Triton kernel splits the sequence (flash-decoding) and
merges the splits with their log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .backend import backend_for

NIBBLE = 15


@dataclass
class PackedKV:
    """One layer's K or V for ``batch × heads × capacity`` positions (only a prefix is valid)."""

    codes: torch.Tensor  # (B, H, S, d_h/2) uint8
    scale: torch.Tensor  # (B, H, S) model dtype
    zero: torch.Tensor  # (B, H, S) uint8

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, dtype, device) -> PackedKV:
        if head_dim % 2:
            raise ConfigError(f"an INT4 KV cache needs an even head dimension, got {head_dim}")
        shape = (batch, heads, capacity)
        return cls(
            torch.zeros(*shape, head_dim // 2, dtype=torch.uint8, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=torch.uint8, device=device),
        )

    @property
    def head_dim(self) -> int:
        return 2 * self.codes.shape[-1]

    def write(self, positions: int | torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
        """Store codes ``(B, H, T, d_h)`` (ints in 0..15) with their ``(B, H, T)`` scales and zeros at the
        ``T`` positions starting at ``positions`` (an int), or at the given ``(T,)`` device indices (no
        host value read, so the write can be part of a CUDA graph)."""
        if not torch.is_tensor(positions):
            end = positions + codes.shape[2]
            if end > self.codes.shape[2]:
                raise ConfigError(f"the KV cache holds {self.codes.shape[2]} positions; {end} were asked for")
            positions = torch.arange(positions, end, device=self.codes.device)
        self.codes.index_copy_(2, positions, pack_halves(codes))
        self.scale.index_copy_(2, positions, scale.to(self.scale.dtype))
        self.zero.index_copy_(2, positions, zero.to(torch.uint8))

    def dequantize(self, length: int) -> torch.Tensor:
        """``(B, H, length, d_h)`` values, computed as the fake quantizer does: ``(c - z) * s``."""
        codes = unpack_halves(self.codes[:, :, :length]).to(self.scale.dtype)
        zero = self.zero[:, :, :length, None].to(self.scale.dtype)
        return (codes - zero) * self.scale[:, :, :length, None]


def pack_halves(codes: torch.Tensor) -> torch.Tensor:
    """``(..., d)`` ints in 0..15 -> ``(..., d/2)`` bytes: feature ``i`` low nibble, ``i + d/2`` high."""
    half = codes.shape[-1] // 2
    c = codes.to(torch.uint8)
    return c[..., :half] | (c[..., half:] << 4)


def unpack_halves(packed: torch.Tensor) -> torch.Tensor:
    return torch.cat([packed & NIBBLE, packed >> 4], dim=-1)


def decode_attention_reference(
    query: torch.Tensor, keys: PackedKV, values: PackedKV, lengths: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of one query token per sequence over its first ``lengths[b]`` cached positions.

    ``query (B, H_q, d_h)`` with ``H_q`` a multiple of the KV heads (grouped-query attention); returns
    ``(B, H_q, d_h)`` float32.
    """
    b, hq, d = query.shape
    hk = keys.codes.shape[1]
    length = int(lengths.max())
    k = keys.dequantize(length).float().repeat_interleave(hq // hk, dim=1)
    v = values.dequantize(length).float().repeat_interleave(hq // hk, dim=1)
    scores = torch.einsum("bhd,bhsd->bhs", query.float(), k) * scaling
    valid = torch.arange(length, device=query.device)[None, :] < lengths[:, None].to(query.device)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), v)


def _check(query: torch.Tensor, keys: PackedKV, values: PackedKV, lengths: torch.Tensor) -> None:
    b, hq, d = query.shape
    if keys.codes.shape != values.codes.shape or keys.head_dim != d:
        raise ConfigError(f"query head dim {d} and the cache's K {tuple(keys.codes.shape)} / V do not match")
    if keys.codes.shape[0] != b or hq % keys.codes.shape[1]:
        raise ConfigError(f"{hq} query heads of batch {b} do not fit a cache of shape {tuple(keys.codes.shape)}")
    if lengths.shape != (b,):
        raise ConfigError(f"lengths must have one entry per sequence ({b}), got shape {tuple(lengths.shape)}")


def int4_kv_decode_attention(
    query: torch.Tensor,
    keys: PackedKV,
    values: PackedKV,
    lengths: torch.Tensor,
    scaling: float,
    backend: str | None = None,
    splits: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """:func:`decode_attention_reference` on the backend the switch picks; returns float32.

    ``max_length`` (``>= lengths.max()``, a host integer) sizes the splits without reading ``lengths``
    back from the GPU; ``splits`` overrides the heuristic.
    """
    _check(query, keys, values, lengths)
    if backend_for(query, backend) == "torch":
        return decode_attention_reference(query, keys, values, lengths, scaling)
    from .triton_kv_attention import decode_attention

    return decode_attention(query, keys, values, lengths, scaling, splits, max_length)
