"""FlatQuant (Sun et al., 2024): learnable Kronecker affine transforms + learnable clipping, layer-wise.

``apply``: fake-quantized structure -> per layer: build the transforms, SmoothQuant-style init of the
diagonals, layer-wise calibration with LWC/LAC, merge into the deploy form -> RTN with the learned
weight clip (exactly what training saw) or GPTQ on the same learned per-row grid. The learned state is
saved, so ``restore`` rebuilds the deploy model without calibrating again.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from ...config.recipe import Recipe
from ...errors import ConfigError
from ...fakequant.wrap import (
    clip_parameters,
    learnable_clipping,
    named_clip_parameters,
    quantize_model_structure,
    quantizers_bypassed,
)
from ...math.cayley import cached_all
from ...models.base import ModelAdapter
from ...pipelines.checkpoints import CheckpointStore
from ...pipelines.layerwise import LayerRecipe, calibrate_layerwise
from ...pipelines.weights import gptq_weights, restore_weights, rtn_with_learned_clip, saved_weight_state
from ..base import Method, register_method
from .options import FlatQuantOptions
from .transforms import LayerTransforms, TransformOptions, attach_live, deploy, detach_live

log = logging.getLogger(__name__)
PREFIX = "flatquant.layers"
# Which transform feeds which linears (for the SmoothQuant-style init of its diagonal).
DIAGONAL_READERS = (("attn_in", ("q", "k", "v")), ("mlp_in", ("gate", "up")), ("down_in", ("down",)))


class FlatQuantLayers(LayerRecipe):
    def __init__(self, adapter: ModelAdapter, recipe: Recipe, options: FlatQuantOptions):
        self.adapter, self.recipe, self.options = adapter, recipe, options
        self.transform_options = TransformOptions(
            transforms=options.transforms,
            diag=options.diag,
            factor=options.factor,
            bf16=options.online_bf16,
            rotate_qk=recipe.bit_spec.kv_cache < 16,
        )
        self.transforms: dict[int, LayerTransforms] = {}

    def build(self, index: int, layer: nn.Module) -> None:
        gen = torch.Generator().manual_seed(self.recipe.seed * 100003 + index)
        device = self.adapter.linear(layer, "q").weight.device
        self.transforms[index] = LayerTransforms(self.adapter, self.transform_options, gen).to(device)
        if self.options.clip:
            learnable_clipping(layer)

    @torch.no_grad()
    def initialize(self, index: int, layer: nn.Module, inputs: torch.Tensor, kwargs: dict) -> None:
        """``c = max|W|^(1-α) / max|X|^α`` per input channel (FlatQuant's ``sq_style`` init)."""
        t = self.transforms[index]
        readers = [(getattr(t, name), roles) for name, roles in DIAGONAL_READERS]
        readers = [(tr, roles) for tr, roles in readers if tr is not None and tr.diag is not None]
        if not readers:
            return
        xmax, hooks = {}, []
        for key, (_, roles) in enumerate(readers):

            def record(module, args, key=key):
                m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                xmax[key] = torch.maximum(xmax[key], m) if key in xmax else m

            hooks.append(self.adapter.linear(layer, roles[0]).register_forward_pre_hook(record))
        device = self.adapter.linear(layer, "q").weight.device
        try:
            with quantizers_bypassed(layer):
                for start in range(0, len(inputs), 8):
                    layer(inputs[start : start + 8].to(device), **kwargs)
        finally:
            for h in hooks:
                h.remove()
        alpha = self.options.diag_alpha
        for key, (tr, roles) in enumerate(readers):
            wmax = torch.cat([self.adapter.linear(layer, r).weight.abs() for r in roles]).amax(0).float()
            tr.diag.copy_((wmax.pow(1 - alpha) / xmax[key].clamp(min=1e-5).pow(alpha)).clamp(min=1e-5))

    def attach(self, index: int, layer: nn.Module) -> None:
        attach_live(self.adapter, layer, self.transforms[index])

    def detach(self, index: int, layer: nn.Module) -> None:
        detach_live(self.adapter, layer)

    def param_groups(self, index: int, layer: nn.Module) -> list[dict]:
        groups = [
            {"params": list(self.transforms[index].parameters()), "lr_key": "lr"},
            {"params": clip_parameters(layer), "lr_key": "clip_lr"},
        ]
        return [g for g in groups if g["params"]]

    def step_context(self, index: int):
        return cached_all(self.transforms[index].rotations(), batched=True)  # one solve per size and step

    def _live_state(self, index: int, layer: nn.Module) -> dict[str, torch.Tensor]:
        state = {f"t.{k}": v for k, v in self.transforms[index].state_dict().items()}
        state.update({f"clip.{k}": v for k, v in named_clip_parameters(layer).items()})
        return state

    def state(self, index: int, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._live_state(index, layer).items()}

    @torch.no_grad()
    def load_state(self, index: int, layer: nn.Module, state: dict[str, torch.Tensor]) -> None:
        t = self.transforms[index]
        expected = set(self._live_state(index, layer))
        if set(state) != expected:
            diff = sorted(set(state) ^ expected)[:3]
            raise ConfigError(f"saved FlatQuant state of layer {index} does not match this model/recipe ({diff})")
        t.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("t.")})
        for key, param in named_clip_parameters(layer).items():
            param.copy_(state[f"clip.{key}"])

    def deploy(self, index: int, layer: nn.Module) -> None:
        deploy(self.adapter, layer, self.transforms[index])


