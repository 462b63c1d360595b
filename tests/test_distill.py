"""End-to-end distillation loop: per-group gradient norms and optional global-norm clipping."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import fptquant
from fptquant.errors import ConfigError
from fptquant.methods.fptquant import FPTQuant
from fptquant.pipelines.distill import _group_norms_and_clip


def _groups():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 5, 7)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) + 0.5
    return [{"params": params[:2]}, {"params": params[2:]}, {"params": [torch.nn.Parameter(torch.zeros(2))]}]


def test_group_norms_are_measured_before_clipping_and_clipping_bounds_the_global_norm():
    groups = _groups()
    grads = [[p.grad.clone() if p.grad is not None else None for p in g["params"]] for g in groups]
    expected = torch.tensor(
        [torch.cat([x for x in gs if x is not None]).norm() if any(x is not None for x in gs) else 0.0 for gs in grads]
    )
    out = torch.full((3,), -1.0)
    _group_norms_and_clip(groups, None, out)  # measuring alone changes nothing
    torch.testing.assert_close(out, expected)
    assert out[2] == 0  # a group without gradients
    for g, gs in zip(groups, grads, strict=True):
        for p, x in zip(g["params"], gs, strict=True):
            assert (p.grad is None and x is None) or torch.equal(p.grad, x)
    total = float(expected.norm())
    _group_norms_and_clip(groups, 2 * total, out)  # above the norm: unchanged
    assert torch.equal(groups[0]["params"][0].grad, grads[0][0])
    _group_norms_and_clip(groups, total / 4, out)
    torch.testing.assert_close(out, expected)
    clipped = torch.cat([p.grad for g in groups for p in g["params"] if p.grad is not None])
    assert abs(float(clipped.norm()) - total / 4) < 1e-5 * total
    torch.testing.assert_close(groups[1]["params"][0].grad, grads[1][0] / 4, rtol=1e-5, atol=0)


def test_fptquant_records_each_steps_gradient_norm_per_group():
    model = make_tiny_model("llama", num_attention_heads=6, num_key_value_heads=2, head_dim=12)
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    args = {"local_steps": 2, "e2e_steps": 3, "batch_size": 2, "range_windows": 2, "resume": False}
    args["max_grad_norm"] = 0.5
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    stats = fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method.stats
    names, norms = stats["e2e_grad_norm_groups"], stats["e2e_grad_norms"]
    assert names == ["transforms", "residual rotation", "static scales", "clips"]
    assert len(norms) == 3 and all(len(n) == 4 for n in norms)
    assert all(torch.isfinite(torch.tensor(n)).all() and min(n) > 0 for n in norms)


@pytest.mark.parametrize("value", [0, -1.0, "big", True])
def test_max_grad_norm_must_be_positive(value):
    with pytest.raises(ConfigError, match="max_grad_norm"):
        FPTQuant(fptquant.Recipe(method="fptquant", method_args={"max_grad_norm": value}))


def test_static_scales_train_in_log_space_and_come_back_as_the_same_plain_parameters():
    """scales_in_log_space: the quantizer computes the same output with exp(log-scale), an AdamW step moves
    a small and a large scale by the same factor, and on exit each scale is its original Parameter again,
    holding the trained value."""
    from fptquant.math.quantizer import Quantizer, QuantSpec
    from fptquant.pipelines.static_ranges import scales_in_log_space

    quantizers = [Quantizer(QuantSpec(bits=4, symmetric=True, dynamic=False, axis="tensor"), 8) for _ in range(2)]
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    for q, scale in zip(quantizers, (0.012, 3.3), strict=True):
        q.set_range(torch.tensor([-7.0 * scale]), torch.tensor([7.0 * scale]))
        q.scale.requires_grad_(True)
    before = [q.scale for q in quantizers]
    expected = [q(x) for q in quantizers]
    with scales_in_log_space(quantizers) as logs:
        for q, e in zip(quantizers, expected, strict=True):
            torch.testing.assert_close(q(x), e, rtol=1e-6, atol=1e-7)
        optimizer = torch.optim.AdamW(logs, lr=1e-2, weight_decay=0.0)
        sum(q(x * 10).pow(2).sum() for q in quantizers).backward()  # pushes every scale
        optimizer.step()
    ratios = [float(q.scale.detach().reshape(-1)[0]) / s for q, s in zip(quantizers, (0.012, 3.3), strict=True)]
    assert all(q.scale is b for q, b in zip(quantizers, before, strict=True))
    assert not any(hasattr(q, "parametrizations") and "scale" in q.parametrizations for q in quantizers)
    assert abs(ratios[0] - ratios[1]) < 1e-4 and abs(ratios[0] - 1) > 5e-3  # the same relative step, a real one


def test_fptquant_trains_log_space_scales_through_checkpointed_layers():
    """With scale_space=log the static scales are parametrized too; they must be computed before the
    checkpointed layers (else the recomputation saves fewer tensors than the forward and the backward stops),
    and come back as plain trained scales."""
    model = make_tiny_model("llama", num_attention_heads=6, num_key_value_heads=2, head_dim=12)
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    args = {"local_steps": 2, "e2e_steps": 3, "batch_size": 2, "range_windows": 2, "resume": False}
    args.update(scale_space="log", scale_lr=0.05)
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    method = fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method
    assert len(method.stats["e2e_losses"]) == 3
    from fptquant.pipelines.static_ranges import static_quantizers

    quantizers = static_quantizers(model)
    assert quantizers and all(not hasattr(q, "parametrizations") for q in quantizers)
    assert all(isinstance(q.scale, torch.nn.Parameter) and (q.scale > 0).all() for q in quantizers)
