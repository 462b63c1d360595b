"""W4A4 GEMM and whole W4A4 linear vs BF16 cuBLAS, same run (issue 8, acceptance 1–3).

    python3 benchmarks/bench_w4a4_gemm.py [--json FILE] [--m 1,16,2048,8192] [--shapes 8b,70b] [--sweep]

For every layer shape (K, N) and token count M, in one run:
- correctness: integer sums exact (unit scales, float32 out) against float64, and the bf16 output with
  scales and bias within 1e-2 relative of the float64 reference; at the first shape also the
  all-non-negative K=14336 case that catches inexact FP8 accumulation;
- times (CUDA events, medians, rotated buffers): BF16 ``F.linear`` (cuBLAS), FP8 ``torch._scaled_mm``
  with tensor-wise scales (the exact-FP8 ceiling), our GEMM (``--codes int8``, the default and what
  deploy uses: INT8 MMA with exact int32 sums; ``--codes fp8``: e4m3 with promotion; the heuristic
  config, and with ``--sweep`` the best of a candidate list; at M = 1 the CUDA-core GEMV, against the
  tensor-core decode configs), and the whole linear: bf16 activations
  → per-token quantize → GEMM → bf16. (The 2026-11-23 table in docs/RESULTS.md used fp8 codes.)
"""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import asdict, replace
from dataclasses import fields as dataclass_fields

import torch
import torch.nn.functional as F
from timing import finish_report, rotations, start_report, time_us

from fptquant.kernels import quantize_per_token
from fptquant.kernels.quantize import gated_product
from fptquant.kernels.triton_w4a4_dp4a import Dp4aConfig
from fptquant.kernels.triton_w4a4_gemv import GemvConfig, quantize_gemv
from fptquant.kernels.triton_w4a4_matmul import GemmConfig, matmul
from fptquant.kernels.triton_w4a4_sliced import SlicedConfig
from fptquant.kernels.w4a4_matmul import default_config, w4a4_matmul, w4a4_matmul_reference
from fptquant.math.packing import pack_int4

SHAPES = {
    "8b": {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)},
    "70b": {"qkv": (8192, 10240), "o": (8192, 8192), "gate_up": (8192, 57344), "down": (28672, 8192)},
}
PREFILL_SWEEP = [
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True),
    GemmConfig(128, 256, 128, num_warps=8, num_stages=3, unpack_first=True),
    # persistent, TMA-fed (one byte a code, unpacked first)
    GemmConfig(128, 256, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True),
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True),
    # the same in Gluon, warp-specialized (INT8 on Hopper; FP8 codes run the Triton TMA kernel)
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    GemmConfig(256, 128, 64, num_warps=8, num_stages=5, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 256, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 128, 128, num_warps=8, num_stages=5, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 128, 128, num_warps=4, num_stages=5, unpack_first=True, tma=True, gluon=True),
    GemmConfig(128, 128, 256, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True, group_m=16),
    GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True, group_m=4),
]
DECODE_SWEEP = [
    GemmConfig(16, 64, 512, swap=True, num_warps=4, num_stages=3),
    GemmConfig(16, 64, 512, swap=True, num_warps=4, num_stages=5),
    GemmConfig(16, 128, 512, swap=True, num_warps=8, num_stages=4),
    GemmConfig(16, 128, 256, swap=True, num_warps=4, num_stages=6),
    GemmConfig(16, 256, 256, swap=True, num_warps=8, num_stages=4),
    GemmConfig(16, 64, 256, 4, swap=True, num_warps=4, num_stages=4),
    GemmConfig(16, 64, 512, 2, swap=True, num_warps=4, num_stages=4),
    GemmConfig(16, 128, 512, 2, swap=True, num_warps=8, num_stages=4),
    GemmConfig(16, 32, 256, num_warps=4, num_stages=4),
    GemmConfig(16, 64, 1024, swap=True, num_warps=4, num_stages=3),
    # even and odd k as two dots: the 4x smaller activation tile is shuffled instead of the weights
    GemmConfig(16, 32, 256, num_warps=4, num_stages=4, split_nibbles=True),
    GemmConfig(16, 64, 256, num_warps=4, num_stages=4, split_nibbles=True),
    GemmConfig(16, 64, 512, swap=True, num_warps=4, num_stages=3, split_nibbles=True),
    GemmConfig(16, 128, 512, swap=True, num_warps=8, num_stages=4, split_nibbles=True),
    GemmConfig(16, 64, 512, 2, swap=True, num_warps=4, num_stages=4, split_nibbles=True),
]


