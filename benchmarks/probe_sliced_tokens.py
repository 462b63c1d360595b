"""The sliced decode GEMM at one to a few tokens, against sixteen and against dp4a (issue 8, acceptance 3).

    python3 benchmarks/probe_sliced_tokens.py [--m 1,2,3,4,8,16] [--layers gate_up,down] [--shapes 8b] [--json FILE]

Session 25 timed LLaMA-3-8B's plain gate+up GEMM in the sliced kernel at 43.1 µs for one token, 32.2 for two and
24.5 for sixteen, with the same config and the same weight bytes. The kernel then wrapped its 16 MMA rows onto
the ``M`` real ones (``rm % M``). Session 26's first run of this probe found the cause: with the codes in a 16-row
buffer and the kernel told ``M = 16`` (every MMA row a distinct address) one token took the time of sixteen
(gate+up 25.5 against 44.4 µs), while exempting ``M`` from Triton's value specialization changed nothing. The
kernel now masks the rows past ``M`` instead. This probe times the GEMM alone (graph replay, rotated weights, no
programmatic launch) for each ``M``:

- ``sliced``: ``sliced_matmul`` on ``(M, K)`` codes, as the library runs it;
- ``padded``: the codes in a 16-row buffer (rows past ``M`` zero), the kernel told ``M = 16``;
- ``dp4a``: the CUDA-core kernel (``pick_dp4a_config``), deploy's pick up to ``DP4A_MAX_TOKENS`` tokens.

Each variant's first ``M`` output rows are checked against the float64 reference before timing.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from bench_w4a4_gemm import SHAPES
from timing import finish_report, rotations, start_report, time_us

from fptquant.kernels import triton_w4a4_sliced as sliced
from fptquant.kernels.triton_w4a4_dp4a import dp4a_matmul, pick_dp4a_config
from fptquant.kernels.w4a4_matmul import w4a4_matmul_reference
from fptquant.math.packing import pack_int4


def case(model: str, layer: str, m: int) -> dict:
    k, n = SHAPES[model][layer]  # (K, N)
    gen = torch.Generator().manual_seed(m)
    copies = rotations(n * k // 2)
    weights = [torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8) for _ in range(min(copies, 2))]
    packs = [pack_int4(w).cuda() for w in weights]
    packs += [packs[i % len(packs)].clone() for i in range(len(packs), copies)]
    weight_scale = (torch.rand(n, generator=gen) * 0.01 + 0.001).cuda()
    codes = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8).cuda()
    act_scale = (torch.rand(m, 1, generator=gen) * 0.1 + 0.01).cuda()
    padded = torch.zeros(16, k, dtype=torch.int8, device="cuda")
    padded[:m] = codes
    padded_scale = torch.ones(16, 1, device="cuda")
    padded_scale[:m] = act_scale
    cfg = replace(sliced.pick_sliced_config(n, k, codes.device), pdl=False)
    want = w4a4_matmul_reference(
        codes.cpu(), act_scale.cpu(), pack_int4(weights[0]), weight_scale.cpu(), None, torch.float32
    )
    row: dict = {"model": model, "layer": layer, "M": m, "N": n, "K": k, "config": str(cfg)}
    dp4a_cfg = replace(pick_dp4a_config(n, m), pdl=False)
    variants = {
        "sliced": lambda i: sliced.sliced_matmul(codes, act_scale, packs[i], weight_scale, None, torch.bfloat16, cfg),
        "padded": lambda i: sliced.sliced_matmul(padded, padded_scale, packs[i], weight_scale, None, torch.bfloat16,
                                                 cfg),
        "dp4a": lambda i: dp4a_matmul(codes, act_scale, packs[i], weight_scale, None, torch.bfloat16, dp4a_cfg),
    }  # fmt: skip
    for name, run in variants.items():
        got = run(0)[:m].float().cpu()
        err = ((got - want).abs() / want.abs().amax().clamp_min(1e-9)).amax().item()
        row[name] = {"rel_err": err, "ok": err < 1e-2, **time_us(run, copies, graph=True)}
    return row


VARIANTS = ("sliced", "padded", "dp4a")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="1,2,3,4,8,16")
    parser.add_argument("--layers", default="gate_up,down")
    parser.add_argument("--shapes", default="8b")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = start_report()
    if report is None:
        return 2
    rows = []
    print(f"{'model':>5} {'layer':>8} {'M':>3} | {'sliced':>8} {'padded':>8} {'dp4a':>8}  (µs, GEMM alone)")
    for model in args.shapes.split(","):
        for layer in args.layers.split(","):
            for m in [int(v) for v in args.m.split(",")]:
                r = case(model, layer, m)
                rows.append(r)
                t = [r[v]["median_us"] for v in VARIANTS]
                ok = all(r[v]["ok"] for v in VARIANTS)
                print(f"{model:>5} {layer:>8} {m:>3} | {t[0]:>8.1f} {t[1]:>8.1f} {t[2]:>8.1f}  "
                      f"{'ok' if ok else 'CHECK FAILED'}", flush=True)  # fmt: skip
    report["rows"] = rows
    ok = all(r[v]["ok"] for r in rows for v in VARIANTS)
    return finish_report(report, args.json, ok)


if __name__ == "__main__":
    raise SystemExit(main())
