"""The RMSNorm fused into the per-token INT4 quantize (kernels/norm_quantize.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fptquant.errors import ConfigError  # noqa: E402
from fptquant.kernels import quantize_per_token  # noqa: E402
from fptquant.kernels.norm_quantize import norm_quantize, rms_norm_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def residual(m: int, k: int, dtype, seed: int) -> torch.Tensor:
    """Residual-stream rows: token norms over two orders of magnitude and a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-1, 1, m)[:, None]
    x[:, :: max(1, k // 5)] *= 20
    return x.to(DEVICE, dtype)


def close(q, s, qr, sr, step: float) -> None:
    """Codes within one of the reference on ≤ 0.1% of them; scales to 1e-6, or one step of the norm's output
    dtype (``step``) on ≤ 2% of the rows: a square sum in another order can move a value across a rounding
    boundary of the norm's output (kernels/norm_quantize.py)."""
    diff = (q.float() - qr.float()).abs()
    assert int(diff.max()) <= 1 and (diff > 0).double().mean() <= 1e-3
    rel = ((s - sr).abs() / sr).flatten()
    assert rel.max() <= step and (rel > 1e-6).double().mean() <= 0.02


@pytest.mark.parametrize("m,k", [(37, 576), (5, 4096), (9, 1536), (3, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("scale", [{"clip_ratio": 0.9}, {"static_scale": 0.25}])
def test_fused_norm_quantize_matches_the_norm_then_the_quantize(m, k, dtype, with_weight, scale):
    """Against the reference (HF's RMSNorm, then the per-token quantize) and against the unfused kernels (the
    norm's output quantized by the Triton quantize); with and without a norm weight, dynamic and static scales,
    bfloat16 and float32 rows, rows of 576 values as pieces of 512 + 64."""
    x = residual(m, k, dtype, seed=k + m)
    g = torch.Generator().manual_seed(m)
    weight = (torch.rand(k, generator=g) + 0.5).to(DEVICE, dtype) if with_weight else None
    eps = 1e-5
    q, s = norm_quantize(x, weight, eps, backend="triton", **scale)
    qr, sr = norm_quantize(x, weight, eps, backend="torch", **scale)
    step = 2**-7 if dtype == torch.bfloat16 else 1e-6
    close(q, s, qr, sr, step)
    qu, su = quantize_per_token(rms_norm_reference(x, weight, eps), backend="triton", **scale)
    close(q, s, qu, su, step)
    if "clip_ratio" in scale:  # the norm really ran: the rows' own ranges spread over two decades, these do not
        assert s.max() / s.min() < 4 < float(x.float().abs().amax(1).max() / x.float().abs().amax(1).min())


def test_reference_is_hf_llama_rms_norm():
    """The reference norm is transformers' LlamaRMSNorm, rounding included."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = residual(7, 96, torch.bfloat16, seed=1)
    norm = LlamaRMSNorm(96, eps=1e-6).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 96))
        assert torch.equal(norm(x), rms_norm_reference(x, norm.weight, 1e-6))


def test_norm_quantize_rejects_bad_input():
    x = residual(2, 64, torch.bfloat16, seed=0)
    with pytest.raises(ConfigError, match="weight of shape"):
        norm_quantize(x, torch.ones(32, device=DEVICE, dtype=torch.bfloat16), 1e-5)
    with pytest.raises(ConfigError, match="eps must be positive"):
        norm_quantize(x, None, 0.0)
    with pytest.raises(ConfigError, match="not torch.int32"):
        norm_quantize(x.int(), None, 1e-5)


def test_rows_past_the_fused_kernel_take_two_steps():
    """Rows longer than the fused kernel holds are normalized, then quantized: same codes as the reference."""
    x = residual(2, 32768 + 64, torch.bfloat16, seed=3)
    q, s = norm_quantize(x, None, 1e-5, backend="triton")
    qr, sr = norm_quantize(x, None, 1e-5, backend="torch")
    close(q, s, qr, sr, 2**-7)
