"""Static activation ranges by L_p error minimisation (FPTQuant's initialisation of static scales).

Two passes over the calibration windows with every quantizer bypassed: the first records each
static quantizer's per-unit min/max, the second a histogram of its inputs over that range. The
clip ratio of each unit is then chosen on the histogram to minimise ``Σ |x - Q(x)|^p`` (p = 2 by
default), which is far cheaper than re-quantizing the data for every candidate.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import DataError
from ..fakequant.wrap import quantizers_bypassed
from ..math.quantization import SCALE_EPS, fake_quantize, minmax_qparams, static_view
from ..math.quantizer import Quantizer
from .calibration import run_windows


def static_quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer) and m.spec.enabled and not m.spec.dynamic]


def scale_parameter(q: Quantizer) -> nn.Parameter:
    """The trainable tensor behind a static quantizer's scale (its log inside :func:`scales_in_log_space`)."""
    return q.parametrizations.scale.original if parametrize.is_parametrized(q, "scale") else q.scale


class _Exp(nn.Module):
    """``scale = exp(θ)``: trained this way, an optimizer step changes every scale by the same relative amount."""

    def forward(self, log_scale: torch.Tensor) -> torch.Tensor:
        return log_scale.exp()

    def right_inverse(self, scale: torch.Tensor) -> torch.Tensor:
        return scale.abs().clamp_min(SCALE_EPS).log()


@contextlib.contextmanager
def scales_in_log_space(quantizers: list[Quantizer]):
    """Inside the block each static quantizer's ``scale`` is ``exp`` of a trainable log-scale; yields those
    parameters, and on exit leaves plain scales with the trained values (the same tensors as before).

    Why: SmolLM2's static scales span 0.012 (o_proj and down_proj inputs after S_n) to 3.3. AdamW moves every
    entry by about its learning rate per step, so a shared lr of 1e-3 moved the smallest scales by 8% a step
    while barely moving the largest; in log space each moves by the same fraction."""
    for q in quantizers:
        parametrize.register_parametrization(q, "scale", _Exp(), unsafe=True)
    try:
        yield [scale_parameter(q) for q in quantizers]
    finally:
        for q in quantizers:
            parametrize.remove_parametrizations(q, "scale", leave_parametrized=True)


def _units(q: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """``(units, values)`` view of an input, in float32."""
    v = static_view(x.detach().float(), q.spec.axis, q.spec.group_size)
    return v.transpose(0, 1).reshape(v.shape[1], -1)


@contextlib.contextmanager
def _hooks(quantizers: list[Quantizer], fn):
    handles = [q.register_forward_pre_hook(lambda m, args: fn(m, args[0])) for q in quantizers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def init_static_ranges_lp(
    model: nn.Module, windows: torch.Tensor, p: float = 2.0, bins: int = 2048, grid: int = 100, min_ratio: float = 0.05
) -> None:
    """Set every static quantizer's scale to the clipped range that minimises the L_p quantization error."""
    quantizers = static_quantizers(model)
    if not quantizers:
        return
    if windows is None or len(windows) == 0:
        raise DataError("static activation quantizers need calibration data")
    lo, hi = {}, {}

    def observe(q, x):
        u = _units(q, x)
        lo[q] = torch.minimum(lo[q], u.amin(1)) if q in lo else u.amin(1)
        hi[q] = torch.maximum(hi[q], u.amax(1)) if q in hi else u.amax(1)

    with quantizers_bypassed(model), _hooks(quantizers, observe):
        run_windows(model, windows, desc="static ranges: min/max")
    counts = {}

    def histogram(q, x):
        u = _units(q, x)
        width = (hi[q] - lo[q]).clamp(min=1e-12)[:, None]
        idx = ((u - lo[q][:, None]) / width * bins).long().clamp_(0, bins - 1)
        idx += torch.arange(u.shape[0], device=u.device)[:, None] * bins
        c = torch.bincount(idx.flatten(), minlength=u.shape[0] * bins).view(u.shape[0], bins)
        counts[q] = counts[q] + c if q in counts else c

    with quantizers_bypassed(model), _hooks(quantizers, histogram):
        run_windows(model, windows, desc="static ranges: histograms")
    for q in quantizers:
        xmin, xmax = _lp_range(lo[q], hi[q], counts[q].double(), q.spec.bits, q.spec.symmetric, p, grid, min_ratio)
        q.set_range(xmin[:, None], xmax[:, None])


def _lp_range(lo, hi, counts, bits, symmetric, p, grid, min_ratio):
    """Per-unit ``(xmin, xmax)``: the min/max shrunk by the ratio with the lowest histogram L_p error."""
    n = counts.shape[1]
    edges = torch.linspace(0, 1, n + 1, dtype=torch.float64, device=lo.device)
    centers = lo.double()[:, None] + (hi - lo).double()[:, None] * (edges[:-1] + edges[1:])[None, :] / 2
    best_err = torch.full_like(lo, float("inf"), dtype=torch.float64)
    best = torch.ones_like(lo, dtype=torch.float64)
    for ratio in torch.linspace(1.0, min_ratio, grid, dtype=torch.float64).tolist():
        scale, zero = minmax_qparams(lo.double()[:, None] * ratio, hi.double()[:, None] * ratio, bits, symmetric)
        err = ((fake_quantize(centers, scale, zero, bits, symmetric) - centers).abs().pow(p) * counts).sum(1)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, ratio, best)
    return lo * best.to(lo.dtype), hi * best.to(hi.dtype)
