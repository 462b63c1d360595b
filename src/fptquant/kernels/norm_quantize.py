"""RMSNorm fused into the per-token INT4 quantize of its output.

In a LLaMA-style layer the RMSNorm's output is read only by the quantized q/k/v (or gate/up) projections, once
their rotations are merged into the weights (QuaRot, SpinQuant, FPTQuant). The unfused path writes the normalized
activations in bfloat16 and reads them back to quantize them; here the kernel reads the residual stream, normalizes
each row in registers and writes the codes, so those activations never go to memory.

Numerics are the unfused model's (HF ``LlamaRMSNorm``): ``x`` in float32, ``r = rsqrt(mean(x²) + eps)``,
``x · r`` rounded to ``x``'s dtype, times the weight (in ``x``'s dtype), rounded again; then
:func:`.quantize.quantize_per_token_reference`. Kernel and reference sum the squares in different orders, so a
value lying on a rounding boundary of the norm's output may round the other way: codes then differ by one, and a
row's scale by one step of that dtype where it happens at the row's maximum.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .backend import backend_for
from .quantize import ONE_PASS_ROW, check_codes_dtype, quantize_per_token

NORM_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_FUSED_ROW = ONE_PASS_ROW  # the fused kernel normalizes a row it holds whole in registers


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The RMSNorm of the rows of ``x`` in ``x``'s dtype, as HF's ``LlamaRMSNorm`` computes it."""
    rows = x.float()
    normed = (rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed if weight is None else weight.to(x.dtype) * normed


def _check(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> None:
    if x.dtype not in NORM_DTYPES:
        raise ConfigError(f"the fused RMSNorm takes bfloat16, float16 or float32 rows, not {x.dtype}")
    if weight is not None and weight.shape != (x.shape[-1],):
        raise ConfigError(f"RMSNorm weight of shape {tuple(weight.shape)} for rows of {x.shape[-1]} values")
    if not eps > 0:
        raise ConfigError(f"RMSNorm eps must be positive, got {eps}")


def norm_quantize(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
    codes_dtype=torch.int8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales float32 (..., 1))`` of ``RMSNorm(x)`` (``weight`` None: a norm whose weight was folded
    into the next linears) on the backend the switch picks. Rows longer than ``MAX_FUSED_ROW`` take the norm and
    the quantize as two steps."""
    _check(x, weight, eps)
    check_codes_dtype(codes_dtype)
    backend = backend_for(x, backend)
    if backend == "torch" or x.shape[-1] > MAX_FUSED_ROW:  # the norm, then the quantize
        return quantize_per_token(rms_norm_reference(x, weight, eps), clip_ratio, static_scale, backend, codes_dtype)
    from .triton_quantize import quantize_rows

    rows = x.reshape(-1, x.shape[-1]).contiguous()
    norm = (weight.contiguous() if weight is not None else None, eps)
    codes, scales = quantize_rows(rows, clip_ratio, static_scale, codes_dtype, norm=norm)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