GEMV_SWEEP = [  # one token: the CUDA-core GEMV (what w4a4_matmul picks at M = 1)
    GemvConfig(16, 256, 1, 4, 4),
    GemvConfig(16, 256, 2, 4, 4),
    GemvConfig(16, 256, 1, 4, 6),
    GemvConfig(16, 512, 1, 4, 3),
    GemvConfig(32, 256, 1, 4, 4),
    GemvConfig(32, 256, 1, 8, 4),
    GemvConfig(8, 256, 1, 2, 4),
    GemvConfig(16, 128, 1, 2, 8),
]
DP4A_SWEEP = [  # up to 16 tokens: the CUDA cores' 4-way integer dot (w4a4_matmul's pick for 2-8)
    Dp4aConfig(32, 16, 1, 4, 4),
    Dp4aConfig(32, 16, 2, 4, 4),
    Dp4aConfig(16, 16, 1, 4, 4),
    Dp4aConfig(64, 16, 1, 8, 4),
    Dp4aConfig(32, 32, 1, 8, 3),
    Dp4aConfig(16, 32, 1, 4, 6),
    Dp4aConfig(32, 8, 1, 2, 6),
    Dp4aConfig(64, 8, 1, 4, 4),
    # one token: the accumulators are BN x BKW int32, so wider tiles fit
    Dp4aConfig(32, 32, 1, 4, 4),
    Dp4aConfig(64, 32, 1, 8, 4),
    Dp4aConfig(16, 64, 1, 4, 4),
    Dp4aConfig(32, 64, 1, 8, 3),
    Dp4aConfig(128, 16, 1, 8, 4),
    Dp4aConfig(16, 128, 1, 4, 3),
    Dp4aConfig(16, 128, 1, 8, 3),
    # sign-extended nibbles (dp4a.s32.s32, no activation sums)
    Dp4aConfig(16, 64, 1, 4, 4, nibbles="signed"),
    Dp4aConfig(16, 32, 1, 4, 6, nibbles="signed"),
    Dp4aConfig(32, 32, 1, 8, 3, nibbles="signed"),
    Dp4aConfig(32, 16, 1, 4, 4, nibbles="signed"),
    Dp4aConfig(16, 128, 1, 4, 3, nibbles="signed"),
    Dp4aConfig(32, 64, 1, 8, 3, nibbles="signed"),
    # each nibble as 16·v in its byte's high half (three instructions a word, no activation sums)
    Dp4aConfig(16, 64, 1, 4, 4, nibbles="x16"),
    Dp4aConfig(16, 32, 1, 4, 6, nibbles="x16"),
    Dp4aConfig(32, 32, 1, 4, 4, nibbles="x16"),
    Dp4aConfig(32, 32, 1, 8, 3, nibbles="x16"),
    Dp4aConfig(16, 128, 1, 4, 3, nibbles="x16"),
    Dp4aConfig(32, 64, 1, 8, 3, nibbles="x16"),
    Dp4aConfig(16, 64, 1, 2, 4, nibbles="x16"),
    Dp4aConfig(8, 128, 1, 2, 4, nibbles="x16"),
]
SLICED_SWEEP = [  # 2-16 tokens on the tensor cores, K sliced across warps (w4a4_matmul's pick there)
    SlicedConfig(32, 256, 2, 1, 4),
    SlicedConfig(32, 256, 2, 1, 5),
    SlicedConfig(32, 256, 2, 1, 6),
    SlicedConfig(32, 512, 2, 1, 3),
    SlicedConfig(32, 512, 2, 1, 4),
    SlicedConfig(32, 128, 1, 1, 6),
    SlicedConfig(32, 256, 1, 1, 4),
    SlicedConfig(32, 256, 1, 1, 3),
    SlicedConfig(32, 256, 1, 1, 5),
    SlicedConfig(32, 512, 1, 1, 3),
    SlicedConfig(32, 512, 4, 1, 4),
    SlicedConfig(32, 512, 4, 1, 5),
    SlicedConfig(32, 512, 4, 1, 6),
    SlicedConfig(32, 1024, 4, 1, 3),
    SlicedConfig(32, 1024, 4, 1, 4),
    SlicedConfig(32, 1024, 8, 1, 3),
    SlicedConfig(16, 256, 2, 1, 4),
    SlicedConfig(16, 512, 4, 1, 4),
    SlicedConfig(16, 256, 1, 1, 6),
    SlicedConfig(64, 256, 2, 1, 4),
    SlicedConfig(64, 256, 2, 1, 6),
    SlicedConfig(64, 512, 4, 1, 3),
    SlicedConfig(64, 256, 4, 1, 4),
    SlicedConfig(32, 512, 4, 2, 4),
    SlicedConfig(128, 512, 4, 1, 3),
    # long K on few programs (8B down: 128 programs of 32 channels)
    SlicedConfig(32, 2048, 8, 1, 3),
    SlicedConfig(32, 1024, 8, 1, 4),
    SlicedConfig(32, 2048, 4, 1, 3),
    SlicedConfig(32, 1024, 4, 1, 5),
    SlicedConfig(32, 1024, 4, 1, 6),
    SlicedConfig(32, 1024, 2, 1, 4),
    SlicedConfig(16, 1024, 4, 1, 4),
    SlicedConfig(16, 1024, 2, 1, 4),
]
CONFIG_TYPES = {"gemm": GemmConfig, "gemv": GemvConfig, "dp4a": Dp4aConfig, "sliced": SlicedConfig}
FEW_TOKEN = ("dp4a", "sliced")  # the decode kernels launched as programmatic dependents of the quantize


