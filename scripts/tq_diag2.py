"""Bisect the fused transform+quantize failure on the GPU: tokens per program, prescale, input scale."""

from __future__ import annotations

import torch

from fptquant.kernels.transform_quantize import transform_quantize_reference
from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
from fptquant.math.hadamard import random_orthogonal

g = torch.Generator().manual_seed(0)
for n1, n2 in [(64, 64), (16, 32)]:
    p1, p2 = random_orthogonal(n1, g).float().cuda(), random_orthogonal(n2, g).float().cuda()
    for mult in (1.0, 40.0):
        x = (torch.randn(64, n1 * n2, device="cuda") * mult).to(torch.bfloat16)
        qr, sr = transform_quantize_reference(x, p1, p2)
        for tokens in (1, 2, 4):
            for prescale in (True, False):
                q, s = kron_quantize_rows(x, p1, p2, 1, 1.0, None, tokens=tokens, prescale=prescale)
                ratio = (s / sr).squeeze(1)
                print(
                    f"{n1}x{n2} x*{mult} T={tokens} prescale={prescale}: rows bad "
                    f"{int(((q != qr).any(1) | (ratio != 1)).sum())}/64, scale ratio min {ratio.min():.4f} "
                    f"max {ratio.max():.4f}, first ratios {[round(v, 3) for v in ratio[:6].tolist()]}"
                )
