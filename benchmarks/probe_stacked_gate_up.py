"""Gate and up as one GEMM over their stacked rows against two GEMMs, with down_proj's gated quantize after them.

    python3 benchmarks/probe_stacked_gate_up.py [--m 1,16,64,256,2048,8192,32768] [--shapes 8b] [--json FILE]

Deploy runs gate and up as one GEMM where no epilogue takes them (deploy/mlp.py: dynamic activations, or a transform
before down_proj), and down_proj's gated quantize reads the output's two column halves in place. Session 27's
whole-model bench found the stacked model faster at decode and 2.5–4.8% slower at a 32768-token prefill in both
orders. This probe times the two paths alone (graph replay, rotated weights), each from the shared input's codes
to down_proj's codes:

- ``two``: gate's GEMM, up's GEMM (the library's pick for each), the dynamic gated quantize of the contiguous outputs;
- ``stacked``: one GEMM over the rows stacked (N = 2·intermediate), the gated quantize of its column halves.

Both give the same codes (checked before timing: the GEMM's columns are the same sums).
"""

from __future__ import annotations

import argparse

import torch
from bench_w4a4_gemm import SHAPES
from timing import finish_report, rotations, start_report, time_us

from fptquant.kernels.quantize import quantize_per_token
from fptquant.kernels.w4a4_matmul import w4a4_matmul
from fptquant.math.packing import pack_int4


def case(model: str, m: int) -> dict:
    k, n2 = SHAPES[model]["gate_up"]  # (K, 2·intermediate)
    n = n2 // 2
    gen = torch.Generator().manual_seed(m)
    copies = rotations(n2 * k // 2 + m * n2 * 2)
    weights = [pack_int4(torch.randint(-8, 8, (n2, k), generator=gen, dtype=torch.int8)).cuda() for _ in range(2)]
    stacked = weights + [weights[i % 2].clone() for i in range(2, copies)]
    halves = [(w[:n].contiguous(), w[n:].contiguous()) for w in stacked]
    scale = (torch.rand(n2, generator=gen) * 0.01 + 0.001).cuda()
    scale_g, scale_u = scale[:n].contiguous(), scale[n:].contiguous()
    codes = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8).cuda()
    act = (torch.rand(m, 1, generator=gen) * 0.1 + 0.01).cuda()

    def two(i: int):
        g = w4a4_matmul(codes, act, halves[i][0], scale_g, None, out_dtype=torch.bfloat16)
        u = w4a4_matmul(codes, act, halves[i][1], scale_u, None, out_dtype=torch.bfloat16)
        return quantize_per_token(g, up=u)

    def one(i: int):
        y = w4a4_matmul(codes, act, stacked[i], scale, None, out_dtype=torch.bfloat16)
        g, u = y.split([n, n], dim=1)
        return quantize_per_token(g, up=u)

    (q2, s2), (q1, s1) = two(0), one(0)
    ok = torch.equal(q2, q1) and torch.equal(s2, s1)
    row = {"model": model, "M": m, "N": n2, "K": k, "ok": ok}
    for name, fn in (("two", two), ("stacked", one)):
        row[name] = time_us(fn, copies, graph=True)
    row["stacked_speedup"] = row["two"]["median_us"] / row["stacked"]["median_us"]
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,64,256,2048,8192,32768")
    p.add_argument("--shapes", default="8b")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    env = start_report()
    if env is None:
        return 2
    print(f"{'model':>6} {'M':>6} | {'two GEMMs us':>13} {'stacked us':>11} | stacked faster by  ok")
    rows = []
    for model in a.shapes.split(","):
        for m in [int(v) for v in a.m.split(",")]:
            r = case(model, m)
            rows.append(r)
            print(f"{model:>6} {m:>6} | {r['two']['median_us']:>13.1f} {r['stacked']['median_us']:>11.1f} | "
                  f"{r['stacked_speedup']:>16.3f}x  {r['ok']}", flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    return finish_report({**env, "rows": rows}, a.json, all(r["ok"] for r in rows))


if __name__ == "__main__":
    raise SystemExit(main())
