"""RTN and GPTQ without transforms: the baselines every paper reports."""

from __future__ import annotations

import torch
from torch import nn

from ..fakequant.wrap import quantize_model_structure
from ..models.base import ModelAdapter
from .base import Method, register_method


class PlainMethod(Method):
    """Quantizers inserted into the unmodified model; weights by the recipe's weight quantizer."""

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        self.quantize_weights_and_ranges(model, adapter, calibration)

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        self.restore_weights_and_ranges(model, state)


@register_method
class RTN(PlainMethod):
    name = "rtn"
    summary = "no transform; per-channel weights (RTN, or GPTQ with --weights gptq), per-token activations"


@register_method
class GPTQ(PlainMethod):
    name = "gptq"
    summary = "no transform; GPTQ weights (rtn with weight_quantizer=gptq)"
    defaults = {"weight_quantizer": "gptq"}
