"""FPTQuant's pre-RoPE transform: one positive scale and one angle per RoPE pair, per KV head.

HF RoPE ("rotate-half") rotates the pair ``(i, i + r/2)`` of each head by ``R(t·ω_i)`` with
``R(φ) = [[cos φ, -sin φ], [sin φ, cos φ]]`` acting on column vectors. A map that acts on every
pair as ``ρ_i R(θ_i)`` commutes with every ``R(t·ω_i)`` (2-D rotations commute, and a positive
scalar commutes with everything), so it can be applied *before* RoPE and folded into the rows of
``W_k``. Queries get the inverse-transpose ``(1/ρ_i) R(θ_i)``, which keeps every score ``qᵀk``.
Dimensions beyond the rotary part (partial RoPE) are left alone.
"""

from __future__ import annotations

import torch


def pair_transform(
    scale: torch.Tensor, angle: torch.Tensor, head_dim: int, inverse_transpose: bool = False
) -> torch.Tensor:
    """Dense ``(..., head_dim, head_dim)`` matrices ``T`` (column-vector convention, ``k -> T k``).

    ``scale`` and ``angle`` have shape ``(..., pairs)`` with ``2·pairs <= head_dim``; ``scale > 0``.
    ``inverse_transpose=True`` returns ``T^{-T}``: the same rotation with the reciprocal scale.
    """
    if scale.shape != angle.shape:
        raise ValueError(f"scale {tuple(scale.shape)} and angle {tuple(angle.shape)} must have the same shape")
    pairs = scale.shape[-1]
    if 2 * pairs > head_dim:
        raise ValueError(f"{pairs} RoPE pairs do not fit a head of {head_dim}")
    s = 1.0 / scale if inverse_transpose else scale
    cos, sin = s * torch.cos(angle), s * torch.sin(angle)
    eye = torch.eye(head_dim, dtype=scale.dtype, device=scale.device)
    t = eye.expand(*scale.shape[:-1], head_dim, head_dim).clone()
    i = torch.arange(pairs, device=scale.device)
    j = i + pairs
    t[..., i, i], t[..., i, j] = cos, -sin
    t[..., j, i], t[..., j, j] = sin, cos
    return t


def rope_rotation(positions: torch.Tensor, theta: float, rotary_dim: int, head_dim: int) -> torch.Tensor:
    """RoPE as dense matrices ``(len(positions), head_dim, head_dim)``, in float64 (for tests and checks)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = positions.double()[:, None] * inv_freq[None, :]
    return pair_transform(torch.ones_like(angles), angles, head_dim)
