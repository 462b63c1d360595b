"""Integer fake-quantization primitives (pure tensor code, no model knowledge).

Every quantizer in fptquant reduces to three steps on a 2-D *grouped view* of the tensor, in
which each row shares one scale (and zero point):

1. ``to_groups`` reshapes the tensor so that rows are the units that share a scale;
2. ``minmax_qparams`` turns per-row ranges into (scale, zero);
3. ``fake_quantize`` rounds onto the integer grid and back, with straight-through gradients.

Symmetric grids are ``[-2^(b-1), 2^(b-1)-1]`` with ``scale = max|x| / (2^(b-1)-1)`` (the
convention of QuaRot and FlatQuant); asymmetric grids are ``[0, 2^b-1]`` with an integer zero point.
"""

from __future__ import annotations

import enum

import torch

SCALE_EPS = 1e-8
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


class Axis(str, enum.Enum):
    """Which elements share one scale, in terms of a tensor's last dimension (the features)."""

    TENSOR = "tensor"  # one scale for everything
    ROW = "row"  # one scale per row (per token for activations, per output channel for weights)
    GROUP = "group"  # one scale per `group_size` consecutive features of each row (e.g. per head)
    COLUMN = "column"  # one scale per feature, shared by all rows (per input channel)


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` of a ``bits``-bit quantizer."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit-width {bits}; supported: {SUPPORTED_BITS}")
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def to_groups(x: torch.Tensor, axis: Axis, group_size: int | None = None) -> torch.Tensor:
    """View ``x`` as 2-D ``(units, elements)`` where each row shares one scale."""
    n = x.shape[-1]
    if axis is Axis.TENSOR:
        return x.reshape(1, -1)
    if axis is Axis.ROW:
        return x.reshape(-1, n)
    if axis is Axis.GROUP:
        if not group_size or n % group_size:
            raise ValueError(f"group size {group_size} does not divide the feature size {n}")
        return x.reshape(-1, group_size)
    if axis is Axis.COLUMN:
        return x.reshape(-1, n).t()
    raise ValueError(f"unknown axis {axis!r}")


def from_groups(g: torch.Tensor, axis: Axis, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_groups`."""
    if axis is Axis.COLUMN:
        return g.t().reshape(shape)
    return g.reshape(shape)


def num_static_units(axis: Axis, features: int, group_size: int | None = None) -> int:
    """Number of scales a *static* quantizer stores: scales must not depend on the token."""
    if axis is Axis.TENSOR:
        return 1
    if axis is Axis.COLUMN:
        return features
    if axis is Axis.GROUP:
        return features // group_size
    raise ValueError("a static quantizer cannot have one scale per row (per token): rows vary at run time")


def static_view(x: torch.Tensor, axis: Axis, group_size: int | None = None) -> torch.Tensor:
    """View ``x`` as ``(tokens, units, elements)`` so a static scale of shape ``(units, 1)`` broadcasts."""
    n = x.shape[-1]
    if axis is Axis.TENSOR:
        return x.reshape(1, 1, -1)
    if axis is Axis.COLUMN:
        return x.reshape(-1, n, 1)
    if axis is Axis.GROUP:
        return x.reshape(-1, n // group_size, group_size)
    raise ValueError("a static quantizer cannot have one scale per row")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with an identity (straight-through) gradient.

    One kernel forward and none backward: ``x + (round(x) - x).detach()`` gives the same values (``round(x)
    - x`` is exact below 2^22) in three, and training steps launch tens of thousands of these."""
    return _RoundSTE.apply(x)


