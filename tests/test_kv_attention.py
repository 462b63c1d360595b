"""INT4 KV cache: packing, dequantization as the fake quantizer does it, and the decode-attention kernel
against a float64 reference (Triton in the interpreter on CPU, compiled on the GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from fptquant.errors import ConfigError
from fptquant.kernels.kv_attention import (
    PackedKV,
    int4_kv_decode_attention,
    pack_halves,
    unpack_halves,
)
from fptquant.math.quantization import minmax_qparams, quantize_to_int
from fptquant.math.quantizer import Quantizer, QuantSpec

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def quantize(x: torch.Tensor):
    """Asymmetric 4-bit codes per (batch, head, position), the fake quantizer's own formulas."""
    scale, zero = minmax_qparams(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), 4, False)
    return quantize_to_int(x, scale, zero, 4, False), scale[..., 0], zero[..., 0]


def filled_cache(batch, heads, length, head_dim, capacity=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        x = (torch.randn(batch, heads, length, head_dim, generator=g) * 2 + 0.5).to(dtype)
        cache = PackedKV.empty(batch, heads, capacity or length, head_dim, dtype, DEVICE)
        cache.write(0, *(t.to(DEVICE) for t in quantize(x)))
        out.append((x, cache))
    return out


def reference64(query, keys: PackedKV, values: PackedKV, lengths, scaling):
    out = torch.empty(query.shape, dtype=torch.float64)
    group = query.shape[1] // keys.codes.shape[1]
    for b, n in enumerate(lengths.tolist()):
        k = keys.dequantize(n)[b].double().cpu().repeat_interleave(group, 0)
        v = values.dequantize(n)[b].double().cpu().repeat_interleave(group, 0)
        p = (torch.einsum("hd,hsd->hs", query[b].double().cpu(), k) * scaling).softmax(-1)
        out[b] = torch.einsum("hs,hsd->hd", p, v)
    return out


def test_packing_round_trips_and_puts_halves_in_nibbles():
    codes = torch.randint(0, 16, (2, 3, 5, 24))
    packed = pack_halves(codes)
    assert packed.shape == (2, 3, 5, 12) and packed.dtype == torch.uint8
    assert torch.equal(unpack_halves(packed).long(), codes)
    assert torch.equal((packed & 15).long(), codes[..., :12]) and torch.equal((packed >> 4).long(), codes[..., 12:])


def test_dequantized_cache_equals_the_fake_quantizer_exactly():
    """The cache must hold what the evaluated (fake-quant) model attends to, bit for bit."""
    x = torch.randn(2, 3, 7, 64) * 3
    cache = PackedKV.empty(2, 3, 16, 64, torch.float32, "cpu")
    cache.write(0, *quantize(x))
    quantizer = Quantizer(QuantSpec(bits=4, symmetric=False, axis="group", group_size=64))
    flat = x.transpose(1, 2).reshape(2, 7, 3 * 64)
    fake = quantizer(flat).reshape(2, 7, 3, 64).transpose(1, 2)
    assert torch.equal(cache.dequantize(7), fake)
    with pytest.raises(ConfigError, match="holds 16 positions"):
        cache.write(10, *quantize(x))


@pytest.mark.parametrize(
    "batch, q_heads, kv_heads, head_dim, lengths",
    [
        (2, 9, 3, 64, [37, 130]),  # SmolLM2's 9 heads of 64 in 3 groups; ragged lengths
        (1, 4, 4, 24, [19]),  # no grouping; head dim 24 (halves of 12, padded in the kernel)
        (3, 8, 2, 128, [1, 64, 200]),  # a length of one position
    ],
)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_decode_attention_matches_float64(backend, batch, q_heads, kv_heads, head_dim, lengths):
    capacity = max(lengths) + 5
    (_, keys), (_, values) = filled_cache(batch, kv_heads, capacity, head_dim)
    lengths = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    g = torch.Generator().manual_seed(3)
    query = torch.randn(batch, q_heads, head_dim, generator=g).to(DEVICE)
    scaling = 1 / math.sqrt(head_dim)
    expected = reference64(query, keys, values, lengths.cpu(), scaling)
    for splits in (None, 3):
        got = int4_kv_decode_attention(query, keys, values, lengths, scaling, backend=backend, splits=splits)
        assert got.dtype == torch.float32 and got.shape == query.shape
        # fp32 here; on the GPU q and P are rounded to fp16 for the tensor cores (rel. 2^-11 each)
        tol = 1e-5 if DEVICE == "cpu" else 5e-3
        assert (got.double().cpu() - expected).abs().max() <= tol * expected.abs().max()


def test_positions_beyond_the_length_are_ignored():
    (_, keys), (_, values) = filled_cache(1, 2, 40, 32)
    query = torch.randn(1, 2, 32).to(DEVICE)
    lengths = torch.tensor([25], dtype=torch.int32, device=DEVICE)
    before = int4_kv_decode_attention(query, keys, values, lengths, 0.2)
    keys.codes[:, :, 25:] = 255  # garbage after the valid prefix
    keys.scale[:, :, 25:] = 1e4
    after = int4_kv_decode_attention(query, keys, values, lengths, 0.2)
    assert torch.equal(before, after)
    assert torch.isfinite(after).all()


def test_mismatched_shapes_are_clear_errors():
    (_, keys), (_, values) = filled_cache(2, 3, 8, 64)
    with pytest.raises(ConfigError, match="query heads"):
        int4_kv_decode_attention(torch.randn(2, 8, 64), keys, values, torch.tensor([8, 8]), 0.1)
    with pytest.raises(ConfigError, match="head dim"):
        int4_kv_decode_attention(torch.randn(2, 9, 32), keys, values, torch.tensor([8, 8]), 0.1)
    with pytest.raises(ConfigError, match="even head dimension"):
        PackedKV.empty(1, 1, 4, 23, torch.float32, "cpu")
