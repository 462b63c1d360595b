"""RMSNorm fused into the per-token INT4 quantize vs the norm then the quantize (issue 8, the norm variants).

    python3 benchmarks/bench_norm_quantize.py [--m 16,8192,32768] [--k 4096,8192,576] [--json FILE]

For each (M, K): the fused kernel's codes and scales are checked against the reference (HF's RMSNorm, then the
per-token quantize: codes within one on ≤ 0.1%, scales to 1e-6 or one bfloat16 step on ≤ 2% of the rows), then,
in the same run and by CUDA-graph replay, a bf16 device copy of the rows, the fused kernel, and two unfused paths:
HF's RMSNorm as PyTorch ops then the Triton quantize (what the fake-quant model runs), and ``F.rms_norm`` (one
PyTorch kernel) then the Triton quantize. Bandwidth of the fused kernel = bytes read + written / median time
(bf16 rows in, int8 codes and float32 scales out); the unfused paths are reported as the fused kernel's speed-up.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from timing import finish_report, gbps, rotations, start_report, time_us

from fptquant.kernels import quantize_per_token
from fptquant.kernels.norm_quantize import norm_quantize, rms_norm_reference

EPS = 1e-5


def agrees(q, s, qr, sr) -> bool:
    diff = (q.float() - qr.float()).abs()
    rel = ((s - sr).abs() / sr).flatten()
    codes_ok = int(diff.max()) <= 1 and (diff > 0).double().mean().item() <= 1e-3
    return codes_ok and rel.max().item() <= 2**-7 and (rel > 1e-6).double().mean().item() <= 0.02


def measure(m: int, k: int) -> dict:
    n = rotations(m * k * 3)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 4 for _ in range(n)]
    ys = [torch.empty_like(x) for x in xs]
    weight = (torch.rand(k, device="cuda") + 0.5).bfloat16()
    q, s = norm_quantize(xs[0], weight, EPS, backend="triton")
    qr, sr = norm_quantize(xs[0], weight, EPS, backend="torch")
    copy = time_us(lambda i: ys[i].copy_(xs[i]), n, graph=True)
    fused = time_us(lambda i: norm_quantize(xs[i], weight, EPS, backend="triton"), n, graph=True)
    hf = time_us(lambda i: quantize_per_token(rms_norm_reference(xs[i], weight, EPS), backend="triton"), n, graph=True)
    one = time_us(lambda i: quantize_per_token(F.rms_norm(xs[i], (k,), weight, EPS), backend="triton"), n, graph=True)
    moved = m * k * 2 + m * k + m * 4
    row = {"M": m, "K": k, "ok": agrees(q, s, qr, sr), "copy": copy, "fused": fused, "unfused_hf": hf,
           "unfused_rms_norm": one}  # fmt: skip
    row.update(copy_GBps=gbps(copy, 4 * m * k), fused_GBps=gbps(fused, moved))
    row.update(fraction_of_copy=row["fused_GBps"] / row["copy_GBps"])
    t = fused["median_us"]
    row.update(speedup_vs_hf=hf["median_us"] / t, speedup_vs_rms_norm=one["median_us"] / t)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--m", default="16,8192,32768")
    parser.add_argument("--k", default="4096,8192,576")
    args = parser.parse_args()
    env = start_report()
    if env is None:
        return 2
    print(f"{'M':>6} {'K':>6} {'fused µs':>9} {'GB/s':>6} {'of copy':>8} {'HF norm+q µs':>13} {'vs HF':>6} "
          f"{'rms_norm+q µs':>14} {'vs rms_norm':>11} ok")  # fmt: skip
    rows = []
    for m in [int(v) for v in args.m.split(",")]:
        for k in [int(v) for v in args.k.split(",")]:
            r = measure(m, k)
            rows.append(r)
            print(f"{m:>6} {k:>6} {r['fused']['median_us']:>9.2f} {r['fused_GBps']:>6.0f} "
                  f"{100 * r['fraction_of_copy']:>7.1f}% {r['unfused_hf']['median_us']:>13.2f} "
                  f"{r['speedup_vs_hf']:>5.2f}× {r['unfused_rms_norm']['median_us']:>14.2f} "
                  f"{r['speedup_vs_rms_norm']:>10.2f}× {r['ok']}", flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    return finish_report({**env, "rows": rows}, args.json, all(r["ok"] for r in rows))


if __name__ == "__main__":
    sys.exit(main())
