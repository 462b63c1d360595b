"""RTN: round-to-nearest min-max quantization, no transform. The baseline every paper reports."""

from __future__ import annotations

import torch
from torch import nn

from ..fakequant.wrap import quant_linears, quantize_model_structure
from ..models.base import ModelAdapter
from ..pipelines.calibration import calibrate_static_ranges
from .base import Method, load_quantizer_state, register_method


@register_method
class RTN(Method):
    name = "rtn"
    summary = "round-to-nearest: per-channel symmetric min-max weights, per-token dynamic activations"

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        calibrate_static_ranges(model, calibration)
        for _, linear in quant_linears(model):
            linear.bake_weight_quantization()

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        for _, linear in quant_linears(model):
            linear.bake_weight_quantization()
        load_quantizer_state(model, state)
