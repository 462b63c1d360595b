"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights with per-channel scales.

For the linears after each RMSNorm (q/k/v and gate/up): ``s_j = max|X_j|^α / max|W_j|^(1-α)``;
activations are divided by ``s`` (folded into the norm gain) and weight columns multiplied by ``s``.
Method argument: ``alpha`` (migration strength, default 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from ..fakequant.wrap import quantize_model_structure
from ..math.rotation import scale_input_channels
from ..models.base import ModelAdapter
from ..pipelines.calibration import run_windows
from .base import Method, register_method

SMOOTHED = (("input_norm", ("q", "k", "v")), ("post_attention_norm", ("gate", "up")))


@torch.no_grad()
def input_abs_max(
    model: nn.Module, adapter: ModelAdapter, windows: torch.Tensor
) -> dict[tuple[int, str], torch.Tensor]:
    """Per-channel max |x| of the inputs of the first linear after each norm, over the calibration windows."""
    stats: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(adapter.layers()):
        for norm_name, roles in SMOOTHED:

            def hook(module, args, key=(i, norm_name)):
                amax = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                stats[key] = torch.maximum(stats[key], amax) if key in stats else amax

            hooks.append(adapter.linear(layer, roles[0]).register_forward_pre_hook(hook))
    try:
        run_windows(model, windows, desc="SmoothQuant statistics")
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def apply_smoothing(adapter: ModelAdapter, scales: dict[str, torch.Tensor]) -> None:
    for i, layer in enumerate(adapter.layers()):
        for norm_name, roles in SMOOTHED:
            s = scales[f"smoothquant.{i}.{norm_name}"].to(adapter.model.device)
            norm = getattr(adapter, norm_name)(layer)
            norm.weight.copy_((norm.weight.double() / s.double()).to(norm.weight.dtype))
            for role in roles:
                scale_input_channels(adapter.linear(layer, role).weight, s)


@register_method
class SmoothQuant(Method):
    name = "smoothquant"
    summary = "per-channel activation-to-weight scale migration (--method-arg alpha=0.5 by default)"
    needs_calibration = True

    def _scales(self, model, adapter, calibration) -> dict[str, torch.Tensor]:
        alpha = float(self.recipe.method_args.get("alpha", 0.5))
        xmax = input_abs_max(model, adapter, calibration)
        scales = {}
        for i, layer in enumerate(adapter.layers()):
            for norm_name, roles in SMOOTHED:
                wmax = torch.cat([adapter.linear(layer, r).weight.abs() for r in roles]).amax(0).float()
                s = xmax[(i, norm_name)].clamp(min=1e-5).pow(alpha) / wmax.clamp(min=1e-5).pow(1 - alpha)
                scales[f"smoothquant.{i}.{norm_name}"] = s.clamp(min=1e-5).cpu()
        return scales

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        self.scales = self._scales(model, adapter, calibration)
        apply_smoothing(adapter, self.scales)
        quantize_model_structure(model, adapter, self.recipe)
        self.quantize_weights_and_ranges(model, adapter, calibration)

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        self.scales = {k: state.pop(k) for k in list(state) if k.startswith("smoothquant.")}
        apply_smoothing(adapter, self.scales)
        quantize_model_structure(model, adapter, self.recipe)
        self.restore_weights_and_ranges(model, state)

    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {**super().saved_state(model), **self.scales}
