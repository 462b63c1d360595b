"""The quantize kernels with a SwiGLU producer: ``silu(gate) · up`` formed as the rows are read."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fptquant.errors import ConfigError  # noqa: E402
from fptquant.kernels import quantize_per_token, quantize_per_token_reference  # noqa: E402
from fptquant.kernels.quantize import gated_product  # noqa: E402
from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference  # noqa: E402
from fptquant.math.hadamard import random_orthogonal  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def gate_and_up(m: int, k: int, dtype, seed: int, gate_range: tuple[float, float] | None = None):
    g = torch.Generator().manual_seed(seed)
    if gate_range is None:
        gate = torch.randn(m, k, generator=g) * 3
        gate[:, :: max(1, k // 5)] *= 6  # outlier channels, both signs: silu's tails
    else:
        gate = torch.empty(m, k).uniform_(*gate_range, generator=g)
    up = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g).add(0.1)
    return gate.to(DEVICE, dtype), up.to(DEVICE, dtype)


def close_codes(q: torch.Tensor, ref: torch.Tensor, fraction: float = 1e-3) -> None:
    """Codes within one, few of them moved: the kernel's ``exp`` may round silu to the neighbouring value."""
    diff = (q.cpu().float() - ref.cpu().float()).abs()
    assert int(diff.max()) <= 1 and (diff > 0).double().mean() <= fraction


# 576 and 1536 (SmolLM2), 14336 (8B down_proj, three pieces), 40000 (two passes over the row)
@pytest.mark.parametrize("m,k", [(7, 576), (5, 1536), (3, 14336), (2, 40000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("static_scale", [None, 0.3])
def test_gated_quantize_forms_the_swiglu_product(m, k, dtype, static_scale):
    gate, up = gate_and_up(m, k, dtype, seed=k)
    q, s = quantize_per_token(gate, static_scale=static_scale, up=up, backend="triton")
    qr, sr = quantize_per_token_reference(gated_product(gate, up), static_scale=static_scale)
    close_codes(q, qr)
    torch.testing.assert_close(s.cpu(), sr.cpu(), rtol=2**-7, atol=0)
    assert not torch.equal(q.cpu(), quantize_per_token_reference(gate, static_scale=static_scale)[0].cpu())


@pytest.mark.parametrize("k", [576, 40000])
def test_gated_quantize_is_bit_exact_where_silu_is_exact(k):
    """Gates of 20 to 40: ``1 + exp(-g)`` is 1 in float32, so silu(g) = g and only the product's rounding and the
    quantizer are left, which must match byte for byte."""
    gate, up = gate_and_up(4, k, torch.bfloat16, seed=3, gate_range=(20.0, 40.0))
    q, s = quantize_per_token(gate, up=up, backend="triton")
    qr, sr = quantize_per_token_reference(gated_product(gate, up))
    assert torch.equal(q.cpu(), qr.cpu()) and torch.equal(s.cpu(), sr.cpu())


@pytest.mark.parametrize(
    "n1,n2,nb,kind", [(24, 24, 1, "kron"), (32, 48, 1, "kron"), (9, 64, 1, "heads"), (16, 32, 3, "kron")]
)  # 3 blocks of 16×32: the two-pass path reads gate and up twice
@pytest.mark.parametrize("round_mid", [False, True])
@pytest.mark.parametrize("static_scale", [None, 0.2])
def test_gated_transform_quantize_forms_the_swiglu_product(n1, n2, nb, kind, round_mid, static_scale):
    g = torch.Generator().manual_seed(n1 + n2 + nb)
    p1 = random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)
    p2 = torch.eye(n2) if kind == "heads" else random_orthogonal(n2, g)
    if round_mid:  # FlatQuant's bfloat16 numerics take factors bfloat16 holds
        p1, p2 = p1.bfloat16().float(), p2.bfloat16().float()
    p1, p2 = p1.to(DEVICE), p2.to(DEVICE)
    gate, up = gate_and_up(11, nb * n1 * n2, torch.bfloat16, seed=n1)
    kw = dict(static_scale=static_scale, round_mid=round_mid)
    q, s = transform_quantize(gate, p1, p2, up=up, backend="triton", **kw)
    qr, sr = transform_quantize_reference(gated_product(gate, up), p1, p2, **kw)
    close_codes(q, qr)
    torch.testing.assert_close(s.cpu(), sr.cpu(), rtol=2**-7, atol=0)


def test_gate_and_up_must_match():
    gate = torch.randn(3, 64)
    for up in (torch.randn(3, 32), torch.randn(3, 64, dtype=torch.float64)):
        with pytest.raises(ConfigError, match="gate and up must match"):
            quantize_per_token(gate, up=up, backend="torch")
        with pytest.raises(ConfigError, match="gate and up must match"):
            transform_quantize(gate, torch.eye(8), torch.eye(8), up=up, backend="torch")


@pytest.mark.parametrize("kind", ["plain", "kron", "blocks"])
def test_halves_of_one_output_are_read_in_place(kind):
    """Gate and up as the two column halves of one (rows, 2K) output (deploy's stacked gate/up GEMM): the kernels
    step through the rows by their stride, so the codes equal those of contiguous copies exactly, and no copy is
    made."""
    from fptquant.kernels.quantize import matrix_rows

    gate, up = gate_and_up(9, 576 if kind != "blocks" else 3 * 512, torch.bfloat16, seed=5)
    both = torch.cat((gate, up), dim=1)
    g, u = both[:, : gate.shape[1]], both[:, gate.shape[1] :]
    assert not g.is_contiguous() and matrix_rows(u).data_ptr() == u.data_ptr()
    if kind == "plain":
        run = lambda a, b: quantize_per_token(a, up=b, backend="triton")  # noqa: E731
    else:
        n1, n2 = (24, 24) if kind == "kron" else (16, 32)
        p1, p2 = (random_orthogonal(n, torch.Generator().manual_seed(n)).to(DEVICE) for n in (n1, n2))
        run = lambda a, b: transform_quantize(a, p1, p2, up=b, backend="triton")  # noqa: E731
    q, s = run(g, u)
    qc, sc = run(gate.contiguous(), up.contiguous())
    assert torch.equal(q, qc) and torch.equal(s, sc)
