"""``QuantLinear``: an ``nn.Linear`` whose input and weight pass through fake-quantizers.

It subclasses ``nn.Linear`` and shares the original parameters, so state-dict keys
(``...q_proj.weight``) are unchanged and the module is a drop-in replacement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..math.quantizer import Quantizer, QuantSpec


class QuantLinear(nn.Linear):
    """``y = Q_a(T(x)) Q_w(W)^T + b`` where ``T`` is an optional online input transform.

    Methods usually replace ``W`` by its quantized value once (RTN, GPTQ) and switch ``Q_w`` off; a
    live ``Q_w`` is for training with learnable weight clipping. ``weight_transform`` and
    ``bias_transform`` (optional modules) recompute the effective weight and bias from the stored ones
    on every forward, for training transforms that are merged afterwards. They play the role of
    ``torch.nn.utils.parametrize`` without its per-module generated class, so every layer keeps the
    same type and one compiled training step serves all of them.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.input_transform: nn.Module | None = None
        self.weight_transform: nn.Module | None = None
        self.bias_transform: nn.Module | None = None
        self.input_quantizer = Quantizer(QuantSpec())
        self.weight_quantizer = Quantizer(QuantSpec())

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_spec: QuantSpec, act_spec: QuantSpec) -> QuantLinear:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = linear.in_features, linear.out_features
        q.weight, q.bias = linear.weight, linear.bias
        q.input_transform = q.weight_transform = q.bias_transform = None
        q.set_quantizers(weight_spec, act_spec)
        return q

    def set_quantizers(self, weight_spec: QuantSpec, act_spec: QuantSpec) -> None:
        device = self.weight.device
        self.weight_quantizer = Quantizer(weight_spec, self.in_features, clip_units=self.out_features).to(device)
        self.input_quantizer = Quantizer(act_spec, self.in_features).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        x = self.input_quantizer(x)
        weight = self.weight if self.weight_transform is None else self.weight_transform(self.weight)
        bias = self.bias
        if bias is not None and self.bias_transform is not None:
            bias = self.bias_transform(bias)
        return F.linear(x, self.weight_quantizer(weight), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w={self.weight_quantizer.extra_repr()}, a={self.input_quantizer.extra_repr()}"
