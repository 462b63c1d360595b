"""Triton kernel of :mod:`.transform_quantize`: one program per token; pass 1 transforms every block and
takes the row's amax, pass 2 transforms again (cheaper than a scratch round trip) and writes the codes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .quantize import QMAX
from .triton_quantize import _rint


@triton.jit
def _block(x_ptr, p1t, p2, j, n1, n2, N1P: tl.constexpr, N2P: tl.constexpr):
    """``P1ᵀ X_j P2`` for the j-th ``n1×n2`` block of the row (zero-padded to N1P×N2P)."""
    r = tl.arange(0, N1P)[:, None]
    c = tl.arange(0, N2P)[None, :]
    x = tl.load(x_ptr + j * n1 * n2 + r * n2 + c, mask=(r < n1) & (c < n2), other=0.0).to(tl.float32)
    return tl.dot(p1t, tl.dot(x, p2, input_precision="ieee"), input_precision="ieee")


@triton.jit
def _kron_quantize_kernel(
    x_ptr, p1t_ptr, p2_ptr, q_ptr, s_ptr, n1, n2, nb, stride_x, stride_q, clip, static_amax, eps_amax,
    STATIC: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    a = tl.arange(0, N1P)
    b = tl.arange(0, N2P)
    p1t = tl.load(p1t_ptr + a[:, None] * N1P + a[None, :])  # padded on the host
    p2 = tl.load(p2_ptr + b[:, None] * N2P + b[None, :])
    amax = tl.zeros((1,), tl.float32)  # a 1-element vector keeps the loop-carried type fixed
    if STATIC:
        amax += static_amax
    else:
        for j in range(0, nb):
            amax = tl.maximum(amax, tl.max(tl.abs(_block(x_row, p1t, p2, j, n1, n2, N1P, N2P))))
        amax = tl.maximum(amax * clip, eps_amax)
    seven = tl.full((1,), 7.0, tl.float32)
    inv = tl.math.div_rn(seven, amax)
    tl.store(s_ptr + row + tl.arange(0, 1), tl.math.div_rn(amax, seven))
    r = tl.arange(0, N1P)[:, None]
    c = tl.arange(0, N2P)[None, :]
    for j in range(0, nb):
        y = _block(x_row, p1t, p2, j, n1, n2, N1P, N2P)
        q = tl.minimum(tl.maximum(_rint(y * tl.reshape(inv, (1, 1)), INTERPRET), -8.0), 7.0)
        tl.store(q_row + j * n1 * n2 + r * n2 + c, q.to(tl.int8), mask=(r < n1) & (c < n2))


def _padded(p: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.float32, device=p.device)
    out[: p.shape[0], : p.shape[1]] = p
    return out


def kron_quantize_rows(
    x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, nb: int, clip_ratio: float, static_scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    n1, n2 = p1.shape[0], p2.shape[0]
    n1p, n2p = max(16, triton.next_power_of_2(n1)), max(16, triton.next_power_of_2(n2))
    codes = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    _kron_quantize_kernel[(M,)](
        x, _padded(p1.t().float(), n1p).contiguous(), _padded(p2.float(), n2p).contiguous(), codes, scales,
        n1, n2, nb, x.stride(0), codes.stride(0), float(clip_ratio), QMAX * float(static_scale or 0.0),
        QMAX * SCALE_EPS, STATIC=static_scale is not None, N1P=n1p, N2P=n2p, INTERPRET=interpreting(),
        num_warps=4,
    )  # fmt: skip
    return codes, scales[:, None]
