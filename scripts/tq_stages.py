"""Fused transform + quantize: pipeline stages 1, 2, 3 at M = 8192, three graph-timed repeats (GPU machine).

    PYTHONPATH=src:benchmarks python3 scripts/tq_stages.py

Prints each case's fraction of device copy bandwidth per stage count: the data behind
``triton_transform_quantize.default_stages``.
"""

from __future__ import annotations

import torch
from timing import gbps, time_us

from fptquant.kernels.triton_transform_quantize import SHARED_BYTES, kron_quantize_rows, shared_bytes, tile_shape
from fptquant.math.hadamard import random_orthogonal


def case(k: int, n1: int, n2: int, g: torch.Generator, m: int = 8192, buffers: int = 4) -> None:
    p1, p2 = random_orthogonal(n1, g).float().cuda(), random_orthogonal(n2, g).float().cuda()
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(buffers)]
    ys = [torch.empty_like(x) for x in xs]
    moved = m * k * 3 + m * 4
    for rep in range(3):
        copy = gbps(time_us(lambda i: ys[i].copy_(xs[i]), buffers, graph=True), 4 * m * k)
        res = []
        for stages in (1, 2, 3):
            if shared_bytes(*tile_shape(n1, n2), stages) > SHARED_BYTES:
                continue
            run = lambda i, s=stages: kron_quantize_rows(xs[i], p1, p2, 1, 1.0, None, stages=s)  # noqa: E731
            res.append(f"{stages}:{100 * gbps(time_us(run, buffers, graph=True), moved) / copy:.1f}%")
        print(k, n1, n2, "rep", rep, f"copy {copy:.0f}", " ".join(res), flush=True)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    for k, n1, n2 in [(4096, 64, 64), (1536, 32, 48), (14336, 112, 128)]:
        case(k, n1, n2, g)


if __name__ == "__main__":
    main()
