"""A configurable fake-quantizer module built on :mod:`fptquant.math.quantization`.

One class covers weights, activations and the KV cache: dynamic (scale from the data at run time) or
static (scale stored; calibrated from data, then optionally learned with LSQ gradients), fixed clip
ratio or learnable sigmoid-parametrized clipping (FlatQuant's LWC/LAC).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .quantization import (
    SUPPORTED_BITS,
    Axis,
    fake_quantize,
    from_groups,
    minmax_qparams,
    num_static_units,
    quantize_to_int,
    static_view,
    to_groups,
)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. ``bits=16`` means not quantized."""

    bits: int = 16
    symmetric: bool = True
    axis: Axis = Axis.ROW
    group_size: int | None = None
    dynamic: bool = True
    clip_ratio: float = 1.0
    learnable_clip: bool = False
    clip_init: float = 4.0  # sigmoid logit, as FlatQuant (sigmoid(4) = 0.982)

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bit-width {self.bits}; supported: {SUPPORTED_BITS}")
        object.__setattr__(self, "axis", Axis(self.axis))
        if self.axis is Axis.GROUP and not self.group_size:
            raise ValueError("axis='group' needs a positive group_size")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1], got {self.clip_ratio}")
        if not self.dynamic and self.axis is Axis.ROW:
            raise ValueError("a static quantizer cannot have one scale per row (per token)")
        if not self.dynamic and self.learnable_clip:
            raise ValueError("learnable clipping applies to dynamic quantizers; static scales are learned directly")

    @property
    def enabled(self) -> bool:
        return self.bits < 16

    def with_(self, **changes) -> QuantSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["axis"] = self.axis.value
        return d


