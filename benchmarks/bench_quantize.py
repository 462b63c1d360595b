"""Per-token INT4 quantization kernel vs device copy bandwidth (issue 8, acceptance 4, plain quantize).

    python3 benchmarks/bench_quantize.py [--sweep] [--eager] [--json FILE]

Checks the Triton codes and scales bit-exact against the PyTorch reference for every shape, then times,
in the same run: a bf16 device copy of the input (read + write), the Triton kernel (bf16 in, int8 codes
and fp32 scales out) and the PyTorch reference. Bandwidth = bytes read + written / median time. The copy and
the kernel are timed by CUDA-graph replay (device time; ``--eager`` without graphs, which at M = 2048 times
the host more than the GPU); the default tile is also timed eagerly (``triton_eager``).
"""

from __future__ import annotations

import argparse
import sys

import torch
from timing import finish_report, gbps, rotations, start_report, time_us

from fptquant.kernels import quantize_per_token, quantize_per_token_reference
from fptquant.kernels.triton_quantize import quantize_rows

SHAPES_K = [4096, 14336, 576, 1536, 8192, 28672]
SHAPES_M = [2048, 8192, 32768]
TILES = [(1, 4), (1, 8), (1, 16), (1, 32), (2, 4), (2, 8), (2, 16), (4, 8), (4, 16), (8, 16)]  # (rows, warps)


def same_bytes(q: torch.Tensor, s: torch.Tensor, qr: torch.Tensor, sr: torch.Tensor) -> bool:
    """Codes (as bytes: e4m3's -0 is not +0) and scales identical to the reference's."""
    return torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)


def measure(m: int, k: int, codes_dtype: torch.dtype, sweep: bool = False, graph: bool = True) -> dict:
    n = rotations(m * k * 3)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    ys = [torch.empty_like(x) for x in xs]
    q, s = quantize_per_token(xs[0], backend="triton", codes_dtype=codes_dtype)
    qr, sr = quantize_per_token_reference(xs[0], codes_dtype=codes_dtype)
    copy = time_us(lambda i: ys[i].copy_(xs[i]), n, graph=graph)
    kern = time_us(lambda i: quantize_per_token(xs[i], backend="triton", codes_dtype=codes_dtype), n, graph=graph)
    eager = time_us(lambda i: quantize_per_token(xs[i], backend="triton", codes_dtype=codes_dtype), n)
    ref = time_us(lambda i: quantize_per_token_reference(xs[i], codes_dtype=codes_dtype), n, samples=5)
    moved = m * k * 2 + m * k + m * 4
    exact = same_bytes(q, s, qr, sr)
    row = {"M": m, "K": k, "codes": str(codes_dtype).replace("torch.", ""), "exact": bool(exact)}
    row.update(copy_GBps=gbps(copy, 4 * m * k), triton_GBps=gbps(kern, moved), torch_ref_GBps=gbps(ref, moved))
    row.update(fraction_of_copy=row["triton_GBps"] / row["copy_GBps"], copy=copy, triton=kern, torch_ref=ref)
    row.update(triton_eager=eager, eager_fraction_of_copy=gbps(eager, moved) / row["copy_GBps"])
    if sweep:  # the default tile against others; each checked bit-exact before it is timed
        tiles = []
        for block_m, warps in TILES:
            qt, st = quantize_rows(xs[0], codes_dtype=codes_dtype, block_m=block_m, num_warps=warps)
            same = same_bytes(qt, st, qr, sr)
            t = time_us(
                lambda i, b=block_m, w=warps: quantize_rows(xs[i], codes_dtype=codes_dtype, block_m=b, num_warps=w),
                n,
                graph=graph,
            )
            tiles.append({"block_m": block_m, "num_warps": warps, "exact": bool(same), "GBps": gbps(t, moved)})
        row["tiles"] = tiles
        row["exact"] = row["exact"] and all(t["exact"] for t in tiles)
        best = max(tiles, key=lambda t: t["GBps"])
        row["best_tile_fraction_of_copy"] = best["GBps"] / row["copy_GBps"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--sweep", action="store_true", help="also time other tiles (rows a program, warps)")
    parser.add_argument("--eager", action="store_true", help="time without CUDA graphs")
    parser.add_argument("--m", default=",".join(map(str, SHAPES_M)), help="token counts, comma-separated")
    parser.add_argument("--k", default=",".join(map(str, SHAPES_K)), help="row lengths, comma-separated")
    args = parser.parse_args()
    env = start_report()
    if env is None:
        return 2
    head = f"{'codes':>13} {'M':>6} {'K':>6} {'copy GB/s':>10} {'triton GB/s':>12} {'of copy':>8}"
    print(head + f" {'torch ref GB/s':>15} exact")
    rows = []
    ms, ks = [int(v) for v in args.m.split(",")], [int(v) for v in args.k.split(",")]
    cases = [(torch.int8, m, k) for m in ms for k in ks if m * k * 2 <= 2 << 30]
    cases += [(torch.float8_e4m3fn, 8192, k) for k in (4096, 14336) if 8192 in ms and k in ks]
    for codes_dtype, m, k in cases:
        r = measure(m, k, codes_dtype, args.sweep, not args.eager)
        rows.append(r)
        best = f" eager {100 * r['eager_fraction_of_copy']:.1f}%"
        best += f" best tile {100 * r['best_tile_fraction_of_copy']:.1f}%" if args.sweep else ""
        print(f"{r['codes']:>13} {m:>6} {k:>6} {r['copy_GBps']:>10.0f} {r['triton_GBps']:>12.0f} "
              f"{100 * r['fraction_of_copy']:>7.1f}% {r['torch_ref_GBps']:>15.0f} {r['exact']}{best}")  # fmt: skip
        torch.cuda.empty_cache()
    ok = all(r["exact"] for r in rows)
    return finish_report({**env, "rows": rows}, args.json, ok, "all exact", "MISMATCH against the reference")


if __name__ == "__main__":
    sys.exit(main())