def changed(result: dict) -> dict:
    """The fields of a timed config that differ from its class's defaults (what the printout needs)."""
    default = asdict(CONFIG_TYPES[result["kind"]]())
    return {key: v for key, v in result["config"].items() if default.get(key) != v}


def variants(m: int, k: int, n: int) -> list[dict]:
    """Where the time goes: the same tile with the weights one byte a code (no unpacking), with and
    without FP8 promotion, and the INT8 route, against the production path."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8).cuda()
    x = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8).cuda()
    sa, sw = torch.ones(m, 1, device="cuda"), torch.ones(n, device="cuda")
    packed, w8, x8 = pack_int4(w), w.to(torch.float8_e4m3fn), x.to(torch.float8_e4m3fn)
    base = GemmConfig(256, 128, 128, num_warps=8, num_stages=3)
    cases = {
        "fp8 weights one byte, no promotion (inexact)": (x8, w8, replace(base, promote=0)),
        "fp8 weights one byte, promotion every 128": (x8, w8, base),
        "fp8 packed int4, no promotion (inexact)": (x8, packed, replace(base, promote=0)),
        "fp8 packed int4, promotion every 128 (production)": (x8, packed, base),
        "fp8 one byte, 128x128x256 tile, promotion every 256": (x8, w8, GemmConfig(128, 128, 256, num_stages=3)),
        "fp8 one byte, 128x256x128 tile, promotion every 128": (x8, w8, GemmConfig(128, 256, 128, num_stages=3)),
        "fp8 unpack pass + one-byte GEMM (promotion every 128)": (x8, packed, replace(base, unpack_first=True)),
        "fp8 packed int4, swap (weights as the A operand)": (x8, packed, replace(base, swap=True)),
        "int8 weights one byte": (x, w, base),
        "int8 packed int4": (x, packed, base),
        "int8 unpack pass + one-byte GEMM": (x, packed, replace(base, unpack_first=True)),
    }
    exact = (x.double() @ w.double().T).float()
    out = []
    for name, (a, b, cfg) in cases.items():
        try:
            res = matmul(a, sa, b, sw, None, torch.float32, cfg)
            t = time_us(lambda i, a=a, b=b, c=cfg: matmul(a, sa, b, sw, None, torch.bfloat16, c), 1)
            out.append({"variant": name, "time": t, "exact": bool(torch.equal(res, exact))})
        except Exception as e:
            out.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(f"  {name:<52} {out[-1].get('time', {}).get('median_us', float('nan')):>9.1f} us "
              f"exact={out[-1].get('exact')}", flush=True)  # fmt: skip
    return out


def random_problem(m: int, n: int, k: int, gen: torch.Generator):
    a = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    sa = torch.rand(m, 1, generator=gen) * 0.1 + 0.01
    sw = torch.rand(n, generator=gen) * 0.1 + 0.01
    bias = torch.randn(n, generator=gen)
    return [t.cuda() for t in (a, w, sa, sw, bias)]


def check(m: int, n: int, k: int, cfg, non_negative: bool = False) -> dict:
    gen = torch.Generator().manual_seed(m * 7 + n + k)
    a, w, sa, sw, bias = random_problem(m, n, k, gen)
    if non_negative:
        a, w = a.abs().clamp(max=7), w.abs().clamp(max=7)
    # the dp4a and sliced kernels take int8 codes only: their "fp8" check repeats the int8 one
    int8_only = isinstance(cfg, (Dp4aConfig, SlicedConfig))
    packed, codes = pack_int4(w), a if int8_only else a.to(torch.float8_e4m3fn)
    ones_m, ones_n = torch.ones(m, 1, device="cuda"), torch.ones(n, device="cuda")
    acc = w4a4_matmul(codes, ones_m, packed, ones_n, None, torch.float32, backend="triton", config=cfg)
    exact = (a.double() @ w.double().T).float()
    out = w4a4_matmul(codes, sa, packed, sw, bias, torch.bfloat16, backend="triton", config=cfg).float()
    ref = w4a4_matmul_reference(codes, sa, packed, sw, bias, torch.float64)
    rel = ((out.double() - ref).abs() / ref.abs().clamp(min=1e-3)).max().item()
    int_codes = w4a4_matmul(a, ones_m, packed, ones_n, None, torch.float32, backend="triton", config=cfg)
    return {
        "integer_exact_fp8": bool(torch.equal(acc, exact)),
        "integer_exact_int8": bool(torch.equal(int_codes, exact)),
        "bf16_max_rel_err": rel,
        "ok": bool(torch.equal(acc, exact) and torch.equal(int_codes, exact) and rel <= 1e-2),
    }


CODES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def kind_of(cfg) -> str:
    return next(kind for kind, cls in CONFIG_TYPES.items() if isinstance(cfg, cls))


def measure(
    m: int,
    k: int,
    n: int,
    sweep: bool,
    codes_dtype: torch.dtype = torch.int8,
    kinds=tuple(CONFIG_TYPES),
    gated: bool = False,
) -> dict:
    gen = torch.Generator().manual_seed(0)
    bufs = rotations(n * k * 2)
    w_bf16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(bufs)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    # CUDA-graph replay at every M: eager prefill calls (one a sample at these sizes) counted the host's launch
    # of the first kernel (TMA descriptors are encoded on the host) in GPU time; µs-scale decode calls need it anyway
    graph = True
    bf16 = time_us(lambda i: F.linear(x, w_bf16[i]), bufs, graph=graph)
    fp8_bufs = rotations(n * k)
    w8 = [torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn) for _ in range(fp8_bufs)]
    x8 = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    row = {"M": m, "K": k, "N": n, "codes": str(codes_dtype).replace("torch.", ""), "bf16": bf16}
    if m >= 16:
        row["fp8_scaled_mm"] = time_us(
            lambda i: torch._scaled_mm(x8, w8[i].T, one, one, out_dtype=torch.bfloat16), fp8_bufs, graph=graph
        )
    q_bufs = rotations(n * k // 2)
    packs = [pack_int4(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)).cuda() for _ in range(q_bufs)]
    sw = torch.rand(n, device="cuda") * 0.01
    codes, sa = quantize_per_token(x, codes_dtype=codes_dtype, backend="triton")
    heuristic = default_config(codes, packs[0])  # what w4a4_matmul picks with no config given
    candidates = [heuristic] + ((DECODE_SWEEP if m <= 64 else PREFILL_SWEEP) if sweep and "gemm" in kinds else [])
    if m <= 64:
        block_m = max(16, min(64, 1 << (m - 1).bit_length()))
        candidates = [replace(c, block_m=block_m) if isinstance(c, GemmConfig) else c for c in candidates]
    if m == 1 and sweep and "gemv" in kinds:
        candidates += GEMV_SWEEP
    if m <= 16 and sweep and codes_dtype == torch.int8:
        candidates += (DP4A_SWEEP if "dp4a" in kinds else []) + (SLICED_SWEEP if "sliced" in kinds and m > 1 else [])
    results = []
    for cfg in candidates:
        try:
            t = time_us(
                lambda i, c=cfg: w4a4_matmul(codes, sa, packs[i], sw, None, config=c, backend="triton"),
                q_bufs,
                graph=graph,
            )
            results.append({"kind": kind_of(cfg), "config": asdict(cfg), "time": t})
        except Exception as e:  # a config the compiler rejects must not end the sweep
            results.append(
                {"kind": kind_of(cfg), "config": asdict(cfg), "error": f"{type(e).__name__}: {str(e)[:300]}"}
            )
    timed = [r for r in results if "time" in r]
    best = min(timed, key=lambda r: r["time"]["median_us"]) if timed else None
    row.update(heuristic=results[0], best=best, sweep=results if sweep else None)
    if best:
        cfg = CONFIG_TYPES[best["kind"]](**best["config"])
        try:  # a failing check is reported in the row; the sweep's timings stay
            row["check"] = check(min(m, 2048), n, k, cfg)
        except Exception as e:
            row["check"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}

        def whole(i: int, c=cfg):
            q, s = quantize_per_token(x, codes_dtype=codes_dtype, backend="triton")
            return w4a4_matmul(q, s, packs[i], sw, None, config=c, backend="triton")

        row["whole_linear"] = time_us(whole, q_bufs, graph=graph)
        row["quantize"] = time_us(lambda i: quantize_per_token(x, codes_dtype=codes_dtype), 1, graph=graph)
        base = bf16["median_us"]
        row["gemm_speedup"] = base / best["time"]["median_us"]
        row["whole_speedup"] = base / row["whole_linear"]["median_us"]
        # the heuristic's and the sweep's four fastest few-token configs, as whole linears in each launch mode
        # of PDL_MODES (the GEMM-only order need not be the whole linear's)
        fastest = sorted(timed, key=lambda r: r["time"]["median_us"])[:4]
        few = [CONFIG_TYPES[r["kind"]](**r["config"]) for r in [results[0], *fastest] if r["kind"] in FEW_TOKEN]
        if few:
            row["pdl"] = pdl_sweep(whole, q_bufs, list(dict.fromkeys(few)))
        if m == 1:  # the GEMV that quantizes the token itself: the whole linear in one launch
            gemv_cfg = cfg if isinstance(cfg, GemvConfig) else None
            row["fused_whole_linear"] = time_us(
                lambda i: quantize_gemv(x, packs[i], sw, None, torch.bfloat16, config=gemv_cfg), q_bufs, graph=graph
            )
            row["fused_whole_speedup"] = base / row["fused_whole_linear"]["median_us"]
        if gated and codes_dtype == torch.int8:
            row["gated"] = gated_chain(m, k, w_bf16, bufs, packs, q_bufs, sw, cfg, base)
        if "fp8_scaled_mm" in row:
            row["fp8_ceiling_speedup"] = base / row["fp8_scaled_mm"]["median_us"]
    if m >= 2048:  # prefill through cuBLAS: e4m3 codes × one-byte e4m3 weights, per-token × per-channel scales
        row.update(cublas_fp8_route(x, w8, fp8_bufs, sw, k, n, base=bf16["median_us"]))
    return row


PDL_MODES = {  # how a decode config's GEMM takes part in programmatic dependent launch (kernels/triton_pdl.py)
    "on": {"pdl": True},  # launched as the quantize's dependent, releases the next quantize after its K loop
    "off": {"pdl": False},  # launched when the quantize has finished, releases nothing
    "start": {"pdl": True, "release": "start"},  # releases the next quantize as soon as it starts
    "none": {"pdl": True, "release": "none"},  # launched early, releases nothing
    # "on", with the first steps of weights read before the wait for the codes (sliced configs only)
    "preload1": {"pdl": True, "preload": 1},
    "preload2": {"pdl": True, "preload": 2},
}


def pdl_sweep(whole, bufs: int, configs: list) -> list[dict]:
    """The decode whole linear of each config in each of ``PDL_MODES``, same run (``pdl`` and ``release`` of the
    config itself, and ``preload`` of a sliced one, are overridden; the quantize is always launched as a
    dependent, where the device can)."""
    out = []
    for cfg in configs:
        try:
            names = {f.name for f in dataclass_fields(cfg)}
            variants = {mode: replace(cfg, **f) for mode, f in PDL_MODES.items() if set(f) <= names}
            times = {mode: time_us(lambda i, c=v: whole(i, c), bufs, graph=True) for mode, v in variants.items()}
            out.append({"kind": kind_of(cfg), "config": asdict(cfg), **times})
        except Exception as e:  # a driver without programmatic launch in graphs must not end the run
            out.append({"kind": kind_of(cfg), "config": asdict(cfg), "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return out


def bf16_swiglu():
    """The BF16 baseline's producer: ``silu(g) · u`` as one fused kernel (``torch.compile``), as a tuned BF16
    stack runs it; eager torch (two kernels) where compiling fails."""

    def product(g, u):
        return F.silu(g) * u

    try:
        fused = torch.compile(product, dynamic=False)
        fused(*(torch.ones(8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2)))
        return fused, "torch.compile"
    except Exception as e:  # no compiler on this machine: say so in the report
        print(f"torch.compile of the BF16 SwiGLU failed ({type(e).__name__}); timing eager", flush=True)
        return product, "eager"


def gated_chain(m: int, k: int, w_bf16, bufs: int, packs, q_bufs: int, sw, cfg, base_gemm: float) -> dict:
    """down_proj with its producer, both ways: BF16 ``silu(g)·u`` then cuBLAS, against W4A4 with the product
    formed inside the quantize kernel (``quantize_per_token(g, up=u)``, what deploy's MLP runs) then our GEMM."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    g = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 2
    u = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    swiglu, how = bf16_swiglu()
    out = {"bf16_producer_kind": how}
    out["bf16_producer"] = time_us(lambda i: swiglu(g, u), 1, graph=True)
    out["bf16_chain"] = time_us(lambda i: F.linear(swiglu(g, u), w_bf16[i]), bufs, graph=True)
    out["gated_quantize"] = time_us(lambda i: quantize_per_token(g, up=u, backend="triton"), 1, graph=True)

    def w4a4(i: int):
        q, s = quantize_per_token(g, up=u, backend="triton")
        return w4a4_matmul(q, s, packs[i], sw, None, config=cfg, backend="triton")

    out["w4a4_chain"] = time_us(w4a4, q_bufs, graph=True)
    out["chain_speedup"] = out["bf16_chain"]["median_us"] / out["w4a4_chain"]["median_us"]
    # the W4A4 chain's time beyond the BF16 producer, against the BF16 GEMM: down_proj's own cost once the
    # quantize rides on a producer both stacks run anyway (derived from separately timed parts)
    beyond = out["w4a4_chain"]["median_us"] - out["bf16_producer"]["median_us"]
    out["down_beyond_producer_speedup"] = base_gemm / beyond if beyond > 0 else float("nan")
    ref = quantize_per_token(gated_product(g, u), backend="triton")
    q, s = quantize_per_token(g, up=u, backend="triton")
    diff = (q.int() - ref[0].int()).abs()
    out["gated_check"] = {"max_code_diff": int(diff.max()), "moved_fraction": float(diff.bool().double().mean())}
    out["gated_check"]["ok"] = out["gated_check"]["max_code_diff"] <= 1 and out["gated_check"]["moved_fraction"] <= 1e-3
    return out


def cublas_fp8_route(x, w8, bufs: int, sw, k: int, n: int, base: float) -> dict:
    """The whole linear as quantize (e4m3 codes) + ``torch._scaled_mm`` with row-wise scales and bf16 out, if
    this torch has it; with the weights kept one byte a code (unpacked once at load: 1 byte/param more).
    Usable for W4A4 only if cuBLAS sums exactly: checked on the worst case, all codes -8 (sums 64·K)."""
    try:
        ones_m, ones_n = torch.ones(x.shape[0], 1, device="cuda"), torch.ones(1, n, device="cuda")
        worst = torch.full((x.shape[0], k), -8.0, device="cuda").to(torch.float8_e4m3fn)
        worst_w = torch.full((n, k), -8.0, device="cuda").to(torch.float8_e4m3fn)
        sums = torch._scaled_mm(worst, worst_w.T, ones_m, ones_n, out_dtype=torch.float32)
        exact = bool((sums == 64.0 * k).all())
        del worst, worst_w, sums
        sw_row = sw[None, :].float()

        def whole(i: int):
            q, s = quantize_per_token(x, codes_dtype=torch.float8_e4m3fn, backend="triton")
            return torch._scaled_mm(q, w8[i].T, s.float(), sw_row, out_dtype=torch.bfloat16)

        t = time_us(whole, bufs, graph=True)
        return {"cublas_fp8_whole": t, "cublas_fp8_whole_speedup": base / t["median_us"], "cublas_fp8_exact": exact}
    except Exception as e:  # an older torch without row-wise scales: report, do not fail the run
        return {"cublas_fp8_error": f"{type(e).__name__}: {str(e)[:300]}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--m", default="1,16,2048,8192")
    parser.add_argument("--shapes", default="8b")
    parser.add_argument("--layers", default=None, help="comma list of layer names (default all)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--codes", choices=tuple(CODES), default="int8",
                        help="activation codes: int8 (exact int32 MMA; deploy's) or fp8 (promoted)")  # fmt: skip
    parser.add_argument("--sweep-kinds", default=",".join(CONFIG_TYPES),
                        help=f"with --sweep, the kernels swept (of {','.join(CONFIG_TYPES)})")  # fmt: skip
    parser.add_argument("--variants", action="store_true", help="gate_up M=8192: where the time goes")
    parser.add_argument("--gated", action="store_true",
                        help="down: also with its SwiGLU producer, BF16 and W4A4 (product in quantize)")  # fmt: skip
    args = parser.parse_args()
    kinds = tuple(args.sweep_kinds.split(","))
    if unknown := set(kinds) - set(CONFIG_TYPES):
        parser.error(f"unknown --sweep-kinds {sorted(unknown)}; choose from {', '.join(CONFIG_TYPES)}")
    report = start_report()
    if report is None:
        return 2
    long_k = check(256, 256, 14336, GemmConfig(), non_negative=True)
    print(f"all-non-negative K=14336: {long_k}")
    report["non_negative_long_k"] = long_k
    if args.variants:
        print("variants, 8B gate_up, M=8192 (256x128x128 tile unless named):")
        report["variants"] = variants(8192, *SHAPES["8b"]["gate_up"])
    rows = []
    print(
        f"{'model':>5} {'layer':>8} {'M':>6} {'bf16 us':>9} {'w4a4 us':>9} {'gemm x':>7} {'whole x':>8} {'fp8 x':>6} ok"
    )
    for model in args.shapes.split(","):
        for layer, (k, n) in SHAPES[model].items():
            if args.layers and layer not in args.layers.split(","):
                continue
            for m in [int(v) for v in args.m.split(",")]:
                try:
                    r = measure(m, k, n, args.sweep, CODES[args.codes], kinds, args.gated and layer == "down")
                except Exception:
                    traceback.print_exc()
                    r = {"M": m, "K": k, "N": n, "error": traceback.format_exc()[-600:]}
                r.update(model=model, layer=layer)
                rows.append(r)
                if "gemm_speedup" in r:
                    print(f"{model:>5} {layer:>8} {m:>6} {r['bf16']['median_us']:>9.1f} "
                          f"{r['best']['time']['median_us']:>9.1f} {r['gemm_speedup']:>6.2f}x "
                          f"{r['whole_speedup']:>7.2f}x {r.get('fp8_ceiling_speedup', float('nan')):>5.2f}x "
                          f"{r['check']['ok']}  quant {r['quantize']['median_us']:.1f} us, "
                          f"fused whole {r.get('fused_whole_speedup', float('nan')):.2f}x, "
                          f"cuBLAS-fp8 whole {r.get('cublas_fp8_whole_speedup', float('nan')):.2f}x "
                          f"(exact {r.get('cublas_fp8_exact', '-')}), "
                          f"best {r['best']['kind']} {changed(r['best'])}", flush=True)  # fmt: skip
                for p in r.get("pdl", []):
                    modes = [mode for mode in PDL_MODES if mode in p]
                    times = " / ".join(f"{p[mode]['median_us']:.1f}" for mode in modes) if modes else p["error"]
                    print(f"{'':>15} whole, programmatic launch {' / '.join(modes)}: {times} µs, {p['kind']} "
                          f"{changed(p)}", flush=True)  # fmt: skip
                if "gated" in r:
                    gd = r["gated"]
                    print(f"{'':>15} with the SwiGLU producer: BF16 ({gd['bf16_producer_kind']}) "
                          f"{gd['bf16_producer']['median_us']:.1f} + GEMM = {gd['bf16_chain']['median_us']:.1f} us, "
                          f"W4A4 gated quantize {gd['gated_quantize']['median_us']:.1f} + GEMM = "
                          f"{gd['w4a4_chain']['median_us']:.1f} us: chain {gd['chain_speedup']:.2f}x, down beyond "
                          f"the producer {gd['down_beyond_producer_speedup']:.2f}x, check {gd['gated_check']}",
                          flush=True)  # fmt: skip
                torch.cuda.empty_cache()
    report["rows"] = rows
    ok = long_k["ok"] and all(r.get("check", {}).get("ok") for r in rows)
    return finish_report(report, args.json, ok and all(r["gated"]["gated_check"]["ok"] for r in rows if "gated" in r))


if __name__ == "__main__":
    sys.exit(main())
