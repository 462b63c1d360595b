"""Kronecker affine transforms (FlatQuant building block): factorisation rule, identity, exact merges."""

from __future__ import annotations

import pytest
import torch

from fptquant.math.kronecker import KroneckerTransform, decompose_dim, kron_apply
from fptquant.math.rotation import merge_input_transform


@pytest.mark.parametrize(
    "n,expected",
    [(576, (24, 24)), (1536, (32, 48)), (4096, (64, 64)), (11008, (86, 128)), (14336, (112, 128)), (72, (6, 12))],
)
def test_decompose_dim_follows_flatquant(n, expected):
    """The released code's rule (a² − n a perfect square b², pair (a−b, a+b)); 72 gives 6×12, not 8×9."""
    assert decompose_dim(n) == expected


def test_kron_apply_equals_dense_kronecker_product():
    g = torch.Generator().manual_seed(0)
    p1, p2 = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(8, 8, generator=g, dtype=torch.float64)
    x = torch.randn(3, 5, 48, generator=g, dtype=torch.float64)
    torch.testing.assert_close(kron_apply(x, p1, p2), x @ torch.kron(p1, p2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [72, 96])
def test_transform_and_weight_side_preserve_a_linear_layer(n):
    t = KroneckerTransform(n, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():  # move away from the init so the test covers non-trivial sigma, c, U, V
        t.diag.uniform_(0.5, 2.0)
        for factor in (t.p1, t.p2):
            factor.sigma.uniform_(0.5, 2.0)
            factor.u.weight.normal_(std=0.3)
    w = torch.randn(10, n, dtype=torch.float64)
    x = torch.randn(4, n, dtype=torch.float64)
    merged = w.clone()
    merge_input_transform(merged, t.weight_side())
    with torch.no_grad():
        torch.testing.assert_close(t(x) @ merged.t(), x @ w.t(), rtol=1e-9, atol=1e-9)
        assert (t(x) - x).abs().max() > 1e-2


def test_gradients_reach_every_parameter():
    t = KroneckerTransform(24)
    t(torch.randn(3, 24)).pow(2).sum().backward()
    grads = [p.grad for p in t.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", ["svd", "inverse"])
def test_bf16_online_numerics_round_the_factors_and_invert_them_exactly(kind):
    """``bf16=True``: the online factors are bfloat16 values, the weight side (live and merged) is the exact
    inverse of those, so only the bfloat16 rounding of ``P1ᵀX`` (done the same way live and deployed)
    leaves float32; gradients still reach every parameter through the roundings."""
    t = KroneckerTransform(96, generator=torch.Generator().manual_seed(2), kind=kind, bf16=True).double()
    with torch.no_grad():
        t.diag.uniform_(0.5, 2.0)
        for factor in (t.p1, t.p2):
            for p in factor.parameters():
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    p1, p2 = t.online_factors()
    assert all(torch.equal(p.bfloat16().double(), p) for p in (p1, p2))
    assert all((p - q).abs().max() > 0 for p, q in zip((p1, p2), (t.p1.matrix64(), t.p2.matrix64()), strict=True))
    w = torch.randn(10, 96, dtype=torch.float64)
    x = torch.randn(4, 96, dtype=torch.float64)
    merged = w.clone()
    merge_input_transform(merged, t.weight_side())
    online = kron_apply(x * t.diag.detach(), p1, p2)  # the transform without the mid rounding: exact inverse
    torch.testing.assert_close(online @ merged.t(), x @ w.t(), rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(online @ t.apply_to_weight(w).t(), x @ w.t(), rtol=1e-9, atol=1e-9)
        live = t(x)
    torch.testing.assert_close(live, kron_apply(x * t.diag.detach(), p1, p2, round_mid=True), rtol=0, atol=0)
    mid = p1.t() @ (x * t.diag.detach()).reshape(4, *decompose_dim(96))
    assert not torch.equal(mid.bfloat16().double(), mid)  # the mid rounding is real
    (t(x.requires_grad_()).pow(2).sum() + t.apply_to_weight(w).pow(2).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0
