"""Where the 16-token GEMM of LLaMA-3-8B down (K 14336, N 4096) loses its time (issue 8, acceptance 3).

    python3 benchmarks/probe_sliced_down.py [--m 16] [--shape 14336,4096] [--grid layouts|occupancy] [--json FILE]

The library's sliced kernel streams the packed weights at about 2.1 TB/s there, against 2.5 TB/s for the one-token
dp4a kernel on the same weights. This probe times the GEMM alone (graph replay, rotated weights, no programmatic
launch) in variants of one copy of that kernel that each remove one suspect:

- ``act``: ``int8`` (the library's codes), ``packed`` (two codes a byte, unpacked like the weights as 16·a: half
  the activation bytes from L2 and no even/odd split), ``once`` (the tile of the first step reused: no activation
  traffic at all; wrong sums, timed only);
- ``wlayout``: ``rows`` (the library's ``(N, K/2)``) or ``tiles`` (each program's step tile contiguous);
- ``dots``: 1, or 0 (loads only, xor-folded: the memory system's rate with this load pattern).

Each variant whose sums are meant to be right is checked against the float64 reference first.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch
import triton
import triton.language as tl
from timing import finish_report, gbps, rotations, start_report, time_us
from triton.tools.tensor_descriptor import TensorDescriptor

from fptquant.kernels.backend import interpreting
from fptquant.kernels.triton_w4a4_sliced import SlicedConfig, _high_nibbles_x16, _low_nibbles_x16, sliced_matmul
from fptquant.math.packing import pack_int4

ACTS = {"int8": 0, "packed": 1, "once": 2}
LAYOUTS = {"rows": 0, "tiles": 1, "tma": 2, "tma_t": 3}


@triton.jit
def _probe_kernel(
    a_ptr, w_ptr, sa_ptr, sw_ptr, out_ptr, M, N, K, stride_am, stride_wn, stride_om,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SLICES: tl.constexpr, STAGES: tl.constexpr,
    ACT: tl.constexpr, WLAYOUT: tl.constexpr, DOTS: tl.constexpr, INTERPRET: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    KS: tl.constexpr = BK // SLICES
    pid_n = tl.program_id(0)
    k_per_split = K // SPLIT
    k_start = tl.program_id(1) * k_per_split
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    s = tl.arange(0, SLICES)[:, None, None]
    byte = s * (KS // 2) + tl.arange(0, KS // 2)[None, :, None]  # (slice, byte, 1)
    if WLAYOUT == 0:
        w_ptrs = w_ptr + (rn % N)[None, None, :].to(tl.int64) * stride_wn + byte
    elif WLAYOUT == 1:  # (N/BN, K/BK, BN, BK/2): one program's step is BN·BK/2 contiguous bytes
        w_ptrs = w_ptr + pid_n.to(tl.int64) * K // 2 * BN + tl.arange(0, BN)[None, None, :] * (BK // 2) + byte
    if ACT == 1:
        pair = s * (KS // 2) + tl.arange(0, KS // 2)[None, None, :]
        a_ptrs = a_ptr + (rm % M)[None, :, None].to(tl.int64) * stride_am + pair
    else:
        code = s * KS + tl.arange(0, KS)[None, None, :]
        a_ptrs = a_ptr + (rm % M)[None, :, None].to(tl.int64) * stride_am + code
    acc = tl.zeros((SLICES, BM, BN), dtype=tl.int32)
    fold_w = tl.zeros((SLICES, KS // 2, BN), dtype=tl.uint8)  # loads only: xor-folded, summed once at the end
    fold_a = tl.zeros((SLICES, BM, KS), dtype=tl.int8)
    fold_pa = tl.zeros((SLICES, BM, KS // 2), dtype=tl.uint8)
    if ACT == 2:
        a0 = tl.load(a_ptrs)
    for k in tl.range(k_start, k_start + k_per_split, BK, num_stages=STAGES):
        if WLAYOUT == 0:
            wp = tl.load(w_ptrs + k // 2)
        elif WLAYOUT == 1:
            wp = tl.load(w_ptrs + (k // BK) * BN * (BK // 2))
        elif WLAYOUT == 2:  # a TMA copy of the (BN, BK/2) tile of the (N, K/2) weights
            wt = w_ptr.load([pid_n * BN, k // 2])
            wp = tl.permute(tl.reshape(wt, (BN, SLICES, KS // 2)), (1, 2, 0))
        else:  # a TMA copy of the (BK/2, BN) tile of the transposed (K/2, N) weights: slices split its rows
            wp = tl.reshape(w_ptr.load([k // 2, pid_n * BN]), (SLICES, KS // 2, BN))
        if ACT == 1:
            ap = tl.load(a_ptrs + k // 2)
            if DOTS:
                lo, hi = _low_nibbles_x16(wp, INTERPRET), _high_nibbles_x16(wp, INTERPRET)
                acc = tl.dot(_low_nibbles_x16(ap, INTERPRET), lo, acc, out_dtype=tl.int32)
                acc = tl.dot(_high_nibbles_x16(ap, INTERPRET), hi, acc, out_dtype=tl.int32)
            else:
                fold_w = fold_w ^ wp
                fold_pa = fold_pa ^ ap
        else:
            a = a0 if ACT == 2 else tl.load(a_ptrs + k)
            if DOTS:
                a_even, a_odd = tl.split(tl.reshape(a, (SLICES, BM, KS // 2, 2)))
                acc = tl.dot(a_even, _low_nibbles_x16(wp, INTERPRET), acc, out_dtype=tl.int32)
                acc = tl.dot(a_odd, _high_nibbles_x16(wp, INTERPRET), acc, out_dtype=tl.int32)
            else:
                fold_w = fold_w ^ wp
                fold_a = fold_a ^ a
    shift: tl.constexpr = 8 if ACT == 1 else 4
    total = tl.sum(acc, axis=0) >> shift
    if not DOTS:
        total += tl.sum(tl.sum(fold_w.to(tl.int32), axis=1), axis=0)[None, :]
        total += tl.sum(tl.sum(fold_a.to(tl.int32), axis=2), axis=0)[:, None]
        total += tl.sum(tl.sum(fold_pa.to(tl.int32), axis=2), axis=0)[:, None]
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    out = total.to(tl.float32) * sa[:, None] * sw[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    if SPLIT > 1:
        tl.atomic_add(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=mask, sem="relaxed")
    else:
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=mask)


def tile_layout(packed: torch.Tensor, bn: int, bk: int) -> torch.Tensor:
    n, half = packed.shape
    return packed.reshape(n // bn, bn, half // (bk // 2), bk // 2).permute(0, 2, 1, 3).contiguous()


def weight_operand(packed: torch.Tensor, wlayout: str, bn: int, bk: int):
    """The GEMM's weight argument in ``wlayout`` (``tma_t`` takes the weights transposed, ``(K/2, N)``)."""
    if wlayout == "tiles":
        return tile_layout(packed, bn, bk)
    if wlayout == "tma":
        return TensorDescriptor.from_tensor(packed, [bn, bk // 2])
    if wlayout == "tma_t":
        return TensorDescriptor.from_tensor(packed.T.contiguous(), [bk // 2, bn])
    return packed


def probe(a_in, w_in, sa, sw, n, k, bn, bk, slices, stages, act, wlayout, dots, split=1) -> torch.Tensor:
    m = sa.shape[0]
    out = (torch.zeros if split > 1 else torch.empty)(m, n, dtype=torch.float32, device=sa.device)
    _probe_kernel[(n // bn, split)](
        a_in, w_in, sa, sw, out, m, n, k, a_in.stride(0), k // 2,
        out.stride(0), BM=16, BN=bn, BK=bk, SLICES=slices, STAGES=stages, ACT=ACTS[act], WLAYOUT=LAYOUTS[wlayout],
        DOTS=dots, INTERPRET=interpreting(), SPLIT=split, num_warps=slices,
    )  # fmt: skip
    return out


# (block_n, (block_k, slices, stages), activations, weight layout, dots, split-K)
LAYOUT_GRID = [(32, (1024, 4, 5), act, lay, dots, 1) for act in ACTS for lay in LAYOUTS for dots in (1, 0)]
LAYOUT_GRID += [(32, tile, act, "rows", 1, 1) for tile in ((1024, 4, 3), (2048, 4, 3), (512, 2, 4))
                for act in ("int8", "packed")]  # fmt: skip
LAYOUT_GRID += [(64, tile, act, lay, 1, 1) for tile in ((1024, 4, 3), (1024, 8, 3)) for act in ("int8", "packed")
                for lay in LAYOUTS]  # fmt: skip
# The layout grid (session 22, call 2) found the weight stream itself at 2.1-2.2 TB/s with one 32-channel program an
# SM: the tiled layout, activations read once and loads alone all within 0.6 µs of it. The int8 activation tile
# (16 KB a step) fills the shared memory that more programs an SM would need; packed activations halve it. This
# grid asks whether the extra programs pay.
OCCUPANCY_GRID = [(32, (1024, 4, 5), act, "rows", 1, 1) for act in ("int8", "packed")]
OCCUPANCY_GRID += [(16, tile, act, "rows", 1, 1) for tile in ((1024, 4, 4), (1024, 2, 4), (512, 2, 4), (512, 1, 4),
                   (1024, 4, 3)) for act in ("int8", "packed")]  # fmt: skip
OCCUPANCY_GRID += [(32, tile, "packed", "rows", 1, split) for tile in ((1024, 4, 3), (1024, 4, 4), (512, 2, 4),
                   (1024, 2, 3)) for split in (2, 4)]  # fmt: skip
OCCUPANCY_GRID += [(16, tile, "packed", "rows", 1, 2) for tile in ((1024, 4, 3), (512, 2, 4), (512, 1, 4))]
# Call 3 found no gain in packed activations, in more programs an SM, or in split-K: every variant ran at 1.9-2.1
# TB/s. This grid feeds the weights by TMA copies instead of each thread's cp.async, (N, K/2) tiles permuted to the
# slices, or the transposed (K/2, N) weights whose tile rows split into slices as they are.
TMA_GRID = [(32, (1024, 4, 5), "int8", "rows", 1, 1)]
TMA_GRID += [(bn, tile, "int8", lay, 1, 1) for lay in ("tma", "tma_t") for bn in (32, 16)
             for tile in ((512, 2, 4), (512, 2, 6), (512, 4, 6), (512, 1, 8))]  # fmt: skip
GRIDS = {"layouts": LAYOUT_GRID, "occupancy": OCCUPANCY_GRID, "tma": TMA_GRID}


def show(r: dict, weight_bytes: int) -> None:
    head = f"{r['variant']:>28} {r['bn']:>3} {r['bk']:>5} {r['slices']:>2} {r['stages']:>2}"
    if "median_us" not in r:
        print(f"{head} {r.get('error')}", flush=True)
        return
    err = "-" if r.get("err") is None else f"{r['err']:.1e}"
    print(f"{head} {r['median_us']:7.2f} {gbps(r, weight_bytes) / 1e3:6.2f} {err:>9}", flush=True)


def timed_probe(a_in, weights, sa, sw, shape, i: int) -> torch.Tensor:
    return probe(a_in, weights[i], sa, sw, *shape)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--shape", default="14336,4096", help="K,N")
    p.add_argument("--grid", choices=list(GRIDS), default="occupancy")
    p.add_argument("--json")
    args = p.parse_args()
    env = start_report()
    if env is None:
        return 1
    k, n = (int(v) for v in args.shape.split(","))
    m = args.m
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8).cuda()
    w = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8).cuda()
    sa, sw = torch.rand(m, 1, generator=gen).cuda() + 0.5, torch.rand(n, generator=gen).cuda() + 0.5
    ref = ((codes.double() @ w.double().T) * sa.double() * sw.double()[None, :]).float()
    bufs = rotations(n * k // 2)
    packs = [pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")) for _ in range(bufs - 1)]
    packs.insert(0, pack_int4(w))
    a_packed = pack_int4(codes)  # even k in the low nibble, like the weights
    weight_bytes = n * k // 2
    rows, ok = [], True

    def lib(cfg):
        t = time_us(lambda i: sliced_matmul(codes, sa, packs[i], sw, None, torch.float32, cfg), bufs, graph=True)
        err = (sliced_matmul(codes, sa, packs[0], sw, None, torch.float32, cfg) - ref).abs().max().item()
        return t, err

    for bk, slices, stages in ((1024, 4, 5), (1024, 4, 4), (512, 2, 4)):
        cfg = SlicedConfig(block_k=bk, slices=slices, num_stages=stages, pdl=False)
        t, err = lib(cfg)
        rows.append({"variant": "library", "bn": 32, "bk": bk, "slices": slices, "stages": stages, "err": err, **t})
    print(f"{'variant':>28} {'bn':>3} {'bk':>5} {'sl':>2} {'st':>2} {'us':>7} {'TB/s':>6} {'err':>9}", flush=True)
    for r in rows:
        show(r, weight_bytes)
    for bn, (bk, slices, stages), act, wlayout, dots, split in GRIDS[args.grid]:
        if k % (bk * split) or n % bn:
            continue
        tiled = [weight_operand(w_in, wlayout, bn, bk) for w_in in packs]
        a_in = a_packed if act == "packed" else codes
        variant = f"{act}/{wlayout}/{'dots' if dots else 'loads'}/split{split}"
        row = {"variant": variant, "bn": bn, "bk": bk, "slices": slices, "stages": stages}
        try:
            out = probe(a_in, tiled[0], sa, sw, n, k, bn, bk, slices, stages, act, wlayout, dots, split)
            row["err"] = (out - ref).abs().max().item() if dots and act != "once" else None
            if row["err"] is not None and row["err"] > 1e-2 * ref.abs().max().item():
                ok = False
            shape = (n, k, bn, bk, slices, stages, act, wlayout, dots, split)
            row.update(time_us(functools.partial(timed_probe, a_in, tiled, sa, sw, shape), bufs, graph=True))
        except Exception as exc:  # noqa: BLE001 - a variant that does not build is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
        show(row, weight_bytes)
        del tiled
    return finish_report({"env": env, "m": m, "k": k, "n": n, "rows": rows}, args.json, ok)


if __name__ == "__main__":
    sys.exit(main())