class _SymmetricFakeQuantize(torch.autograd.Function):
    """``clamp(round(x / s), qmin, qmax) * s`` with the gradients autograd would give the composition
    (straight-through for ``x`` inside the grid, LSQ for ``s``), in a few fused-by-hand kernels: the
    composition's backward (clamp mask, division rule, broadcast sum) takes more kernels."""

    @staticmethod
    def forward(ctx, x, scale, qmin: int, qmax: int):
        t = x / scale
        r = torch.round(t)
        inside = (r >= qmin) & (r <= qmax)
        q = torch.clamp(r, qmin, qmax)
        ctx.save_for_backward(t, q, inside, scale)
        return q * scale

    @staticmethod
    def backward(ctx, grad):
        t, q, inside, scale = ctx.saved_tensors
        grad_x = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(inside, grad, 0.0)  # autograd's (grad·s)/s, without its rounding
        if ctx.needs_input_grad[1]:
            local = grad * torch.where(inside, q - t, q)  # d(q s)/ds = q - t inside the grid, q outside
            grad_scale = local.sum_to_size(scale.shape).to(scale.dtype)
        return grad_x, grad_scale, None, None


def minmax_qparams(
    xmin: torch.Tensor, xmax: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[xmin, xmax]`` onto the integer grid.

    Differentiable in ``xmin``/``xmax`` (the zero point uses a straight-through round), which is what
    learnable clipping needs.
    """
    qmin, qmax = int_range(bits, symmetric)
    xmin = torch.clamp(xmin, max=0.0)
    xmax = torch.clamp(xmax, min=0.0)
    if symmetric:
        scale = torch.maximum(-xmin, xmax) / qmax
        scale = torch.clamp(scale, min=SCALE_EPS)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((xmax - xmin) / (qmax - qmin), min=SCALE_EPS)
    zero = torch.clamp(round_ste(-xmin / scale), qmin, qmax)
    return scale, zero


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize. Gradients: straight-through for ``x`` inside the grid, LSQ-style for ``scale``."""
    qmin, qmax = int_range(bits, symmetric)
    if symmetric:  # the zero point is 0: one autograd node
        return _SymmetricFakeQuantize.apply(x, scale, qmin, qmax)
    q = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """The integer codes (as int32) that :func:`fake_quantize` would dequantize."""
    qmin, qmax = int_range(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax).to(torch.int32)


def dynamic_fake_quantize(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    axis: Axis,
    group_size: int | None = None,
    clip_ratio: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Fake-quantize with scales computed from ``x`` itself (min-max, optionally clipped)."""
    if bits >= 16:
        return x
    g = to_groups(x, axis, group_size)
    xmin = g.amin(dim=1, keepdim=True) * clip_ratio
    xmax = g.amax(dim=1, keepdim=True) * clip_ratio
    scale, zero = minmax_qparams(xmin, xmax, bits, symmetric)
    return from_groups(fake_quantize(g, scale, zero, bits, symmetric), axis, x.shape)


@torch.no_grad()
def search_clip_ratio(
    groups: torch.Tensor, bits: int, symmetric: bool, grid: int = 100, max_shrink: float = 0.8, norm: float = 2.4
) -> torch.Tensor:
    """Per-row clip ratio minimising ``Σ|x - Q(x)|^norm`` over ``1, 1-1/grid, ..., 1-max_shrink``.

    The grid search QuaRot/GPTQ use for weights (``--w_clip``); returns ratios of shape ``(rows, 1)``.
    """
    xmin, xmax = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    best = torch.full_like(xmin, float("inf"))
    ratio = torch.ones_like(xmin)
    for i in range(int(max_shrink * grid) + 1):
        p = 1 - i / grid
        scale, zero = minmax_qparams(xmin * p, xmax * p, bits, symmetric)
        err = (fake_quantize(groups, scale, zero, bits, symmetric) - groups).abs().pow(norm).sum(1, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        ratio = torch.where(better, torch.full_like(ratio, p), ratio)
    return ratio


def weight_qparams(
    groups: torch.Tensor, bits: int, symmetric: bool, clip_ratio: float = 1.0, clip_search: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of a grouped weight view (min-max, fixed clip or searched clip)."""
    ratio = search_clip_ratio(groups, bits, symmetric) if clip_search else clip_ratio
    return minmax_qparams(groups.amin(1, keepdim=True) * ratio, groups.amax(1, keepdim=True) * ratio, bits, symmetric)