class Quantizer(nn.Module):
    """Fake-quantizes its input according to a :class:`QuantSpec`.

    Args:
        spec: the quantization settings.
        features: size of the last dimension (needed by static quantizers).
        clip_units: number of learnable clip pairs; 1 shares one pair (LAC), ``rows`` gives one per row (LWC).
    """

    def __init__(self, spec: QuantSpec, features: int | None = None, clip_units: int = 1):
        super().__init__()
        self.spec = spec
        self.features = features
        self.observing = False
        self.bypass = False  # pass-through without changing the spec (full-precision reference passes)
        self._known_calibrated = False
        if spec.enabled and spec.learnable_clip:
            init = torch.full((clip_units, 1), float(spec.clip_init))
            self.clip_max_logit = nn.Parameter(init.clone())
            self.clip_min_logit = nn.Parameter(init.clone())
        if spec.enabled and not spec.dynamic:
            if features is None:
                raise ValueError("a static quantizer needs the feature size")
            units = num_static_units(spec.axis, features, spec.group_size)
            self.scale = nn.Parameter(torch.ones(units, 1))
            self.register_buffer("zero", torch.zeros(units, 1))
            self.register_buffer("running_min", torch.full((units, 1), float("inf")))
            self.register_buffer("running_max", torch.full((units, 1), float("-inf")))
            self.register_buffer("calibrated", torch.tensor(False))

    def extra_repr(self) -> str:
        s = self.spec
        if not s.enabled:
            return "off"
        kind = "dynamic" if s.dynamic else "static"
        sym = "sym" if s.symmetric else "asym"
        grp = f"({s.group_size})" if s.axis is Axis.GROUP else ""
        learnable = " learnable" if s.learnable_clip else ""
        return f"int{s.bits} {sym} {s.axis.value}{grp} {kind} clip={s.clip_ratio}{learnable}"

    def clip_factors(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The factors of a row's min and max: the clip ratio, or the learned ``sigmoid(logit) · ratio``."""
        ratio = self.spec.clip_ratio
        if not self.spec.learnable_clip:
            return ratio, ratio
        return torch.sigmoid(self.clip_min_logit) * ratio, torch.sigmoid(self.clip_max_logit) * ratio

    def host_clip_pair(self) -> tuple[float, float]:
        """:meth:`clip_factors` as two Python floats (the first entry of a per-row factor); reading a learned
        clip synchronises with its device, so callers keep the result."""
        lo, hi = (float(torch.as_tensor(f).detach().reshape(-1)[0]) for f in self.clip_factors())
        return lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if not s.enabled or self.bypass:
            return x
        if s.dynamic:
            return self._dynamic(x)
        if self.observing:
            self._observe(x)
            return x
        if not self._known_calibrated:  # read the buffer once, not on every call (a GPU synchronisation)
            if not bool(self.calibrated):
                raise RuntimeError("static quantizer used before calibration; run calibration first")
            self._known_calibrated = True
        return self._static(x)

    def _load_from_state_dict(self, *args, **kwargs):
        self._known_calibrated = False
        super()._load_from_state_dict(*args, **kwargs)

    def dynamic_qparams(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` per row of the grouped view ``g``, from its min and max times the clip factors."""
        s = self.spec
        lo, hi = self.clip_factors()
        if s.learnable_clip and g.shape[0] != self.clip_max_logit.shape[0] and self.clip_max_logit.shape[0] != 1:
            raise ValueError(f"{self.clip_max_logit.shape[0]} clip pairs do not match {g.shape[0]} rows")
        return minmax_qparams(g.amin(dim=1, keepdim=True) * lo, g.amax(dim=1, keepdim=True) * hi, s.bits, s.symmetric)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        g = to_groups(x, s.axis, s.group_size)
        scale, zero = self.dynamic_qparams(g)
        return from_groups(fake_quantize(g, scale, zero, s.bits, s.symmetric), s.axis, x.shape)

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a dynamic quantizer stores for ``x``: ``(codes, scale, zero)`` on the grouped view, with
        ``(codes - zero) * scale`` equal, bit for bit, to ``forward(x)`` (grouped)."""
        s = self.spec
        if not (s.enabled and s.dynamic):
            raise ValueError("integer codes come from an enabled dynamic quantizer")
        g = to_groups(x, s.axis, s.group_size)
        scale, zero = self.dynamic_qparams(g)
        return quantize_to_int(g, scale, zero, s.bits, s.symmetric), scale, zero

    def learnable_clip_parameters(self) -> list[nn.Parameter]:
        if not (self.spec.enabled and self.spec.learnable_clip):
            return []
        return [self.clip_max_logit, self.clip_min_logit]

    def _static(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        v = static_view(x, s.axis, s.group_size)
        scale = self.scale.abs().clamp(min=1e-8)
        return fake_quantize(v, scale, self.zero, s.bits, s.symmetric).reshape(x.shape)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        v = static_view(x.detach().float(), self.spec.axis, self.spec.group_size)
        self.running_min.copy_(torch.minimum(self.running_min, v.amin(dim=(0, 2)).unsqueeze(1)))
        self.running_max.copy_(torch.maximum(self.running_max, v.amax(dim=(0, 2)).unsqueeze(1)))

    @torch.no_grad()
    def set_range(self, xmin: torch.Tensor, xmax: torch.Tensor) -> None:
        """Fix the static scale and zero point from a range (already clipped if desired)."""
        s = self.spec
        scale, zero = minmax_qparams(xmin.float(), xmax.float(), s.bits, s.symmetric)
        self.scale.data.copy_(scale.reshape_as(self.scale))
        self.zero.copy_(zero.reshape_as(self.zero))
        self.calibrated.fill_(True)

    @torch.no_grad()
    def finish_observing(self) -> None:
        """Turn the observed min/max (times the clip ratio) into the static scale."""
        if not torch.isfinite(self.running_min).all():
            raise RuntimeError("static quantizer saw no calibration data")
        r = self.spec.clip_ratio
        self.set_range(self.running_min * r, self.running_max * r)
        self.observing = False
