"""Fused online Kronecker transform + per-token INT4 quantization.

``y = x (I_nb ⊗ P1 ⊗ P2)`` along each row (``K = nb·n1·n2``), then the per-token quantizer of
:mod:`.quantize` on ``y``. This covers FlatQuant's ``P1ᵀ X P2`` (``nb = 1``, e.g. 24×24 or 32×48) and a
block Hadamard with blocks of ``n1·n2`` (Sylvester ``H_{n1·n2} = H_{n1} ⊗ H_{n2}``, the same ``P`` in
every block: QuaRot's / FPTQuant's online ``T_d``).

Numerics (the kernel and this reference share them): every operand is a pair of bfloat16 values
``hi + lo``, each truncated (:func:`bf16_split`; a bf16 ``x`` is its own ``hi``), products summed in float32. With
``X`` a block as an ``n1×n2`` matrix: ``W = P1hᵀ·Xh + P1lᵀ·Xh + P1hᵀ·Xl`` rounded to float32, then
``Y = Wh·P2h + Wl·P2h + Wh·P2l`` (the ``lo·lo`` terms, about 2^-16 of the result, are left out). That is a
float32 transform to about 15 bits, with float32's range (activations of 1e6 or 1e-6 need no prescale).
Against this reference (float64 sums, rounded to float32) the codes move by one only where float32
summation order moves ``y`` across a rounding boundary.

``round_mid`` selects bfloat16 transform numerics instead: ``W`` rounded to the nearest bfloat16, then
``Y = W·P2h + W·P2l`` (float32 sums), as a chain of two bfloat16 matmuls computes it. With factors that
bfloat16 holds exactly (FlatQuant's ``online_bf16``) that is one tensor-core product per factor where the
float32 numerics take three: the products, not the memory traffic, bound the large tiles (112×128).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .backend import backend_for
from .quantize import check_codes_dtype, check_gated, gated_product, matrix_rows, quantize_per_token_reference


def _check(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> int:
    n1, n2, k = p1.shape[0], p2.shape[0], x.shape[-1]
    if p1.shape != (n1, n1) or p2.shape != (n2, n2):
        raise ConfigError(f"Kronecker factors must be square, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    if k % (n1 * n2):
        raise ConfigError(f"row size {k} is not a multiple of the transform size {n1}×{n2}")
    return k // (n1 * n2)


def bf16_split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (rounded to float32) as bfloat16 ``hi = trunc(t)`` and ``lo = trunc(t - hi)``: ``hi + lo = t`` to
    16 significant bits. Truncation (the float32's upper half) is what the kernel gets without a conversion."""
    t = t.float()
    hi = _truncate_to_bf16(t)
    return hi, _truncate_to_bf16(t - hi.float())


def _truncate_to_bf16(t: torch.Tensor) -> torch.Tensor:
    return (t.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: the low half is zero


def kron_apply_split(
    x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, nb: int, gain: float = 1.0, round_mid: bool = False
) -> torch.Tensor:
    """``x (I_nb ⊗ gain·P1 ⊗ P2)`` in float32 by the numerics above (rows of ``x`` along the last dim; ``gain``
    multiplies the float32 result, rounded to float32 first as the kernel receives it)."""
    n1, n2 = p1.shape[0], p2.shape[0]
    xh, xl = (h.double().reshape(*x.shape[:-1], nb, n1, n2) for h in bf16_split(x))
    p1h, p1l = (h.double().t() for h in bf16_split(p1))
    p2h, p2l = (h.double() for h in bf16_split(p2))
    w = (p1h @ xh + p1l @ xh + p1h @ xl).float()
    if round_mid:
        wb = w.to(torch.bfloat16).double()
        y = (wb @ p2h + wb @ p2l).float().reshape(x.shape)
    else:
        wh, wl = (h.double() for h in bf16_split(w))
        y = (wh @ p2h + wl @ p2h + wh @ p2l).float().reshape(x.shape)
    return y * torch.tensor(gain, dtype=torch.float32) if gain != 1.0 else y


def transform_quantize_reference(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    clip_ratio: float | tuple[float, float] = 1.0,
    static_scale: float | None = None,
    codes_dtype=torch.int8,
    gain: float = 1.0,
    round_mid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    nb = _check(x, p1, p2)
    y = kron_apply_split(x, p1, p2, nb, gain, round_mid)
    return quantize_per_token_reference(y, clip_ratio, static_scale, codes_dtype)


def transform_quantize(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    clip_ratio: float | tuple[float, float] = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
    codes_dtype=torch.int8,
    gain: float = 1.0,
    round_mid: bool = False,
    up: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales float32 (..., 1))`` of ``x (I ⊗ gain·P1 ⊗ P2)``, on the backend the switch picks
    (``round_mid``: the bfloat16 numerics above). With ``up``, ``x`` is a gate and the rows transformed are
    :func:`~.quantize.gated_product` ``(x, up)``, formed inside the kernel (a SwiGLU MLP's down-projection input).

    Factors that bfloat16 holds exactly run faster (their ``lo`` dots are skipped): a Hadamard is best passed
    as such factors (``±2^-j``) with the rest of its normalisation in ``gain``
    (:func:`~fptquant.math.hadamard.hadamard_factors`)."""
    nb = _check(x, p1, p2)
    check_codes_dtype(codes_dtype)
    check_gated(x, up)
    if backend_for(x, backend) == "torch":
        x = gated_product(x, up) if up is not None else x
        return transform_quantize_reference(x, p1, p2, clip_ratio, static_scale, codes_dtype, gain, round_mid)
    from .triton_transform_quantize import kron_quantize_rows

    rows = matrix_rows(x)
    up_rows = matrix_rows(up) if up is not None else None
    codes, scales = kron_quantize_rows(
        rows, p1, p2, nb, clip_ratio, static_scale, codes_dtype, gain=gain, round_mid=round_mid, up=up_rows
    )
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
