"""Asymmetric INT4 quantization per (token, head) of K/V in one launch: :func:`quantize_and_write` packs the
codes into the INT4 cache, :func:`fake_quantize_heads` returns the dequantized values (the fake quantizer's
output, for prefill attention).

The torch path runs about 25 small kernels for each of K and V at every decode step (min, max, the
scale and zero formulas, rounding, packing, three index copies); at batch 1 they cost more than the
attention. One program per (batch, head, token) row reads its ``D`` values once and writes ``D/2``
bytes, a scale and a zero point.

The numbers are the quantizer's bit for bit: torch computes each operation of a bf16/fp16 tensor in
float32 and rounds the result to the tensor's dtype, so :func:`_r` rounds after every operation the
same way, and every tensor division is IEEE (``div_rn``). One exception follows torch's CUDA kernels: a
tensor divided by a Python number is computed there as a product with the float32 reciprocal, so the
scale's ``/ 15`` is a multiplication on the GPU and a division on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..math.quantization import SCALE_EPS
from .backend import interpreting
from .triton_quantize import TRITON_DTYPES, _rint

_INV_LEVELS = (torch.tensor(1.0) / 15).item()  # float32 1/15, exact as a Python float, as torch's CUDA kernel uses it


@triton.jit
def _r(x, DTYPE: tl.constexpr):
    """``x`` rounded to the input's dtype, as a torch operation on a tensor of that dtype stores it."""
    if DTYPE == tl.float32:
        return x
    if DTYPE == tl.bfloat16:  # round to nearest even by hand: the interpreter's float32 -> bf16 cast truncates
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _this_row(x_ptr, H, T, stride_b, stride_h, stride_t):
    """This program's ``(b, h, t)`` row (programs enumerate them with t fastest) and its address in ``x``."""
    row = tl.program_id(0)
    t = row % T
    h = (row // T) % H
    b = row // (T * H)
    return row, b, h, t, x_ptr + b.to(tl.int64) * stride_b + h * stride_h + t * stride_t


@triton.jit
def _quantize_row(
    x_row, lo, hi, eps, inv_levels, D: tl.constexpr, DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
    RECIPROCAL: tl.constexpr,
):  # fmt: skip
    """One (token, head) row of ``D`` values: its codes in two halves (features 0..D/2-1, the low nibbles, and
    D/2..D-1), as float32 integers 0..15, and its scale and zero point, as the quantizer computes them."""
    half = tl.arange(0, D // 2)
    x_lo = tl.load(x_row + half).to(tl.float32)
    x_hi = tl.load(x_row + D // 2 + half).to(tl.float32)
    xmin = _r(tl.minimum(tl.min(x_lo, axis=0), tl.min(x_hi, axis=0)) * lo, DTYPE)
    xmax = _r(tl.maximum(tl.max(x_lo, axis=0), tl.max(x_hi, axis=0)) * hi, DTYPE)
    xmin = tl.minimum(xmin, 0.0)
    xmax = tl.maximum(xmax, 0.0)
    if RECIPROCAL:
        scale = _r(_r(xmax - xmin, DTYPE) * inv_levels, DTYPE)
    else:
        fifteen = xmin * 0.0 + 15.0  # codes 0..15; div_rn takes tensors
        scale = _r(tl.math.div_rn(_r(xmax - xmin, DTYPE), fifteen), DTYPE)
    scale = _r(tl.maximum(scale, eps), DTYPE)
    zero = tl.minimum(tl.maximum(_rint(_r(tl.math.div_rn(-xmin, scale), DTYPE), INTERPRET), 0.0), 15.0)
    q_lo = _rint(_r(tl.math.div_rn(x_lo, scale + 0.0 * x_lo), DTYPE), INTERPRET)
    q_hi = _rint(_r(tl.math.div_rn(x_hi, scale + 0.0 * x_hi), DTYPE), INTERPRET)
    q_lo = tl.minimum(tl.maximum(_r(q_lo + zero, DTYPE), 0.0), 15.0)
    q_hi = tl.minimum(tl.maximum(_r(q_hi + zero, DTYPE), 0.0), 15.0)
    return q_lo, q_hi, scale, zero


@triton.jit
def _kv_write_kernel(
    x_ptr, codes_ptr, scale_ptr, zero_ptr, start_ptr, H, T, S, stride_b, stride_h, stride_t, lo, hi, eps,
    inv_levels, D: tl.constexpr, DTYPE: tl.constexpr, INTERPRET: tl.constexpr, RECIPROCAL: tl.constexpr,
):  # fmt: skip
    _, b, h, t, x_row = _this_row(x_ptr, H, T, stride_b, stride_h, stride_t)
    q_lo, q_hi, scale, zero = _quantize_row(x_row, lo, hi, eps, inv_levels, D, DTYPE, INTERPRET, RECIPROCAL)
    pos = tl.load(start_ptr) + t
    slot = (b.to(tl.int64) * H + h) * S + pos
    half = tl.arange(0, D // 2)
    tl.store(codes_ptr + slot * (D // 2) + half, (q_lo.to(tl.int32) | (q_hi.to(tl.int32) << 4)).to(tl.uint8))
    tl.store(scale_ptr + slot, scale.to(scale_ptr.dtype.element_ty))
    tl.store(zero_ptr + slot, zero.to(tl.uint8))


@triton.jit
def _kv_fake_quant_kernel(
    x_ptr, out_ptr, H, T, stride_b, stride_h, stride_t, lo, hi, eps, inv_levels, D: tl.constexpr,
    DTYPE: tl.constexpr, INTERPRET: tl.constexpr, RECIPROCAL: tl.constexpr,
):  # fmt: skip
    """``(codes - zero) · scale`` of each row, rounded to the dtype: the fake quantizer's output."""
    row, _, _, _, x_row = _this_row(x_ptr, H, T, stride_b, stride_h, stride_t)
    q_lo, q_hi, scale, zero = _quantize_row(x_row, lo, hi, eps, inv_levels, D, DTYPE, INTERPRET, RECIPROCAL)
    half = tl.arange(0, D // 2)
    out_row = out_ptr + row.to(tl.int64) * D
    tl.store(out_row + half, _r((q_lo - zero) * scale, DTYPE).to(out_ptr.dtype.element_ty))
    tl.store(out_row + D // 2 + half, _r((q_hi - zero) * scale, DTYPE).to(out_ptr.dtype.element_ty))


def quantize_and_write(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    start: torch.Tensor,
    lo: float,
    hi: float,
) -> None:
    """``x (B, H, T, D)`` (last dim contiguous) into ``codes (B, H, S, D/2)``, ``scale``, ``zero (B, H, S)`` at
    positions ``start + 0..T-1`` (``start``: a device scalar, read by the kernel, so CUDA graphs can replay it)."""
    b, h, t, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    _kv_write_kernel[(b * h * t,)](
        x, codes, scale, zero, start, h, t, codes.shape[2], x.stride(0), x.stride(1), x.stride(2),
        float(lo), float(hi), SCALE_EPS, _INV_LEVELS, D=d, DTYPE=TRITON_DTYPES[x.dtype], INTERPRET=interpreting(),
        RECIPROCAL=x.is_cuda, num_warps=1,
    )  # fmt: skip


def fake_quantize_heads(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x (B, H, T, D)`` (last dim contiguous) quantized and dequantized per (token, head) in one launch, bit
    for bit what the quantizer's forward gives in ``x``'s dtype; returned contiguous."""
    b, h, t, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((b, h, t, d), dtype=x.dtype, device=x.device)
    _kv_fake_quant_kernel[(b * h * t,)](
        x, out, h, t, x.stride(0), x.stride(1), x.stride(2), float(lo), float(hi), SCALE_EPS, _INV_LEVELS, D=d,
        DTYPE=TRITON_DTYPES[x.dtype], INTERPRET=interpreting(), RECIPROCAL=x.is_cuda, num_warps=1,
    )  # fmt: skip
    return out
