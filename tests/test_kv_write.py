"""The one-launch INT4 KV-cache write (Triton; the interpreter on CPU) against the torch path it replaces,
bit for bit, and against float64 within half a quantization step."""

from __future__ import annotations

import pytest
import torch

from fptquant.fakequant.attention import fused_write_plan
from fptquant.kernels.kv_attention import PackedKV
from fptquant.kernels.triton_kv_write import quantize_and_write
from fptquant.math.quantizer import Quantizer, QuantSpec

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kv_quantizer(head_dim: int, clip: str, dtype: torch.dtype) -> Quantizer:
    learned = clip.startswith("learned")
    ratio = 1.0 if clip == "none" else 0.95
    spec = QuantSpec(4, False, "group", head_dim, clip_ratio=ratio, learnable_clip=learned)
    q = Quantizer(spec)
    if learned:
        with torch.no_grad():  # a trained, non-trivial clip pair
            q.clip_min_logit.fill_(1.3)
            q.clip_max_logit.fill_(2.7)
    return q.to(dtype if clip == "learned_lowp" else torch.float32)


def torch_path(quantizer: Quantizer, x: torch.Tensor, packed: PackedKV, start: int) -> None:
    """What Int4KVLayer does without the kernel: the quantizer's integer codes, then PackedKV.write."""
    b, h, t, d = x.shape
    codes, scale, zero = quantizer.integer_codes(x.transpose(1, 2).reshape(b, t, h * d))
    codes = codes.reshape(b, t, h, d).transpose(1, 2)
    packed.write(start, codes, scale.reshape(b, t, h).transpose(1, 2), zero.reshape(b, t, h).transpose(1, 2))


@pytest.mark.parametrize("clip", ["none", "ratio", "learned", "learned_lowp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, heads, tokens, head_dim, start", [(2, 9, 5, 64, 3), (1, 3, 1, 128, 0)])
def test_fused_write_equals_the_torch_path_bit_for_bit(clip, dtype, batch, heads, tokens, head_dim, start):
    g = torch.Generator().manual_seed(7)
    # (B, T, H, D) transposed, as attention hands K/V over: not contiguous over T
    x = (torch.randn(batch, tokens, heads, head_dim, generator=g) * 3 + 0.4).transpose(1, 2).to(dtype).to(DEVICE)
    quantizer = kv_quantizer(head_dim, clip, dtype).to(DEVICE)
    lo, hi, compute = fused_write_plan(quantizer, x)
    capacity = start + tokens + 2
    expected = PackedKV.empty(batch, heads, capacity, head_dim, compute, DEVICE)
    torch_path(quantizer, x, expected, start)
    assert expected.scale.dtype == compute  # the plan names the dtype torch computes the scales in
    got = PackedKV.empty(batch, heads, capacity, head_dim, compute, DEVICE)
    quantize_and_write(x.to(compute), got.codes, got.scale, got.zero, torch.tensor(start, device=DEVICE), lo, hi)
    assert torch.equal(got.codes, expected.codes)
    assert torch.equal(got.zero, expected.zero)
    assert torch.equal(got.scale, expected.scale)
    assert got.codes[:, :, start : start + tokens].any()  # a real write, not two untouched buffers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_write_is_within_half_a_step_of_float64(dtype):
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 9, 4, 64, generator=g, dtype=torch.float64) * 2 - 0.3).to(dtype)
    packed = PackedKV.empty(2, 9, 6, 64, dtype, DEVICE)
    quantize_and_write(x.to(DEVICE), packed.codes, packed.scale, packed.zero, torch.tensor(1, device=DEVICE), 1.0, 1.0)
    deq = packed.dequantize(5)[:, :, 1:].double().cpu()
    x64 = x.double()
    scale = packed.scale[:, :, 1:5, None].double().cpu()
    # half a step, plus the rounding of x/scale and of the dequantization in the storage dtype
    ulp = 2.0**-23 if dtype == torch.float32 else 2.0**-7
    assert ((deq - x64).abs() <= 0.5 * scale + 4 * ulp * x64.abs().amax(-1, keepdim=True)).all()
    span = x64.amax(-1) - x64.amin(-1)
    assert torch.allclose(scale[..., 0], span / 15, rtol=4 * ulp)


def test_plan_refuses_what_the_kernel_does_not_do():
    x = torch.randn(1, 2, 3, 64)
    assert fused_write_plan(Quantizer(QuantSpec(bits=4, symmetric=True, axis="group", group_size=64)), x) is None
    odd = torch.randn(1, 2, 3, 24)  # not a power of two: the torch path
    assert fused_write_plan(Quantizer(QuantSpec(bits=4, symmetric=False, axis="group", group_size=24)), odd) is None
    quantizer = kv_quantizer(64, "ratio", torch.float32).to(DEVICE)
    assert fused_write_plan(quantizer, x.to(DEVICE)) is not None
    assert fused_write_plan(quantizer.double(), x.double().to(DEVICE)) is None  # float64 (a model's twin): torch


@pytest.mark.parametrize("clip", ["none", "learned", "learned_lowp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_kv_fake_quantize_kernel_equals_the_quantizer_bit_for_bit(monkeypatch, clip, dtype):
    """Outside autograd the attention's K/V quantizers run as one kernel; with gradients, the torch path."""
    import fptquant.fakequant.attention as attention

    heads, head_dim = 3, 64
    g = torch.Generator().manual_seed(5)
    spec = kv_quantizer(head_dim, clip, dtype).spec
    state = attention.AttentionQuantizers(heads, head_dim, spec, spec).to(DEVICE)
    reference = kv_quantizer(head_dim, clip, dtype).to(DEVICE)
    state.k_quantizer.load_state_dict(reference.state_dict())
    state.v_quantizer.load_state_dict(reference.state_dict())
    state.to(dtype if clip == "learned_lowp" else torch.float32)
    k = (torch.randn(2, 9, heads, head_dim, generator=g) * 2 - 0.3).transpose(1, 2).to(dtype).to(DEVICE)
    v = torch.randn(2, heads, 9, head_dim, generator=g).to(dtype).to(DEVICE)
    q = torch.randn(2, 6, 9, head_dim).to(dtype).to(DEVICE)

    def torch_path(quantizer, x):  # the quantizer's own forward, on the heads-side-by-side view
        b, h, t, d = x.shape
        return quantizer(x.transpose(1, 2).reshape(b, t, h * d)).reshape(b, t, h, d).transpose(1, 2)

    expected = [torch_path(state.k_quantizer, k), torch_path(state.v_quantizer, v)]
    monkeypatch.setattr(attention, "KERNEL_ON_CPU", True)
    import fptquant.kernels.triton_kv_write as kernel

    calls = []
    real = kernel.fake_quantize_heads
    monkeypatch.setattr(kernel, "fake_quantize_heads", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        _, k_fast, v_fast = state(q, k, v)
    assert len(calls) == 2
    for got, want in zip((k_fast, v_fast), expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    k.requires_grad_(True)
    state(q, k, v)  # with gradients: the torch path (the kernel has no backward)
    assert len(calls) == 3  # only the value, which needs no gradient, took the kernel
