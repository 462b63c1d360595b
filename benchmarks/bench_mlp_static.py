"""A SwiGLU MLP with static INT4 activations, BF16 cuBLAS against W4A4, same run (issue 8, acceptance 2 and 3).

    python3 benchmarks/bench_mlp_static.py [--json FILE] [--m 1,16,8192] [--shapes 8b,70b] [--sweep]

The W4A4 MLP runs three kernels: the static quantize of x, the gate+up GEMM whose epilogue writes down_proj's
codes (:mod:`fptquant.kernels.w4a4_swiglu`), and the down GEMM. Every piece of work is charged to a linear:

- gate+up, whole: quantize x + the fused GEMM (SwiGLU product and down's quantize included), against BF16
  cuBLAS gate+up alone (its SwiGLU is not charged to it);
- down, whole: its GEMM on the codes the producer wrote (nothing of down's input is left to do), against BF16
  cuBLAS down;
- the chain, x to down's output: W4A4 against BF16 gate+up, ``silu(g)·u`` (``torch.compile``d) and down.
  The unfused W4A4 chain (gate and up linears, the gated quantize, down) is timed beside it.

Checks: the fused codes against :func:`~fptquant.kernels.w4a4_swiglu.w4a4_swiglu_quantize_reference` (float64
sums) on every row, at most one code apart on at most 1e-3 of them. Times: CUDA-graph replay, CUDA events,
medians, weights rotated past L2 (``timing.py``).
"""

from __future__ import annotations

import argparse
import traceback
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_w4a4_gemm import SHAPES, SLICED_SWEEP, bf16_swiglu
from timing import finish_report, rotations, start_report, time_us

from fptquant.kernels import quantize_per_token
from fptquant.kernels.quantize import gated_product
from fptquant.kernels.triton_w4a4_matmul import GemmConfig
from fptquant.kernels.triton_w4a4_sliced import pick_sliced_config
from fptquant.kernels.w4a4_matmul import w4a4_matmul
from fptquant.kernels.w4a4_swiglu import interleave_gate_up, w4a4_swiglu_quantize, w4a4_swiglu_quantize_reference
from fptquant.math.packing import pack_int4

PREFILL_SWEEP = [  # the fused gate+up at prefill: Gluon tiles (the int8 codes tile leaves room for more stages)
    GemmConfig(128, 128, 128, num_warps=8, num_stages=5, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 128, 128, num_warps=8, num_stages=6, unpack_first=True, tma=True, gluon=True),
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    GemmConfig(256, 128, 128, num_warps=8, num_stages=4, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 256, 128, num_warps=8, num_stages=4, unpack_first=True, tma=True, gluon=True),
]


DECODE_SWEEP = [replace(c, preload=p) for c in SLICED_SWEEP if c.split_k == 1 for p in (0, 1)]  # whole tiles only


def random_packs(rows: int, cols: int, copies: int, gen: torch.Generator) -> list[torch.Tensor]:
    codes = (torch.randint(-8, 8, (rows, cols), generator=gen, dtype=torch.int8) for _ in range(copies))
    return [pack_int4(c).cuda() for c in codes]


