"""Fused online Kronecker transform + per-token INT4 quantization.

``y = x (I_nb ⊗ P1 ⊗ P2)`` along each row (``K = nb·n1·n2``), then the per-token quantizer of
:mod:`.quantize` on ``y``. This covers FlatQuant's ``P1ᵀ X P2`` (``nb = 1``, e.g. 24×24 or 32×48) and a
block Hadamard with blocks of ``n1·n2`` (Sylvester ``H_{n1·n2} = H_{n1} ⊗ H_{n2}``, the same ``P`` in
every block: QuaRot's / FPTQuant's online ``T_d``). The reference is :func:`fptquant.math.kronecker.kron_apply`
in float32 followed by :func:`.quantize.quantize_per_token_reference`; the kernel sums in another order,
so codes may differ by one where a value lies within rounding of a .5 tie.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..math.kronecker import kron_apply
from .backend import backend_for
from .quantize import quantize_per_token_reference


def _check(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> int:
    n1, n2, k = p1.shape[0], p2.shape[0], x.shape[-1]
    if p1.shape != (n1, n1) or p2.shape != (n2, n2):
        raise ConfigError(f"Kronecker factors must be square, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    if k % (n1 * n2):
        raise ConfigError(f"row size {k} is not a multiple of the transform size {n1}×{n2}")
    return k // (n1 * n2)


def transform_quantize_reference(
    x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, clip_ratio: float = 1.0, static_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    nb = _check(x, p1, p2)
    blocks = x.float().reshape(*x.shape[:-1], nb, p1.shape[0] * p2.shape[0])
    y = kron_apply(blocks, p1.float(), p2.float()).reshape(x.shape)
    return quantize_per_token_reference(y, clip_ratio, static_scale)


def transform_quantize(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8, scales float32 (..., 1))`` of ``x (I ⊗ P1 ⊗ P2)``, on the backend the switch picks."""
    nb = _check(x, p1, p2)
    if backend_for(x, backend) == "torch":
        return transform_quantize_reference(x, p1, p2, clip_ratio, static_scale)
    from .triton_transform_quantize import kron_quantize_rows

    rows = x.reshape(-1, x.shape[-1]).contiguous()
    codes, scales = kron_quantize_rows(rows, p1, p2, nb, clip_ratio, static_scale)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
