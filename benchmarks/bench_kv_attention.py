"""INT4-KV decode attention vs BF16 SDPA of the same shape (issue 8, acceptance 5).

    python3 benchmarks/bench_kv_attention.py [--json FILE] [--batch 1 8 64] [--length 2048 8192]

One query token per sequence over a cache of ``length`` positions. Per shape, in the same run: the
Triton kernel on the packed INT4 cache (split merge included) and ``F.scaled_dot_product_attention``
on a bf16 cache with each of the flash, memory-efficient and cuDNN backends that accepts the shape;
the baseline is the fastest of them. Timed by CUDA-graph replay (decode calls last microseconds).
Correctness: the kernel against the float32 PyTorch reference, before timing.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from timing import finish_report, gbps, rotations, start_report, time_us
from torch.nn.attention import SDPBackend, sdpa_kernel

from fptquant.kernels.kv_attention import PackedKV, decode_attention_reference, int4_kv_decode_attention

MODELS = {"llama3-8b": (32, 8, 128), "llama3-70b": (64, 8, 128), "smollm2-135m": (9, 3, 64)}
BASELINES = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION}  # fmt: skip
TOLERANCE = 1e-2  # relative to max |out|: fp16 q and probabilities on the tensor cores


def random_cache(batch: int, heads: int, length: int, head_dim: int) -> PackedKV:
    cache = PackedKV.empty(batch, heads, length, head_dim, torch.bfloat16, "cuda")
    cache.codes.random_(0, 256)
    cache.zero.random_(0, 16)
    cache.scale.uniform_(0.01, 0.2)
    return cache


def measure(model: str, batch: int, length: int) -> dict:
    hq, hk, d = MODELS[model]
    scaling = 1 / math.sqrt(d)
    bf16_bytes = 2 * batch * hk * length * d * 2
    n = rotations(bf16_bytes)
    caches = [(random_cache(batch, hk, length, d), random_cache(batch, hk, length, d)) for _ in range(n)]
    queries = [torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    lengths = torch.full((batch,), length, dtype=torch.int32, device="cuda")

    def int4(i):
        return int4_kv_decode_attention(queries[i], *caches[i], lengths, scaling, backend="triton", max_length=length)

    expected = decode_attention_reference(queries[0], *caches[0], lengths, scaling)
    error = ((int4(0) - expected).abs().max() / expected.abs().max()).item()
    row = {"model": model, "batch": batch, "length": length, "q_heads": hq, "kv_heads": hk, "head_dim": d,
           "max_rel_error": error, "ok": error <= TOLERANCE}  # fmt: skip
    row["int4"] = time_us(int4, n, graph=True)
    dense = [(k.dequantize(length), v.dequantize(length)) for k, v in caches]
    q4 = [q[:, :, None] for q in queries]
    for name, backend in BASELINES.items():

        def sdpa(i, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q4[i], *dense[i], scale=scaling, enable_gqa=True)

        try:
            sdpa(0)
            row[name] = time_us(sdpa, n, graph=True)
        except RuntimeError as error:  # this backend does not take the shape
            row[name] = {"error": str(error).splitlines()[0][:120]}
    timed = {k: row[k]["median_us"] for k in BASELINES if "median_us" in row[k]}
    row["baseline"] = min(timed, key=timed.get)
    row["speedup"] = timed[row["baseline"]] / row["int4"]["median_us"]
    row["int4_GBps"] = gbps(row["int4"], 2 * batch * hk * length * (d // 2 + 3))
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--length", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    env = start_report()
    if env is None:
        return 2
    print(f"{'model':>13} {'batch':>5} {'length':>6} {'int4 µs':>8} {'bf16 µs':>8} {'baseline':>9} "
          f"{'speed-up':>8} {'int4 GB/s':>9} {'rel err':>8}")  # fmt: skip
    rows = []
    for model in args.models:
        for batch in args.batch:
            for length in args.length:
                r = measure(model, batch, length)
                rows.append(r)
                base = r[r["baseline"]]["median_us"]
                print(f"{model:>13} {batch:>5} {length:>6} {r['int4']['median_us']:>8.1f} {base:>8.1f} "
                      f"{r['baseline']:>9} {r['speedup']:>7.2f}× {r['int4_GBps']:>9.0f} {r['max_rel_error']:>8.1e}",
                      flush=True)  # fmt: skip
    ok = all(r["ok"] for r in rows)
    return finish_report({"env": env, "rows": rows}, args.json, ok)


if __name__ == "__main__":
    sys.exit(main())
