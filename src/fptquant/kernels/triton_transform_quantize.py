"""Triton kernel of :mod:`.transform_quantize`: one pass, ``T`` tokens a program, whole rows in registers.

The ``T·nb`` blocks of ``n1×n2`` (each padded to powers of two) go through two batched (3-D) fp16
tensor-core dots, ``Z_b = X_b P2`` then ``Y_b = P1ᵀ Z_b``. (A 2-D formulation with a permute between the
dots gave wrong rows on the H100 under Triton 3.6 while passing in the interpreter.) Rows too long for one
program's registers (over 16384 padded elements) are refused.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .quantize import QMAX
from .triton_quantize import _rint

MAX_ROW = 16384


@triton.jit
def _kron_quantize_kernel(
    x_ptr, p1t_ptr, p2_ptr, q_ptr, s_ptr, M, n1, n2, nb, stride_x, stride_q, clip, static_amax, eps_amax,
    STATIC: tl.constexpr, T: tl.constexpr, NB: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
    UPCAST: tl.constexpr, INTERPRET: tl.constexpr, PRESCALE: tl.constexpr = True,
):  # fmt: skip
    # 2-D (token, padded position) offsets for the load and the store: the padded position j splits into
    # (block, row, column) with shifts; no reshape touches the addresses
    tok = tl.program_id(0) * T + tl.arange(0, T)
    j = tl.arange(0, NB * N1 * N2)
    blk, r, c = j // (N1 * N2), (j // N2) % N1, j % N2
    col = (blk * (n1 * n2) + r * n2 + c)[None, :]
    mask = (tok < M)[:, None] & ((blk < nb) & (r < n1) & (c < n2))[None, :]
    x = tl.load(x_ptr + tok[:, None].to(tl.int64) * stride_x + col, mask=mask, other=0.0).to(tl.float32)

    # per-token power-of-two prescale 2^-e (max|x| = m·2^e, m in [0.5, 1)), from the fp32 exponent bits
    xmax = tl.max(tl.abs(x), axis=1)
    biased = (xmax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.where(xmax > 0, biased - 126, 0)
    if not PRESCALE:  # debugging aid: no prescale (fp16 may overflow)
        e = e * 0
    scale = ((127 - e) << 23).to(tl.float32, bitcast=True)
    unscale = ((127 + e) << 23).to(tl.float32, bitcast=True)
    xn = (x * scale[:, None]).to(tl.float16)

    # batched dots over the T·NB blocks: Z_b = Xn_b P2, Y_b = P1ᵀ Z_b (no permutes between them)
    p2 = tl.load(p2_ptr + tl.arange(0, N2)[:, None] * N2 + tl.arange(0, N2)[None, :])
    p1t = tl.load(p1t_ptr + tl.arange(0, N1)[:, None] * N1 + tl.arange(0, N1)[None, :])
    p2b = tl.broadcast_to(p2[None, :, :], (T * NB, N2, N2))
    p1tb = tl.broadcast_to(p1t[None, :, :], (T * NB, N1, N1))
    xb = tl.reshape(xn, (T * NB, N1, N2))
    if UPCAST:  # the interpreter's half-precision dot is unreliable; fp16 values are exact in fp32
        z = tl.dot(xb.to(tl.float32), p2b.to(tl.float32), input_precision="ieee").to(tl.float16)
        y = tl.dot(p1tb.to(tl.float32), z.to(tl.float32), input_precision="ieee")
    else:
        z = tl.dot(xb, p2b).to(tl.float16)
        y = tl.dot(p1tb, z)
    y = tl.reshape(y, (T, NB * N1 * N2)) * unscale[:, None]

    if STATIC:
        amax = tl.zeros((T,), dtype=tl.float32) + static_amax
    else:
        amax = tl.maximum(tl.max(tl.abs(y), axis=1) * clip, eps_amax)
    inv = tl.math.div_rn(tl.zeros_like(amax) + 7.0, amax)
    tl.store(s_ptr + tok, tl.math.div_rn(amax, tl.zeros_like(amax) + 7.0), mask=tok < M)
    q = tl.minimum(tl.maximum(_rint(y * inv[:, None], INTERPRET), -8.0), 7.0)
    q = q.to(tl.float16).to(q_ptr.dtype.element_ty)  # exact: |q| <= 8
    tl.store(q_ptr + tok[:, None].to(tl.int64) * stride_q + col, q, mask=mask)


def _padded(p: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.float16, device=p.device)
    out[: p.shape[0], : p.shape[1]] = p.half()
    return out


def kron_quantize_rows(
    x: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    nb: int,
    clip_ratio: float,
    static_scale: float | None,
    codes_dtype=torch.int8,
    tokens: int | None = None,
    prescale: bool = True,
    upcast: bool | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    n1, n2 = p1.shape[0], p2.shape[0]
    n1p, n2p = max(16, triton.next_power_of_2(n1)), max(16, triton.next_power_of_2(n2))
    nbp = triton.next_power_of_2(nb)
    row = nbp * n1p * n2p
    if row > MAX_ROW:
        raise ConfigError(f"fused transform+quantize holds a row in registers: padded size {row} > {MAX_ROW}")
    tokens = tokens or max(1, min(16, 8192 // row, triton.next_power_of_2(M)))
    if out is None:
        codes = torch.empty((M, K), dtype=codes_dtype, device=x.device)
        scales = torch.empty((M,), dtype=torch.float32, device=x.device)
    else:  # preallocated (M, K) codes and (M,) scales, e.g. filled with a sentinel by a test
        codes, scales = out
    _kron_quantize_kernel[(triton.cdiv(M, tokens),)](
        x, _padded(p1.t(), n1p).contiguous(), _padded(p2, n2p).contiguous(), codes, scales, M, n1, n2, nb,
        x.stride(0), codes.stride(0), float(clip_ratio), QMAX * float(static_scale or 0.0), QMAX * SCALE_EPS,
        STATIC=static_scale is not None, T=tokens, NB=nbp, N1=n1p, N2=n2p,
        UPCAST=interpreting() if upcast is None else upcast,
        INTERPRET=interpreting(), PRESCALE=prescale, num_warps=8 if tokens * row >= 8192 else 4,
    )  # fmt: skip
    return codes, scales[:, None]
