"""Quantizer math against an independent float64 reference, for every granularity x symmetry x mode."""

from __future__ import annotations

import itertools

import pytest
import torch

from fptquant.math.quantization import Axis, fake_quantize, int_range, minmax_qparams, quantize_to_int, to_groups
from fptquant.math.quantizer import Quantizer, QuantSpec

FEATURES, GROUP = 36, 12


def reference_units(x: torch.Tensor, axis: Axis) -> list[torch.Tensor]:
    """Index masks of the elements that share one scale, computed the slow, obvious way."""
    tokens = x.reshape(-1, FEATURES).shape[0]
    idx = torch.arange(x.numel()).reshape(tokens, FEATURES)
    if axis is Axis.TENSOR:
        return [idx.flatten()]
    if axis is Axis.ROW:
        return [idx[t] for t in range(tokens)]
    if axis is Axis.COLUMN:
        return [idx[:, c] for c in range(FEATURES)]
    return [idx[t, g * GROUP : (g + 1) * GROUP] for t in range(tokens) for g in range(FEATURES // GROUP)]


def reference_static_units(x: torch.Tensor, axis: Axis) -> list[torch.Tensor]:
    """For static scales: a group position shares one scale across *all* tokens (tensor/column as dynamic)."""
    if axis is not Axis.GROUP:
        return reference_units(x, axis)
    idx = torch.arange(x.numel()).reshape(-1, FEATURES)
    return [idx[:, g * GROUP : (g + 1) * GROUP].flatten() for g in range(FEATURES // GROUP)]


def reference_fake_quant(values: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(max(-lo, hi) / qmax, 1e-8)
        return torch.clamp(torch.round(values / scale), -qmax - 1, qmax) * scale
    qmax = 2**bits - 1
    scale = max((hi - lo) / qmax, 1e-8)
    zero = min(max(round(-lo / scale), 0), qmax)
    return (torch.clamp(torch.round(values / scale) + zero, 0, qmax) - zero) * scale


def random_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, FEATURES, generator=g, dtype=torch.float64)
    return x * torch.exp(torch.randn(FEATURES, generator=g, dtype=torch.float64))  # outlier channels


AXES = [Axis.TENSOR, Axis.ROW, Axis.GROUP, Axis.COLUMN]


@pytest.mark.parametrize("axis,symmetric,bits", list(itertools.product(AXES, [True, False], [2, 4, 8])))
def test_dynamic_matches_float64_reference(axis, symmetric, bits):
    x = random_input()
    spec = QuantSpec(bits=bits, symmetric=symmetric, axis=axis, group_size=GROUP, clip_ratio=0.9)
    got = Quantizer(spec).double()(x)
    want = torch.empty_like(x).flatten()
    flat = x.flatten()
    for unit in reference_units(x, axis):
        v = flat[unit]
        want[unit] = reference_fake_quant(v, 0.9 * v.min().item(), 0.9 * v.max().item(), bits, symmetric)
    torch.testing.assert_close(got, want.view_as(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "axis,symmetric", list(itertools.product([Axis.TENSOR, Axis.GROUP, Axis.COLUMN], [True, False]))
)
def test_static_calibrated_matches_float64_reference(axis, symmetric):
    calib = [random_input(seed) for seed in range(3)]
    spec = QuantSpec(bits=4, symmetric=symmetric, axis=axis, group_size=GROUP, dynamic=False)
    q = Quantizer(spec, features=FEATURES).double()
    q.observing = True
    for c in calib:
        assert torch.equal(q(c), c)  # observing passes data through
    q.finish_observing()
    x = random_input(seed=7)
    got = q(x)
    stacked = torch.cat([c.reshape(-1, FEATURES) for c in calib])
    want = torch.empty_like(x).flatten()
    for unit_x, unit_c in zip(reference_static_units(x, axis), reference_static_units(stacked, axis), strict=True):
        c = stacked.flatten()[unit_c]
        want[unit_x] = reference_fake_quant(x.flatten()[unit_x], c.min().item(), c.max().item(), 4, symmetric)
    torch.testing.assert_close(got, want.view_as(x), rtol=0, atol=1e-6)


def test_static_per_token_is_rejected_and_uncalibrated_use_fails():
    with pytest.raises(ValueError, match="per row"):
        QuantSpec(bits=4, axis=Axis.ROW, dynamic=False)
    q = Quantizer(QuantSpec(bits=4, axis=Axis.TENSOR, dynamic=False), features=FEATURES)
    with pytest.raises(RuntimeError, match="calibration"):
        q(random_input().float())


@pytest.mark.parametrize("bits,symmetric", list(itertools.product([2, 3, 4, 8], [True, False])))
def test_integer_codes_stay_in_range_and_dequantize_on_the_grid(bits, symmetric):
    x = random_input() * 5
    g = to_groups(x, Axis.ROW)
    scale, zero = minmax_qparams(g.amin(1, keepdim=True) * 0.5, g.amax(1, keepdim=True) * 0.5, bits, symmetric)
    codes = quantize_to_int(g, scale, zero, bits, symmetric)
    qmin, qmax = int_range(bits, symmetric)
    assert codes.min() >= qmin and codes.max() <= qmax
    assert codes.min() == qmin or codes.max() == qmax  # clipping at 0.5 must saturate somewhere
    deq = fake_quantize(g, scale, zero, bits, symmetric)
    torch.testing.assert_close(deq, (codes - zero) * scale, rtol=0, atol=1e-12)
    assert len(torch.unique(codes[0])) <= 2**bits


def test_bits_16_is_identity():
    x = random_input()
    assert Quantizer(QuantSpec(bits=16)).double()(x) is x


def test_ste_gradient_passes_inside_grid_and_stops_outside():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    scale, zero = torch.tensor(0.25, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    fake_quantize(x, scale, zero, 4, True).sum().backward()
    inside = (x.detach() / 0.25 >= -8.5) & (x.detach() / 0.25 <= 7.5)
    assert torch.equal(x.grad, inside.double())
    assert 0 < inside.sum() < len(x)


def test_lsq_scale_gradient_matches_finite_differences_of_the_frozen_rounding_surrogate():
    """With STE the scale gradient is the derivative of s*q(s), where q keeps the rounding residual and
    which codes are clipped frozen at the current point (LSQ: q - x/s inside the grid, qmin/qmax outside)."""
    x = random_input()[0].flatten()
    s0 = torch.tensor(0.21, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros((), dtype=torch.float64)
    w = torch.randn_like(x)
    (fake_quantize(x, s0, zero, 4, True) * w).sum().backward()
    codes = torch.round(x / s0.detach())
    residual, inside, clipped = codes - x / s0.detach(), (codes >= -8) & (codes <= 7), codes.clamp(-8, 7)
    assert inside.any() and (~inside).any()

    def surrogate(s):
        return (s * torch.where(inside, x / s + residual, clipped) * w).sum()

    assert torch.autograd.gradcheck(surrogate, (s0.detach().clone().requires_grad_(),))
    eps = 1e-6
    numeric = (surrogate(s0.detach() + eps) - surrogate(s0.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(s0.grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("symmetric", [True, False])
def test_learnable_clip_gradient_matches_finite_differences(symmetric):
    """Clip logits get the gradient of the loss with rounding (and the zero point) frozen at the current point."""
    x = random_input()[0]
    spec = QuantSpec(bits=4, symmetric=symmetric, axis=Axis.ROW, learnable_clip=True, clip_init=1.5)
    q = Quantizer(spec, clip_units=x.shape[0]).double()
    w = torch.randn_like(x)
    (q(x) * w).sum().backward()
    qmin, qmax = int_range(4, symmetric)
    with torch.no_grad():
        lo0 = torch.clamp(x.amin(1, keepdim=True) * torch.sigmoid(q.clip_min_logit), max=0)
        hi0 = torch.clamp(x.amax(1, keepdim=True) * torch.sigmoid(q.clip_max_logit), min=0)
        s0, z0 = minmax_qparams(lo0, hi0, 4, symmetric)
        codes = torch.round(x / s0) + z0
        residual, inside = torch.round(x / s0) - x / s0, (codes >= qmin) & (codes <= qmax)
        z_residual = z0 - (-lo0 / s0)  # the zero point's rounding, frozen like the codes'

    def surrogate(max_logit, min_logit):
        lo = torch.clamp(x.amin(1, keepdim=True) * torch.sigmoid(min_logit), max=0)
        hi = torch.clamp(x.amax(1, keepdim=True) * torch.sigmoid(max_logit), min=0)
        s = torch.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
        z = torch.zeros_like(s) if symmetric else -lo / s + z_residual
        q_ = torch.where(inside, x / s + residual + z, codes.clamp(qmin, qmax))
        return ((q_ - z) * s * w).sum()

    args = (q.clip_max_logit.detach().clone().requires_grad_(), q.clip_min_logit.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(surrogate, args)
    grads = torch.autograd.grad(surrogate(*args), args)
    torch.testing.assert_close(q.clip_max_logit.grad, grads[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(q.clip_min_logit.grad, grads[1], rtol=1e-9, atol=1e-10)
    assert q.clip_max_logit.grad.abs().sum() > 0


def test_static_scale_is_learnable():
    q = Quantizer(QuantSpec(bits=4, axis=Axis.TENSOR, dynamic=False), features=FEATURES).double()
    q.set_range(torch.tensor([[-3.0]]), torch.tensor([[3.0]]))
    x = random_input()
    loss = (q(x) - x).pow(2).sum()
    loss.backward()
    assert q.scale.grad is not None and q.scale.grad.abs() > 0


def test_invalid_specs_raise():
    with pytest.raises(ValueError, match="bit-width"):
        QuantSpec(bits=9)
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(bits=4, axis=Axis.GROUP)
    with pytest.raises(ValueError, match="clip_ratio"):
        QuantSpec(bits=4, clip_ratio=1.5)
    with pytest.raises(ValueError, match="does not divide"):
        Quantizer(QuantSpec(bits=4, axis=Axis.GROUP, group_size=7))(torch.randn(2, FEATURES))


@pytest.mark.parametrize(
    "shape, scale_shape",
    [((5, 7), (5, 1)), ((3, 4, 6), (1, 4, 1)), ((8, 9), (1, 1)), ((2, 3, 5), (2, 3, 5)), ((4, 6), (6,)), ((3, 5), ())],
)
def test_fused_symmetric_fake_quantize_equals_the_autograd_composition(shape, scale_shape):
    """The one-node symmetric fake quantizer: the same values, bit for bit, and the gradients autograd gives
    ``clamp(round_ste(x / s)) * s`` (straight-through for x inside the grid, LSQ for s), in float64, with
    values on both sides of the clamp and scales per row, per column, per tensor (also 0-d) and per element."""
    from fptquant.math.quantization import _SymmetricFakeQuantize, round_ste

    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    s = (0.3 + torch.rand(scale_shape, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    fused = _SymmetricFakeQuantize.apply(x, s, -8, 7)
    reference = torch.clamp(round_ste(x / s), -8, 7) * s
    assert torch.equal(fused, reference)
    assert (reference.detach() / s.detach()).abs().max() == 8  # some values are clamped
    fused_grads = torch.autograd.grad((fused * w).sum(), [x, s])
    for a, b in zip(fused_grads, torch.autograd.grad((reference * w).sum(), [x, s]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
