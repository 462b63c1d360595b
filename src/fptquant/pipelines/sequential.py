"""Layer-by-layer execution over calibration windows (for GPTQ and layer-wise training).

The inputs of the first decoder layer are captured once (the layer is swapped for a catcher that
records its arguments and stops the forward); each layer is then run on them on its own, and its
outputs become the next layer's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.base import ModelAdapter, model_device


class _Stop(Exception):
    pass


class _Catcher(nn.Module):
    def __init__(self, layer: nn.Module, store: list):
        super().__init__()
        self.layer, self.store = layer, store

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((hidden_states.detach(), kwargs))
        raise _Stop


@dataclass
class LayerInputs:
    hidden: list[torch.Tensor]  # one (1, seq, d) tensor per window
    kwargs: dict  # shared keyword arguments of the decoder layers (position embeddings, mask, ...)


@torch.no_grad()
def capture_first_layer_inputs(model: nn.Module, adapter: ModelAdapter, windows: torch.Tensor) -> LayerInputs:
    layers = model.get_submodule(adapter.layers_path)
    store: list = []
    first = layers[0]
    layers[0] = _Catcher(first, store)
    device = model_device(model)
    try:
        for window in windows:
            try:
                model(input_ids=window[None].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = first
    kwargs = {k: v for k, v in store[0][1].items() if k not in ("past_key_values", "past_key_value", "use_cache")}
    kwargs["use_cache"] = False
    return LayerInputs([h for h, _ in store], kwargs)


class StopForward(Exception):
    """Raised from a hook once everything needed from a layer's forward has been seen."""


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs, batch_size: int = 8) -> list[torch.Tensor]:
    """The layer's outputs, running ``batch_size`` windows at a time (a StopForward ends a batch early)."""
    outputs = []
    for start in range(0, len(inputs.hidden), batch_size):
        batch = torch.cat(inputs.hidden[start : start + batch_size])
        try:
            out = layer(batch, **inputs.kwargs)
        except StopForward:
            continue
        out = out[0] if isinstance(out, tuple) else out
        outputs.extend(out.split(1))
    return outputs
