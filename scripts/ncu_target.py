"""Launch one kernel of the library a few times, for Nsight Compute to profile one launch (issue 8, diagnosis).

    ncu --clock-control none -k regex:KERNEL --launch-skip 2 --launch-count 1 [--section ...] \
        python3 scripts/ncu_target.py --case 112x128:kron-bf16 [--m 8192]
    ... python3 scripts/ncu_target.py --case down16      # the sliced decode GEMM of LLaMA-3-8B down, 16 tokens

Transform+quantize cases are bench_transform_quantize.py's ``N1xN2:KIND`` (dynamic scales, its inputs and factors);
``down16`` the sliced GEMM on random codes as bench_w4a4_gemm.py builds them. Four launches, no timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_transform_quantize import CASES, factors  # noqa: E402

from fptquant.kernels.triton_transform_quantize import kron_quantize_rows  # noqa: E402
from fptquant.kernels.w4a4_matmul import w4a4_matmul  # noqa: E402
from fptquant.math.packing import pack_int4  # noqa: E402


def transform_case(case: str, m: int):
    sizes, kind = case.split(":")
    n1, n2 = (int(v) for v in sizes.split("x"))
    k = next(k for k, a, b, c in CASES if (a, b, c) == (n1, n2, kind))
    gen = torch.Generator().manual_seed(k)
    gated, base = kind.endswith("-gated"), kind.removesuffix("-gated")
    p1, p2, gain = factors(n1, n2, base, gen)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    up = {"up": torch.randn(m, k, device="cuda", dtype=torch.bfloat16)} if gated else {}
    round_mid = base.endswith("-bf16")
    return lambda: kron_quantize_rows(x, p1, p2, k // (n1 * n2), 1.0, None, gain=gain, round_mid=round_mid, **up)


def down16():
    k, n = 14336, 4096
    gen = torch.Generator().manual_seed(0)
    packed = pack_int4(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)).cuda()
    scale = (torch.rand(n, generator=gen) * 0.01 + 0.001).cuda()
    codes = torch.randint(-8, 8, (16, k), generator=gen, dtype=torch.int8).cuda()
    act = (torch.rand(16, 1, generator=gen) * 0.1 + 0.01).cuda()
    return lambda: w4a4_matmul(codes, act, packed, scale, None, out_dtype=torch.bfloat16)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--m", type=int, default=8192)
    a = p.parse_args()
    fn = down16() if a.case == "down16" else transform_case(a.case, a.m)
    for _ in range(4):
        fn()
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