@register_method
class FlatQuant(Method):
    name = "flatquant"
    summary = "learnable Kronecker affine transforms + LWC/LAC, trained layer-wise (15 epochs); RTN or GPTQ"
    needs_calibration = True
    defaults = {"act_clip_ratio": 1.0, "kv_clip_ratio": 1.0, "weight_clip_search": False}

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        if self.recipe.act_static:
            raise ConfigError("FlatQuant quantizes activations per token (dynamic); --act-static is not supported")
        self.options = FlatQuantOptions.from_method_args(self.recipe.method_args)
        self.learned: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []

    def _store(self, model: nn.Module, calibration: torch.Tensor) -> CheckpointStore | None:
        if not self.options.resume:
            return None
        r = self.recipe
        settings = {
            "method": self.name,
            "bits": r.bits,
            "weight": r.weight_spec().to_dict(),
            "act": r.activation_spec().to_dict(),
            "kv": r.kv_spec(1).to_dict(),
            "seed": r.seed,
            "options": self.options.fingerprint_dict(),
        }
        return CheckpointStore.for_run(self.name, model, settings, calibration, self.options.checkpoint_dir)

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        layers = FlatQuantLayers(adapter, self.recipe, self.options)
        settings = self.options.layerwise(self.recipe.seed)
        store = self._store(model, calibration)
        resumed = len(store.completed()) if store is not None else 0
        if resumed:
            log.warning("FlatQuant: resuming, %d calibrated layer(s) found in %s", resumed, store.root)
        start = time.perf_counter()
        self.losses = calibrate_layerwise(model, adapter, calibration, layers, settings, store, "FlatQuant")
        self.stats.update(
            calibration_seconds=time.perf_counter() - start,
            resumed_layers=resumed,
            final_layer_losses=self.losses,
        )
        self.learned = {
            f"{PREFIX}.{i}.{k}": v
            for i, layer in enumerate(adapter.layers())
            for k, v in layers.state(i, layer).items()
        }
        self._quantize_weights(model, adapter, calibration)

    @torch.no_grad()
    def _quantize_weights(self, model: nn.Module, adapter: ModelAdapter, calibration) -> None:
        if self.recipe.weight_quantizer == "gptq":
            # GPTQ on each row's learned grid (LWC). The weights are not clamped to the clip first: that would
            # apply the clip twice (the grid is derived from the clip) and hide the clipping error from GPTQ.
            gptq_weights(model, adapter, self.recipe, calibration)
            return
        rtn_with_learned_clip(model)  # what training saw

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        layers = FlatQuantLayers(adapter, self.recipe, self.options)
        self.learned = {k: state.pop(k) for k in list(state) if k.startswith(PREFIX + ".")}
        for i, layer in enumerate(adapter.layers()):
            prefix = f"{PREFIX}.{i}."
            layers.build(i, layer)
            layers.load_state(i, layer, {k[len(prefix) :]: v for k, v in self.learned.items() if k.startswith(prefix)})
            layers.deploy(i, layer)
        if self.recipe.weight_quantizer == "gptq":
            restore_weights(model, self.recipe, state)
        else:
            self._quantize_weights(model, adapter, None)
        if state:
            raise ConfigError(f"unexpected entries in the saved FlatQuant state: {sorted(state)[:3]}")

    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {**self.learned, **saved_weight_state(model, self.recipe)}