def mlp_case(model: str, m: int, sweep: bool) -> dict:
    hidden, inter = SHAPES[model]["gate_up"][0], SHAPES[model]["down"][0]
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, hidden, device="cuda", dtype=torch.bfloat16)
    row: dict = {"model": model, "M": m, "hidden": hidden, "intermediate": inter}
    # BF16: cuBLAS gate+up (one GEMM), the compiled SwiGLU product, cuBLAS down
    b_gu, b_d = rotations(2 * inter * hidden * 2), rotations(hidden * inter * 2)
    w_gu = [torch.randn(2 * inter, hidden, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(b_gu)]
    w_d = [torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(b_d)]
    swiglu, how = bf16_swiglu()
    y = F.linear(x, w_gu[0])
    product = swiglu(y[:, :inter], y[:, inter:])
    row["swiglu_kind"] = how
    row["bf16_gate_up"] = time_us(lambda i: F.linear(x, w_gu[i]), b_gu, graph=True)
    row["bf16_product"] = time_us(lambda i: swiglu(y[:, :inter], y[:, inter:]), 1, graph=True)
    row["bf16_down"] = time_us(lambda i: F.linear(product, w_d[i]), b_d, graph=True)

    def bf16_chain(i: int):
        h = F.linear(x, w_gu[i % b_gu])
        return F.linear(swiglu(h[:, :inter], h[:, inter:]), w_d[i % b_d])

    row["bf16_chain"] = time_us(bf16_chain, max(b_gu, b_d), graph=True)
    w_gu.clear(), w_d.clear()  # room for the W4A4 weights
    # W4A4, static scales: x's from its range, down's input's from the reference product of a few rows
    q_gu, q_d = rotations(2 * inter * hidden // 2), rotations(hidden * inter // 2)
    gates, ups = random_packs(inter, hidden, q_gu, gen), random_packs(inter, hidden, q_gu, gen)
    packs_gu = [interleave_gate_up(g, u) for g, u in zip(gates, ups, strict=True)]
    packs_d = random_packs(hidden, inter, q_d, gen)
    sw_g, sw_u = (torch.rand(inter, generator=gen).cuda() * 4e-3 + 1e-3 for _ in range(2))
    sw_gu, sw_d = interleave_gate_up(sw_g, sw_u), torch.rand(hidden, generator=gen).cuda() * 4e-3 + 1e-3
    s_x = float(x.float().abs().amax()) / 7
    codes, sa = quantize_per_token(x, static_scale=s_x, backend="triton")
    probe = w4a4_matmul(codes[:64], sa[:64], packs_gu[0], sw_gu, None, backend="torch")
    s_d = float(gated_product(probe[:, 0::2], probe[:, 1::2]).float().abs().quantile(0.99)) / 7
    down_codes, down_scale = w4a4_swiglu_quantize(codes, sa, packs_gu[0], sw_gu, s_d, backend="triton")
    ref, ref_scale = w4a4_swiglu_quantize_reference(codes, sa, packs_gu[0], sw_gu, s_d)
    diff = (down_codes.int() - ref.int()).abs()
    row["check"] = {"max_code_diff": int(diff.max()), "moved_fraction": float(diff.bool().double().mean()),
                    "scales_equal": bool(torch.equal(down_scale, ref_scale))}  # fmt: skip
    row["check"]["ok"] = row["check"]["max_code_diff"] <= 1 and row["check"]["moved_fraction"] <= 1e-3
    row["check"]["ok"] &= row["check"]["scales_equal"]
    del ref, diff

    def gate_up_whole(i: int, cfg=None):
        q, s = quantize_per_token(x, static_scale=s_x, backend="triton")
        return w4a4_swiglu_quantize(q, s, packs_gu[i], sw_gu, s_d, backend="triton", config=cfg)

    row["w4a4_gate_up"] = time_us(gate_up_whole, q_gu, graph=True)
    if m <= 16:  # the sliced kernel with its plain epilogue (bf16 gate and up out), for where the epilogue costs
        cfg = pick_sliced_config(2 * inter, hidden, x.device)
        row["sliced_plain_gate_up_gemm"] = time_us(
            lambda i: w4a4_matmul(codes, sa, packs_gu[i], sw_gu, None, backend="triton", config=cfg), q_gu, graph=True
        )
    if sweep:
        row["gate_up_sweep"] = []
        for cfg in PREFILL_SWEEP if m > 16 else DECODE_SWEEP:
            try:
                t = time_us(lambda i, c=cfg: gate_up_whole(i, c), q_gu, graph=True)
                row["gate_up_sweep"].append({"config": repr(cfg), "time": t})
            except Exception as e:  # a tile the compiler rejects must not end the sweep
                row["gate_up_sweep"].append({"config": repr(cfg), "error": f"{type(e).__name__}: {str(e)[:300]}"})
    row["w4a4_down"] = time_us(
        lambda i: w4a4_matmul(down_codes, down_scale, packs_d[i], sw_d, None, backend="triton"), q_d, graph=True
    )

    def w4a4_chain(i: int):
        dq, ds = gate_up_whole(i % q_gu)
        return w4a4_matmul(dq, ds, packs_d[i % q_d], sw_d, None, backend="triton")

    row["w4a4_chain"] = time_us(w4a4_chain, max(q_gu, q_d), graph=True)

    def unfused_chain(i: int):  # deploy's path without the epilogue: two linears, the gated quantize, down
        q, s = quantize_per_token(x, static_scale=s_x, backend="triton")
        j = i % q_gu
        g = w4a4_matmul(q, s, gates[j], sw_g, None, backend="triton")
        u = w4a4_matmul(q, s, ups[j], sw_u, None, backend="triton")
        dq, ds = quantize_per_token(g, static_scale=s_d, up=u, backend="triton")
        return w4a4_matmul(dq, ds, packs_d[i % q_d], sw_d, None, backend="triton")

    row["w4a4_unfused_chain"] = time_us(unfused_chain, max(q_gu, q_d), graph=True)
    for part in ("gate_up", "down", "chain"):
        row[f"{part}_speedup"] = row[f"bf16_{part}"]["median_us"] / row[f"w4a4_{part}"]["median_us"]
    row["unfused_chain_speedup"] = row["bf16_chain"]["median_us"] / row["w4a4_unfused_chain"]["median_us"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--m", default="1,16,8192")
    parser.add_argument("--shapes", default="8b,70b")
    parser.add_argument("--sweep", action="store_true", help="also time the fused gate+up in other tiles / configs")
    args = parser.parse_args()
    report = start_report()
    if report is None:
        return 2
    rows = []
    print(
        f"{'model':>5} {'M':>6} | {'BF16 us: gate_up':>16} {'product':>8} {'down':>8} {'chain':>8} | "
        f"{'W4A4 us: gate_up':>16} {'down':>8} {'chain':>8} {'unfused':>8} | speed-ups: gate_up, down, chain"
    )
    for model in args.shapes.split(","):
        for m in [int(v) for v in args.m.split(",")]:
            try:
                r = mlp_case(model, m, args.sweep)
            except Exception:
                traceback.print_exc()
                r = {"model": model, "M": m, "error": traceback.format_exc()[-600:], "check": {"ok": False}}
            rows.append(r)
            if "chain_speedup" in r:
                t = {key: r[key]["median_us"] for key in r if key.startswith(("bf16_", "w4a4_"))}
                print(f"{model:>5} {m:>6} | {t['bf16_gate_up']:>16.1f} {t['bf16_product']:>8.1f} "
                      f"{t['bf16_down']:>8.1f} {t['bf16_chain']:>8.1f} | {t['w4a4_gate_up']:>16.1f} "
                      f"{t['w4a4_down']:>8.1f} "
                      f"{t['w4a4_chain']:>8.1f} {t['w4a4_unfused_chain']:>8.1f} | {r['gate_up_speedup']:.2f}x "
                      f"{r['down_speedup']:.2f}x {r['chain_speedup']:.2f}x (unfused {r['unfused_chain_speedup']:.2f}x) "
                      f"check {r['check']}", flush=True)  # fmt: skip
                if "sliced_plain_gate_up_gemm" in r:
                    print(f"{'':>15} sliced gate_up GEMM alone, bf16 out: "
                          f"{r['sliced_plain_gate_up_gemm']['median_us']:.1f} us", flush=True)  # fmt: skip
                for s in r.get("gate_up_sweep", []):
                    print(f"{'':>15} gate_up {s.get('time', {}).get('median_us', float('nan')):.1f} us "
                          f"{s['config']} {s.get('error', '')}", flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    report["rows"] = rows
    return finish_report(report, args.json, all(r["check"]["ok"] for r in rows))


if __name__ == "__main__":
    raise SystemExit(main())
