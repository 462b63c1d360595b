"""W4A4 GEMM: INT4 activation codes × packed INT4 weights on 8-bit tensor cores, scales in the epilogue.

``out[m, n] = (Σ_k a[m, k] · w[n, k]) · s_tok[m] · s_ch[n] (+ bias[n])``, rounded once to ``out_dtype``.

- ``a``: activation codes in -8..7, one a byte (``float8_e4m3fn`` for the FP8 route, ``int8`` for the
  exact INT8 route), as :func:`fptquant.kernels.quantize_per_token` writes them.
- ``w``: weight codes packed two a byte along K (:func:`fptquant.math.packing.pack_int4`), ``(N, K/2)``.
- Scales in float32: per token ``(M, 1)``, per output channel ``(N,)``.

The integer sum is exact on both routes (the FP8 route promotes the tensor cores' partial sums to
float32 every ``block_k`` products; float32 holds every sum up to ``64·K < 2^24``). The reference
computes it in float64, then applies the same float32 epilogue ``(acc · s_tok) · s_ch + bias``.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from ..math.packing import unpack_int4
from .backend import backend_for
from .quantize import check_codes_dtype, quantize_per_token


def check_matmul_args(
    codes: torch.Tensor, act_scale: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor
) -> None:
    """Names what does not fit :func:`w4a4_matmul`'s arguments (dtypes, ranks, K, scale shapes)."""
    check_codes_dtype(codes.dtype)
    if codes.dim() != 2 or packed.dim() != 2:
        raise ConfigError(f"w4a4 matmul takes 2-D codes and weights, got {tuple(codes.shape)}, {tuple(packed.shape)}")
    if packed.dtype != torch.uint8:
        raise ConfigError(f"packed int4 weights are uint8, got {packed.dtype}")
    (m, k), (n, half) = codes.shape, packed.shape
    if k != 2 * half:
        raise ConfigError(f"activations have K={k} but the packed weights hold K={2 * half}")
    if act_scale.shape != (m, 1) or weight_scale.shape != (n,):
        raise ConfigError(
            f"scales must be ({m}, 1) and ({n},), got {tuple(act_scale.shape)}, {tuple(weight_scale.shape)}"
        )


def w4a4_matmul_reference(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    check_matmul_args(codes, act_scale, packed, weight_scale)
    acc = (codes.double() @ unpack_int4(packed).double().T).float()
    out = acc * act_scale.float() * weight_scale.float()[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def w4a4_matmul(
    codes: torch.Tensor,
    act_scale: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
    config=None,
) -> torch.Tensor:
    """Like :func:`w4a4_matmul_reference`, on the backend the switch picks. ``config``: a Triton
    :class:`~fptquant.kernels.triton_w4a4_matmul.GemmConfig` (tensor cores) or, for one token,
    :class:`~fptquant.kernels.triton_w4a4_gemv.GemvConfig` (CUDA cores), or for up to 16 tokens
    :class:`~fptquant.kernels.triton_w4a4_dp4a.Dp4aConfig` (CUDA cores, dp4a) or
    :class:`~fptquant.kernels.triton_w4a4_sliced.SlicedConfig` (tensor cores, K sliced across warps);
    else :func:`default_config`."""
    if backend_for(codes, backend) == "torch":
        return w4a4_matmul_reference(codes, act_scale, packed, weight_scale, bias, out_dtype)
    check_matmul_args(codes, act_scale, packed, weight_scale)
    from .triton_w4a4_dp4a import Dp4aConfig, dp4a_matmul
    from .triton_w4a4_gemv import GemvConfig, gemv
    from .triton_w4a4_matmul import matmul
    from .triton_w4a4_sliced import SlicedConfig, sliced_matmul

    config = config or default_config(codes, packed)
    if isinstance(config, SlicedConfig):
        return sliced_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config)
    if isinstance(config, Dp4aConfig):
        return dp4a_matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config)
    if isinstance(config, GemvConfig):
        if codes.shape[0] != 1:
            raise ConfigError(f"the GEMV takes one token, got {codes.shape[0]}")
        return gemv(codes, act_scale, packed, weight_scale, bias, out_dtype, config)
    return matmul(codes, act_scale, packed, weight_scale, bias, out_dtype, config)


