"""An optional block-wise stage for FPTQuant, between the local and the end-to-end stages.

Each decoder layer's own parameters (T_k, T_v, T_u, its static activation scales and its learned
clips) are trained to make the quantized layer reproduce the full-precision layer on calibration
data, with the layer-wise loop FlatQuant uses (MSE to the full-precision outputs, inputs from the
full-precision previous layer). The shared residual rotation T_r stays as the local stage left it.
This is not in the paper, whose local stage is data-free; it gives the end-to-end stage a better
start (docs/FPTQUANT.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ...fakequant.wrap import clip_parameters
from ...math.cayley import cached_all
from ...models.base import ModelAdapter
from ...pipelines.layerwise import LayerRecipe, LayerwiseSettings, calibrate_layerwise
from ...pipelines.static_ranges import scale_parameter, static_quantizers
from .transforms import FPTTransforms


class FPTQuantBlocks(LayerRecipe):
    """The per-layer parameters of FPTQuant, for :func:`calibrate_layerwise` (already attached live)."""

    def __init__(self, transforms: FPTTransforms):
        self.transforms = transforms

    def build(self, index: int, layer: nn.Module) -> None:
        pass

    def attach(self, index: int, layer: nn.Module) -> None:
        pass

    def detach(self, index: int, layer: nn.Module) -> None:
        pass

    def deploy(self, index: int, layer: nn.Module) -> None:
        pass  # the whole model is merged at the end

    def param_groups(self, index: int, layer: nn.Module) -> list[dict]:
        own = list(self.transforms.layers[index].parameters())
        scales = [scale_parameter(q) for q in static_quantizers(layer)]
        groups = ({"params": own + scales, "lr_key": "lr"}, {"params": clip_parameters(layer), "lr_key": "clip_lr"})
        return [g for g in groups if g["params"]]

    def step_context(self, index: int):
        return cached_all(self.transforms.rotations())  # T_r (fixed here) solved once per step

    def state(self, index: int, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, index: int, layer: nn.Module, state: dict[str, torch.Tensor]) -> None:
        pass


def train_blockwise(
    model: nn.Module, adapter: ModelAdapter, transforms: FPTTransforms, windows: torch.Tensor, s: LayerwiseSettings
) -> list[float]:
    """Train every layer's own parameters block by block; T_r is frozen meanwhile. Returns each layer's loss."""
    rotation = transforms.residual.weight if transforms.residual is not None else None
    if rotation is not None:
        rotation.requires_grad_(False)
    try:
        return calibrate_layerwise(model, adapter, windows, FPTQuantBlocks(transforms), s, None, "FPTQuant block-wise")
    finally:
        if rotation is not None:
            rotation.requires_grad_(True)
