"""GPTQ against RTN on a layer whose inputs are correlated (the case GPTQ's error feedback exploits)."""

from __future__ import annotations

import pytest
import torch

from fptquant.math.gptq import HessianAccumulator, gptq_quantize
from fptquant.math.quantization import Axis, dynamic_fake_quantize


def correlated_inputs(n: int, features: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.exp(torch.randn(features, generator=g))
    return (torch.randn(n, features, generator=g) @ mixing) * scales + 0.1 * torch.randn(n, features, generator=g)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size,act_order", [(None, False), (None, True), (32, False), (32, True)])
def test_gptq_output_error_below_rtn(bits, group_size, act_order):
    x = correlated_inputs(2048, 96)
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(96, x.device)
    for chunk in x.split(500):
        acc.add(chunk)
    torch.testing.assert_close(acc.H, 2 * x.t() @ x / len(x), rtol=1e-4, atol=1e-4)
    q = gptq_quantize(w, acc.H, bits, group_size=group_size, act_order=act_order, block_size=32)
    axis = Axis.GROUP if group_size else Axis.ROW
    rtn = dynamic_fake_quantize(w, bits, True, axis, group_size)
    err_gptq = (x @ w.t() - x @ q.t()).norm()
    err_rtn = (x @ w.t() - x @ rtn.t()).norm()
    assert err_gptq < 0.9 * err_rtn
    # every row (or group) of the result lies on a grid of at most 2^bits evenly spaced levels through 0
    groups = q.reshape(-1, group_size) if group_size else q
    for row in groups[:8]:
        levels = torch.unique(row)
        assert len(levels) <= 2**bits
        step = (levels[1:] - levels[:-1]).min()
        torch.testing.assert_close(levels / step, torch.round(levels / step), rtol=0, atol=1e-3)


def test_gptq_with_clip_search_is_not_worse_on_weights_with_outliers():
    x = correlated_inputs(1024, 64, seed=2)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    w[:, 0] *= 8  # outlier column: min-max scales waste range on it
    acc = HessianAccumulator(64, x.device)
    acc.add(x)
    plain = gptq_quantize(w, acc.H, 4)
    searched = gptq_quantize(w, acc.H, 4, clip_search=True)
    assert (x @ (w - searched).t()).norm() <= 1.05 * (x @ (w - plain).t()).norm()