def default_config(codes: torch.Tensor, packed: torch.Tensor):
    """The Triton config :func:`w4a4_matmul` runs with none given: for 1–16 int8-coded tokens the kernel
    :func:`small_m_kernel` names, else the GEMV for one token on packed weights, the GEMM's ``pick_config``
    otherwise (the benchmarks time it as the "heuristic")."""
    from .triton_w4a4_dp4a import pick_dp4a_config
    from .triton_w4a4_gemv import pick_gemv_config
    from .triton_w4a4_matmul import pick_config
    from .triton_w4a4_sliced import pick_sliced_config

    (m, k), n = codes.shape, packed.shape[0]
    kernel = small_m_kernel(codes, packed)
    if kernel == "sliced":
        return pick_sliced_config(n, k, codes.device)
    if kernel == "dp4a":
        return pick_dp4a_config(n, m)
    if m == 1 and packed.dtype == torch.uint8:
        return pick_gemv_config(n, k)
    return pick_config(m, n, k)


SMALL_M_KERNELS = ("auto", "sliced", "dp4a", "gemm")
SMALL_M_MAX_TOKENS = 16
DP4A_MAX_TOKENS = 4  # H100, sessions 15 and 19: dp4a ahead at 1-2 tokens (its work grows with them), sliced from 8


def small_m_kernel(codes: torch.Tensor, packed: torch.Tensor) -> str | None:
    """The kernel a call of 1–16 int8-coded tokens goes to (None: not such a call). ``FPTQUANT_SMALL_M_KERNEL``:
    ``auto`` (default) picks the CUDA cores' 4-way dot (dp4a) up to ``DP4A_MAX_TOKENS`` and the tensor-core
    kernel with K sliced across warps above; ``sliced`` and ``dp4a`` take all of 1–16, ``gemm`` none of them
    (the GEMV for one token, the tensor-core GEMM for more)."""
    choice = os.environ.get("FPTQUANT_SMALL_M_KERNEL", "auto")
    if choice not in SMALL_M_KERNELS:
        raise ConfigError(f"FPTQUANT_SMALL_M_KERNEL must be one of {', '.join(SMALL_M_KERNELS)}, got {choice!r}")
    m, k = codes.shape
    fits = codes.dtype == torch.int8 and k % 8 == 0 and packed.dtype == torch.uint8
    if not fits or not 1 <= m <= SMALL_M_MAX_TOKENS or choice == "gemm":
        return None
    if choice == "auto":
        return "dp4a" if m <= DP4A_MAX_TOKENS else "sliced"
    return choice


def quantize_w4a4_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    clip_ratio: float = 1.0,
    static_scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """:func:`~fptquant.kernels.quantize_per_token` of the rows of ``x`` (float), then :func:`w4a4_matmul`;
    for one token on the Triton backend both happen in one kernel (the GEMV quantizes as it reads ``x``)."""
    if x.dim() != 2 or x.shape[1] != 2 * packed.shape[1]:
        raise ConfigError(f"activations {tuple(x.shape)} do not match packed weights {tuple(packed.shape)}")
    if x.shape[0] == 1 and packed.dtype == torch.uint8 and backend_for(x, backend) == "triton":
        from .triton_w4a4_gemv import quantize_gemv

        return quantize_gemv(x, packed, weight_scale, bias, out_dtype, clip_ratio, static_scale)
    codes, scales = quantize_per_token(x, clip_ratio, static_scale, backend=backend)
    return w4a4_matmul(codes, scales.float(), packed, weight_scale, bias, out_dtype, backend=backend)
