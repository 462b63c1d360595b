"""A SwiGLU MLP's gate+up W4A4 linear that writes down_proj's INT4 codes, for down_proj inputs with a static scale.

``codes_down = quantize(silu(gate) · up, static_scale)`` with ``gate, up = W4A4 linears of the same codes``:
the GEMM runs over the gate and up weight rows interleaved (:func:`interleave_gate_up`), so each output tile
holds both halves of its columns and the epilogue forms the product and its codes. Neither gate, up nor the
product goes to memory, and down_proj's per-token quantize pass disappears: with a dynamic scale it could
not (a token's scale needs its whole row, spread over many tiles), nor with an online transform in front
of down_proj wider than a tile (QuaRot's and FPTQuant's block Hadamards span 2048 columns on LLaMA-3-8B).

Numerics are those of the unfused chain: gate and up rounded to ``out_dtype`` as the two linears return
them, then :func:`~.quantize.gated_product` and the static-scale quantizer of :mod:`.quantize`. As with the
gated quantize kernels, silu's ``exp`` and division may move a product to the neighbouring bfloat16 on rare
entries, and a code by one.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .backend import backend_for
from .quantize import QMAX, gated_product, quantize_per_token_reference
from .w4a4_matmul import check_matmul_args, default_config, small_m_kernel, w4a4_matmul_reference


def interleave_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Gate and up rows (weights, packed or not, their scales or biases) alternating along dim 0: gate row ``i``
    at ``2i``, up row ``i`` at ``2i + 1``, the order the fused epilogue splits."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ConfigError(f"gate and up must match, got {tuple(gate.shape)} {gate.dtype} and "
                          f"{tuple(up.shape)} {up.dtype}")  # fmt: skip
    return torch.stack((gate, up), dim=1).reshape(2 * gate.shape[0], *gate.shape[1:])


def static_inverse_and_scale(static_scale: float) -> tuple[float, float]:
    """``(7 / amax, amax / 7)`` with ``amax = 7 · static_scale``, in float32 as the quantize reference forms them."""
    if not static_scale > 0:
        raise ConfigError(f"the static scale of down_proj's input must be positive, got {static_scale}")
    amax = torch.tensor(QMAX * float(static_scale), dtype=torch.float32)
    qmax = torch.tensor(float(QMAX), dtype=torch.float32)
    return float(qmax / amax), float(amax / qmax)


_STATIC_SCALES: dict[tuple, torch.Tensor] = {}  # (device, scale) -> a column of it, as long as the most rows asked


def static_scales(rows: int, scale: float, device: torch.device) -> torch.Tensor:
    """The ``(rows, 1)`` float32 scales of codes quantized with one static ``scale``: the first rows of a column
    kept per scale and grown when more are asked, not filled anew each call: a fill kernel sat between the gate+up
    GEMM and down_proj's and cost the 8B gate+up 1.7 µs at 16 tokens on the H100 (session 26). Read-only. Not kept
    while a CUDA graph is being captured, where the fill would run only when the graph replays."""
    key = (torch.device(device), scale)
    column = _STATIC_SCALES.get(key)
    if column is not None and column.shape[0] >= rows:
        return column[:rows]
    column = torch.full((rows, 1), scale, dtype=torch.float32, device=device)
    if column.is_cuda and torch.cuda.is_current_stream_capturing():
        return column
    if key not in _STATIC_SCALES and len(_STATIC_SCALES) >= 1024:
        _STATIC_SCALES.pop(next(iter(_STATIC_SCALES)))
    _STATIC_SCALES[key] = column
    return column


def _check_swiglu(codes, act_scale, packed, weight_scale, bias) -> None:
    check_matmul_args(codes, act_scale, packed, weight_scale)
    if packed.shape[0] % 2:
        raise ConfigError(f"interleaved gate/up weights have an even row count, got {packed.shape[0]}")
    if bias is not None and bias.shape != (packed.shape[0],):
        raise ConfigError(f"bias must be ({packed.shape[0]},) like the interleaved rows, got {tuple(bias.shape)}")


def w4a4_swiglu_quantize_reference(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    static_scale: float,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes (M, N/2) int8, scales (M, 1) float32)`` of down_proj's input from the gate+up linear's codes."""
    _check_swiglu(codes, act_scale, packed, weight_scale, bias)
    out = w4a4_matmul_reference(codes, act_scale, packed, weight_scale, bias, out_dtype)
    return quantize_per_token_reference(gated_product(out[:, 0::2], out[:, 1::2]), static_scale=static_scale)


def w4a4_swiglu_quantize(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    static_scale: float,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
    config=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`w4a4_swiglu_quantize_reference`, on the backend the switch picks: up to 16 tokens the few-token
    kernel :func:`~.w4a4_matmul.small_m_kernel` names (dp4a up to ``DP4A_MAX_TOKENS``, then the sliced one), from
    ``FPTQUANT_TMA_MIN_TOKENS`` on a Hopper GPU the Gluon GEMM, else the pointer GEMM, each with the SwiGLU
    epilogue. Codes must be int8 (the INT8 route: exact sums). ``config``: a
    :class:`~.triton_w4a4_dp4a.Dp4aConfig`, :class:`~.triton_w4a4_sliced.SlicedConfig` or an unswapped, unsplit
    :class:`~.triton_w4a4_matmul.GemmConfig` instead of the pick."""
    if backend_for(codes, backend) == "torch":
        return w4a4_swiglu_quantize_reference(codes, act_scale, packed, weight_scale, static_scale, bias, out_dtype)
    _check_swiglu(codes, act_scale, packed, weight_scale, bias)
    if codes.dtype != torch.int8:
        raise ConfigError(f"the fused SwiGLU epilogue takes int8 codes, got {codes.dtype}")
    inv, scale = static_inverse_and_scale(static_scale)
    bias = bias.float() if bias is not None else None
    (m, k), n = codes.shape, packed.shape[0]
    from .triton_w4a4_dp4a import Dp4aConfig, dp4a_matmul
    from .triton_w4a4_matmul import matmul, swiglu_config
    from .triton_w4a4_sliced import SlicedConfig, sliced_matmul

    if config is None and small_m_kernel(codes, packed) is not None:
        config = default_config(codes, packed)
    if isinstance(config, Dp4aConfig):
        out = dp4a_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config, swiglu_inv=inv)
    elif isinstance(config, SlicedConfig):
        out = sliced_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config, swiglu_inv=inv)
    else:
        out = matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config or swiglu_config(m, n, k),
                     swiglu_inv=inv)  # fmt: skip
    return out, static_scales(m, scale, codes.device)
