"""Fused online Kronecker transform + per-token INT4 quantization.

``y = x (I_nb ⊗ P1 ⊗ P2)`` along each row (``K = nb·n1·n2``), then the per-token quantizer of
:mod:`.quantize` on ``y``. This covers FlatQuant's ``P1ᵀ X P2`` (``nb = 1``, e.g. 24×24 or 32×48) and a
block Hadamard with blocks of ``n1·n2`` (Sylvester ``H_{n1·n2} = H_{n1} ⊗ H_{n2}``, the same ``P`` in
every block: QuaRot's / FPTQuant's online ``T_d``).

Numerics (the kernel and this reference share them; they run on fp16 tensor cores):
each ``n1·n2`` block of a row is first scaled by the power of two ``2^-e`` with ``max|x| = m·2^e``,
``m ∈ [0.5, 1)`` over the block (exact, and keeps fp16 far from overflow whatever the activations'
range; per block, not per row, since the blocks are transformed independently), rounded to fp16; then
``Z = fp16(Xn · fp16(P2))`` and ``Y = (fp16(P1)ᵀ · Z) · 2^e`` with float32 accumulation. Against
float32 transforms the codes move by one on a fraction of a percent of entries (fp16 keeps 11 bits);
against this reference only where float32 summation order flips an fp16 rounding of ``Z``.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .backend import backend_for
from .quantize import check_codes_dtype, quantize_per_token_reference


def _check(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> int:
    n1, n2, k = p1.shape[0], p2.shape[0], x.shape[-1]
    if p1.shape != (n1, n1) or p2.shape != (n2, n2):
        raise ConfigError(f"Kronecker factors must be square, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    if k % (n1 * n2):
        raise ConfigError(f"row size {k} is not a multiple of the transform size {n1}×{n2}")
    return k // (n1 * n2)


def row_exponent_scale(rows: torch.Tensor) -> torch.Tensor:
    """``2^-e`` per row with ``max|row| = m·2^e``, ``m ∈ [0.5, 1)`` (1 for an all-zero row)."""
    _, e = torch.frexp(rows.abs().amax(dim=-1, keepdim=True))
    return torch.ldexp(torch.ones_like(rows[..., :1]), -e)


def kron_apply_fp16(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, nb: int) -> torch.Tensor:
    """``x (I_nb ⊗ P1 ⊗ P2)`` in float32 by the numerics above (rows of ``x`` along the last dim)."""
    blocks = x.float().reshape(*x.shape[:-1], nb, p1.shape[0] * p2.shape[0])
    scale = row_exponent_scale(blocks)
    xn = (blocks * scale).half().float().reshape(*blocks.shape[:-1], p1.shape[0], p2.shape[0])
    z = (xn @ p2.half().float()).half().float()
    y = (p1.half().float().t() @ z).reshape(blocks.shape) / scale
    return y.reshape(x.shape)


def transform_quantize_reference(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    clip_ratio: float | tuple[float, float] = 1.0,
    static_scale: float | None = None,
    codes_dtype=torch.int8,
) -> tuple[torch.Tensor, torch.Tensor]:
    nb = _check(x, p1, p2)
    return quantize_per_token_reference(kron_apply_fp16(x, p1, p2, nb), clip_ratio, static_scale, codes_dtype)


def transform_quantize(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    clip_ratio: float | tuple[float, float] = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
    codes_dtype=torch.int8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales float32 (..., 1))`` of ``x (I ⊗ P1 ⊗ P2)``, on the backend the switch picks."""
    nb = _check(x, p1, p2)
    check_codes_dtype(codes_dtype)
    if backend_for(x, backend) == "torch":
        return transform_quantize_reference(x, p1, p2, clip_ratio, static_scale, codes_dtype)
    from .triton_transform_quantize import kron_quantize_rows

    rows = x.reshape(-1, x.shape[-1]).contiguous()
    codes, scales = kron_quantize_rows(rows, p1, p2, nb, clip_ratio, static_scale, codes_dtype)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
