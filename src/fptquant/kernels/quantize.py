"""Per-token symmetric INT4 activation quantization: codes one value a byte plus fp32 scales.

Codes come as int8, or as float8 e4m3 (every value in -8..7 is exact there) for the FP8-route GEMM.

Numerics (shared by the kernel and its reference, so tests are bit-exact):
``amax = max(max|x_row| * clip, 7 * eps)``; ``scale = amax / 7``; ``q = clamp(rint(x * (7 / amax)), -8, 7)``
with round-half-to-even. One IEEE division per row, a multiplication per element: exact division per
element would make the kernel ALU-bound (docs: ../shared/docs/kernels.md). With a static scale ``s``
the same formula runs with ``amax = 7 s``. Against the fake quantizer (``round(x / scale)``) codes may
differ by one where ``x * (7/amax)`` and ``x / scale`` round to opposite sides of a .5 tie.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..math.quantization import SCALE_EPS
from .backend import backend_for

QMAX, QMIN = 7, -8
CODE_DTYPES = (torch.int8, torch.float8_e4m3fn)
ONE_PASS_ROW = 32768  # values of the longest row the Triton kernel reads once (held in registers)


def check_codes_dtype(dtype: torch.dtype) -> None:
    if dtype not in CODE_DTYPES:
        raise ConfigError(f"activation codes are stored as int8 or float8_e4m3fn, not {dtype}")


def check_gated(gate: torch.Tensor, up: torch.Tensor | None) -> None:
    if up is not None and (up.shape != gate.shape or up.dtype != gate.dtype):
        raise ConfigError(f"gate and up must match, got {tuple(gate.shape)} {gate.dtype} and "
                          f"{tuple(up.shape)} {up.dtype}")  # fmt: skip


def gated_product(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up``, the input of a SwiGLU MLP's down projection, in the inputs' dtype as the unfused
    model computes it. The kernels that take ``up`` form it as they read (their ``exp`` may round silu to the
    neighbouring bfloat16 on rare entries)."""
    check_gated(gate, up)
    return F.silu(gate) * up


def _rint(y: torch.Tensor) -> torch.Tensor:
    return torch.round(y)  # half to even, like the kernel's helper


def quantize_per_token_reference(
    x: torch.Tensor,
    clip_ratio: float | tuple[float, float] = 1.0,
    static_scale: float | None = None,
    codes_dtype=torch.int8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes (..., K), scales float32 (..., 1))`` for the rows of ``x``; codes int8 or float8_e4m3fn.
    ``clip_ratio``: one factor on ``max|x|``, or ``(lo, hi)`` on the row's min and max (a learned
    two-sided clip of a symmetric quantizer: ``amax = max(-min·lo, max·hi)``)."""
    check_codes_dtype(codes_dtype)
    rows = x.reshape(-1, x.shape[-1]).float()
    if static_scale is not None:
        amax = torch.full((rows.shape[0], 1), QMAX * float(static_scale), dtype=torch.float32, device=x.device)
    elif isinstance(clip_ratio, tuple):
        lo, hi = clip_ratio
        amax = torch.maximum(-rows.amin(dim=1, keepdim=True) * lo, rows.amax(dim=1, keepdim=True) * hi)
    else:
        amax = rows.abs().amax(dim=1, keepdim=True) * clip_ratio
    if static_scale is None:
        amax = torch.clamp(amax, min=QMAX * SCALE_EPS)
    inv = torch.full_like(amax, float(QMAX)) / amax  # one IEEE division (``7 / t`` would be reciprocal(t) * 7)
    codes = (torch.clamp(_rint(rows * inv), QMIN, QMAX) + 0.0).to(codes_dtype)  # + 0: no e4m3 negative zero
    scale = amax / torch.full_like(amax, float(QMAX))  # on CUDA, ``t / 7`` is t * (1/7): not the kernel's division
    return codes.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def matrix_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a matrix of its rows, copied only where its columns are not adjacent: the kernels step through
    rows by a stride, so row-strided views (gate's and up's halves of one GEMM output, .deploy.mlp) are read in
    place."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def quantize_per_token(
    x: torch.Tensor,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
    codes_dtype=torch.int8,
    up: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`quantize_per_token_reference`, on the backend the switch picks. With ``up``, ``x`` is a gate
    and the rows quantized are :func:`gated_product` ``(x, up)``, formed inside the kernel."""
    check_codes_dtype(codes_dtype)
    check_gated(x, up)
    if backend_for(x, backend) == "torch":
        x = gated_product(x, up) if up is not None else x
        return quantize_per_token_reference(x, clip_ratio, static_scale, codes_dtype)
    from .triton_quantize import quantize_rows

    up_rows = matrix_rows(up) if up is not None else None
    codes, scales = quantize_rows(matrix_rows(x), clip_ratio, static_scale, codes_dtype, up=up_rows)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
