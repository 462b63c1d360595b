"""Triton kernel of :mod:`.kv_attention`: flash-decoding over an INT4 KV cache.

One program per (sequence, KV head, split of the positions) serves every query head of its group,
so each K/V byte is read once. Per block of positions it unpacks the two nibble halves, subtracts
the zero points (integers in -15..15, exact in fp16) and runs two half-width dots on the tensor cores;
the per-position scales multiply the scores (K) and the probabilities (V). The splits are merged by
their log-sum-exp.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .backend import interpreting
from .kv_attention import PackedKV

LOG2E = 1.4426950408889634


@triton.jit
def _decode_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, len_ptr, out_ptr, lse_ptr,
    sq_b, sq_h, sc_b, sc_h, sc_s, ss_b, ss_h, so_b, so_h, so_s, sl_b, sl_h,
    HK, chunk, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // HK
    hk = pid % HK
    length = tl.load(len_ptr + b).to(tl.int32)
    start = split * chunk
    end = tl.minimum(start + chunk, length)

    g = tl.arange(0, G_PAD)
    h = tl.arange(0, HALF_PAD)
    g_ok = g < G
    h_ok = h < HALF
    q_row = q_ptr + b.to(tl.int64) * sq_b + (hk * G + g)[:, None].to(tl.int64) * sq_h
    q_lo = tl.load(q_row + h[None, :], mask=g_ok[:, None] & h_ok[None, :], other=0.0).to(DOT)
    q_hi = tl.load(q_row + HALF + h[None, :], mask=g_ok[:, None] & h_ok[None, :], other=0.0).to(DOT)

    head_c = b.to(tl.int64) * sc_b + hk.to(tl.int64) * sc_h
    head_s = b.to(tl.int64) * ss_b + hk.to(tl.int64) * ss_h
    m = tl.full((G_PAD,), float("-inf"), tl.float32)
    l_sum = tl.zeros((G_PAD,), tl.float32)
    acc_lo = tl.zeros((G_PAD, HALF_PAD), tl.float32)
    acc_hi = tl.zeros((G_PAD, HALF_PAD), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        tile = head_c + n[:, None].to(tl.int64) * sc_s + h[None, :]
        tile_ok = n_ok[:, None] & h_ok[None, :]
        kc = tl.load(kc_ptr + tile, mask=tile_ok, other=0).to(tl.int32)
        kz = tl.load(kz_ptr + head_s + n, mask=n_ok, other=0).to(tl.int32)
        ks = tl.load(ks_ptr + head_s + n, mask=n_ok, other=0.0).to(tl.float32)
        k_lo = ((kc & 15) - kz[:, None]).to(DOT)
        k_hi = ((kc >> 4) - kz[:, None]).to(DOT)
        qk = tl.dot(q_lo, tl.trans(k_lo), out_dtype=tl.float32) + tl.dot(q_hi, tl.trans(k_hi), out_dtype=tl.float32)
        s = qk * (ks * qk_scale)[None, :]
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        vc = tl.load(vc_ptr + tile, mask=tile_ok, other=0).to(tl.int32)
        vz = tl.load(vz_ptr + head_s + n, mask=n_ok, other=0).to(tl.int32)
        vs = tl.load(vs_ptr + head_s + n, mask=n_ok, other=0.0).to(tl.float32)
        pv = (p * vs[None, :]).to(DOT)
        v_lo = ((vc & 15) - vz[:, None]).to(DOT)
        v_hi = ((vc >> 4) - vz[:, None]).to(DOT)
        acc_lo = acc_lo * alpha[:, None] + tl.dot(pv, v_lo, out_dtype=tl.float32)
        acc_hi = acc_hi * alpha[:, None] + tl.dot(pv, v_hi, out_dtype=tl.float32)
        m = m_new

    filled = l_sum > 0.0
    inv = tl.where(filled, 1.0 / tl.where(filled, l_sum, 1.0), 0.0)
    o_row = out_ptr + b.to(tl.int64) * so_b + (hk * G + g)[:, None].to(tl.int64) * so_h + split * so_s
    o_ok = g_ok[:, None] & h_ok[None, :]
    tl.store(o_row + h[None, :], acc_lo * inv[:, None], mask=o_ok)
    tl.store(o_row + HALF + h[None, :], acc_hi * inv[:, None], mask=o_ok)
    lse = tl.where(filled, (m + tl.log2(tl.where(filled, l_sum, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(lse_ptr + b * sl_b + (hk * G + g) * sl_h + split, lse, mask=g_ok)


def pick_splits(batch: int, kv_heads: int, max_length: int, block_n: int, programs: int = 264) -> int:
    """Enough splits to give every SM work (two waves of 132), never below one block of positions each."""
    want = max(1, math.ceil(programs / (batch * kv_heads)))
    return max(1, min(want, math.ceil(max_length / block_n)))


def decode_attention(
    query: torch.Tensor,
    keys: PackedKV,
    values: PackedKV,
    lengths: torch.Tensor,
    scaling: float,
    splits: int | None = None,
    max_length: int | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    b, hq, d = query.shape
    hk = keys.codes.shape[1]
    if keys.codes.stride() != values.codes.stride() or keys.scale.stride() != values.scale.stride():
        raise ValueError("K and V of an INT4 cache must share one layout")
    if keys.zero.stride() != keys.scale.stride() or values.zero.stride() != keys.scale.stride():
        raise ValueError("scales and zero points of an INT4 cache must share one layout")
    if keys.codes.stride(-1) != 1 or keys.scale.stride(-1) != 1:
        raise ValueError("an INT4 cache must be contiguous along the positions and the packed features")
    max_length = max_length if max_length is not None else int(lengths.max())  # pass it to avoid a sync
    splits = splits or pick_splits(b, hk, max_length, block_n)
    chunk = triton.cdiv(triton.cdiv(max_length, splits), block_n) * block_n
    query = query.contiguous()
    part = torch.empty((b, hq, splits, d), dtype=torch.float32, device=query.device)
    lse = torch.empty((b, hq, splits), dtype=torch.float32, device=query.device)
    interp = interpreting()  # the interpreter's fp16 dots are fine, but fp32 keeps the tests' tolerance tight
    _decode_kernel[(b * hk, splits)](
        query, keys.codes, keys.scale, keys.zero, values.codes, values.scale, values.zero, lengths, part, lse,
        query.stride(0), query.stride(1), *keys.codes.stride()[:3], *keys.scale.stride()[:2],
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        hk, chunk, scaling * LOG2E,
        G=hq // hk, G_PAD=max(16, triton.next_power_of_2(hq // hk)), HALF=d // 2,
        HALF_PAD=max(16, triton.next_power_of_2(d // 2)), BLOCK_N=block_n,
        DOT=tl.float32 if interp else tl.float16, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if splits == 1:
        return part[:, :, 0]
    weight = torch.softmax(lse, dim=-1)  # splits without positions have lse -inf, weight 0
    return torch.einsum("bhs,bhsd->bhd", weight, part)
