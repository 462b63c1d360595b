"""Which rows does the fused Kronecker transform+quantize get wrong on the GPU, and is it the kernel or
the reference? (the fp16 numerics re-done in float64 decide)."""

from __future__ import annotations

import torch

from fptquant.kernels.transform_quantize import row_exponent_scale, transform_quantize, transform_quantize_reference
from fptquant.math.hadamard import random_orthogonal


def f64_same_numerics(x, p1, p2):
    rows = x.double()
    scale = row_exponent_scale(rows.float()).double()
    xn = (rows * scale).half().double().reshape(x.shape[0], p1.shape[0], p2.shape[0])
    z = (xn @ p2.half().double()).half().double()
    return (p1.half().double().t() @ z).reshape(x.shape) / scale


for m, n1, n2 in [(8192, 64, 64), (256, 64, 64), (8192, 32, 48), (64, 32, 48)]:
    g = torch.Generator().manual_seed(0)
    p1, p2 = random_orthogonal(n1, g).float().cuda(), random_orthogonal(n2, g).float().cuda()
    x = torch.randn(m, n1 * n2, device="cuda", dtype=torch.bfloat16)
    q, s = transform_quantize(x, p1, p2, backend="triton")
    qr, sr = transform_quantize_reference(x, p1, p2)
    bad_rows = ((q != qr).any(1) | (s != sr).squeeze(1)).nonzero().squeeze(1)
    y64 = f64_same_numerics(x, p1, p2)
    amax64 = y64.abs().amax(1, keepdim=True)
    print(
        f"M={m} {n1}x{n2}: rows differing {bad_rows.numel()}, codes differing {(q != qr).sum().item()}, "
        f"scale rel err kernel {((s.double() - amax64 / 7).abs() / (amax64 / 7)).max().item():.2e}, "
        f"reference {((sr.double() - amax64 / 7).abs() / (amax64 / 7)).max().item():.2e}"
    )
    if bad_rows.numel():
        print(
            "  first bad rows",
            bad_rows[:12].tolist(),
            "row % 16 histogram",
            torch.bincount(bad_rows % 16, minlength=16).tolist(),
        )
