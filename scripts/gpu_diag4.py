"""Does the fused transform+quantize kernel write outside its outputs? Checksums of its inputs before and
after, with the kernel run before the reference (the order in which mismatches were seen)."""

from __future__ import annotations

import torch

from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
from fptquant.math.hadamard import random_orthogonal

g = torch.Generator().manual_seed(0)
for m, n1, n2 in [(8192, 64, 64), (256, 64, 64), (64, 32, 48)]:
    p1, p2 = random_orthogonal(n1, g).float().cuda(), random_orthogonal(n2, g).float().cuda()
    x = torch.randn(m, n1 * n2, device="cuda", dtype=torch.bfloat16)
    before = x.clone()
    q, s = transform_quantize(x, p1, p2, backend="triton")
    torch.cuda.synchronize()
    changed = int((x != before).sum())
    qr, sr = transform_quantize_reference(before, p1, p2)
    print(
        f"M={m} {n1}x{n2}: input elements changed by the kernel {changed}, codes differing "
        f"{int((q != qr).sum())}, max |diff| {int((q.int() - qr.int()).abs().max())}"
    )
