"""FPTQuant (van Breugel et al., 2025): function-preserving transforms, a local L4 stage, then
end-to-end student–teacher training of the transforms and the (static) activation scales.

Pipeline: fold the norms (untying the embeddings), put T_d online before down_proj and S_n into
every layer (with static activations), attach T_r/T_k/T_v/T_u live, run the local stage,
initialise static scales by L_p (p = 2) error, train end to end, then merge every mergeable
transform into the weights in float64 and quantize the weights (RTN, or GPTQ after W16 training).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace

import torch
from torch import nn

from ...config.recipe import Recipe
from ...errors import ConfigError
from ...fakequant.residual_scaling import enable_residual_scaling
from ...fakequant.wrap import clip_parameters, learnable_clipping, quant_linears, quantize_model_structure
from ...math.online import online_hadamard
from ...math.quantization import Axis
from ...math.quantizer import Quantizer
from ...models.base import ModelAdapter, model_device
from ...pipelines.checkpoints import CheckpointStore
from ...pipelines.distill import StepCheckpoint, train_end_to_end
from ...pipelines.residual import fold_norms
from ...pipelines.static_ranges import init_static_ranges_lp, scales_in_log_space, static_quantizers
from ...pipelines.weights import (
    init_learned_weight_clip,
    quantize_weights,
    restore_weights,
    rtn_with_learned_clip,
)
from ..base import Method, load_quantizer_state, quantizer_state, register_method
from ..quarot import orthogonal_or_fallback
from .blockwise import train_blockwise
from .live import attach, computed_once, detach, merge
from .local import optimize_local
from .options import RESIDUAL_SCALINGS, FPTQuantOptions
from .transforms import FPTTransforms

log = logging.getLogger(__name__)
PREFIX = "fptquant.transforms."
CLIP_PREFIX = "fptquant.weight_clip."


@register_method
class FPTQuant(Method):
    name = "fptquant"
    summary = "FPTQuant: pre-RoPE/value/MLP/residual transforms, online Hadamards, local L4 then e2e (JSD) training"
    needs_calibration = True

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.options = FPTQuantOptions.from_method_args(self.recipe.method_args)
        self.transforms: FPTTransforms | None = None
        self.weight_clip: dict[str, torch.Tensor] = {}

    # --- structure --------------------------------------------------------------------------
    def _prerope(self, adapter: ModelAdapter) -> bool:
        has_qk_norm = adapter.qk_norms(adapter.layers()[0]) is not None
        if self.options.prerope and has_qk_norm:
            raise ConfigError(
                f"{adapter.name} normalises q and k per head before RoPE, so the pre-RoPE transform T_k is not "
                "function-preserving there; drop --method-arg prerope=true"
            )
        if self.options.prerope is None and has_qk_norm:
            log.info("FPTQuant: pre-RoPE transform off (q/k norms before RoPE make it non-mergeable)")
        return bool(self.options.prerope if self.options.prerope is not None else not has_qk_norm)

    def _learns_weight_clip(self, recipe: Recipe) -> bool:
        """Weights get a clip per row learned end to end: RTN ones, and GPTQ ones with ``gptq_scales=learned``
        (otherwise GPTQ trains at W16 and sets its own grid)."""
        if self.options.weight_clip != "learned":
            return False
        return recipe.weight_quantizer != "gptq" or self.options.gptq_scales == "learned"

    def _structure(self, model: nn.Module, adapter: ModelAdapter, recipe: Recipe, restoring: bool = False) -> None:
        """Quantizers as ``recipe`` says, static ones per channel when asked (keeps nothing learned).
        ``restoring``: saved GPTQ weights come back as they are, so no weight clips are made for them."""
        quantize_model_structure(model, adapter, recipe)
        if recipe.act_static and self.options.static_granularity == "channel":
            for _, linear in quant_linears(model):
                spec = linear.input_quantizer.spec.with_(axis=Axis.COLUMN)
                linear.input_quantizer = Quantizer(spec, linear.in_features).to(linear.weight.device)
        learn_w, learn_a = self._learns_weight_clip(recipe), self.options.act_clip == "learned"
        learn_w = learn_w and not (restoring and recipe.weight_quantizer == "gptq")
        if learn_w or learn_a:  # static activation quantizers learn their scales instead
            learnable_clipping(model, weights=learn_w, activations=learn_a, kv=learn_a)

    def _build(self, model: nn.Module, adapter: ModelAdapter, recipe: Recipe) -> FPTTransforms:
        """Quantizers, folded norms, online T_d and S_n, and identity-initialised learnable transforms."""
        self._structure(model, adapter, recipe)
        fold_norms(adapter)
        o = self.options
        down = online_hadamard(o.down_rotation, adapter.intermediate_size)
        attn_out = online_hadamard(o.o_rotation, adapter.num_heads * adapter.head_dim)
        for layer in adapter.layers():
            adapter.linear(layer, "down").input_transform = down
            adapter.linear(layer, "o").input_transform = attn_out
        if RESIDUAL_SCALINGS[o.residual_scaling]:
            enable_residual_scaling(adapter, RESIDUAL_SCALINGS[o.residual_scaling])
        gen = torch.Generator().manual_seed(self.recipe.seed)
        init = orthogonal_or_fallback(adapter.hidden_size, gen, "T_r (hidden size)") if o.residual else None
        device = adapter.embeddings().weight.device
        return FPTTransforms(adapter, init, self._prerope(adapter), o.values, o.up_scale, down, attn_out).to(device)

    def _training_recipe(self) -> Recipe:
        # GPTQ follows, so the transforms are trained with full-precision weights (as SpinQuant does),
        # unless GPTQ is to use the per-row clips learned with the weights quantized.
        if self.recipe.weight_quantizer != "gptq" or self.options.gptq_scales == "learned":
            return self.recipe
        return Recipe.from_dict({**self.recipe.to_dict(), "bits": str(replace(self.recipe.bit_spec, weights=16))})

    # --- training ---------------------------------------------------------------------------
    def _store(self, model: nn.Module, calibration: torch.Tensor) -> CheckpointStore | None:
        if not self.options.resume:
            return None
        settings = {"method": self.name, "recipe": self.recipe.to_dict(), "options": self.options.fingerprint_dict()}
        settings["recipe"].pop("method_args")
        return CheckpointStore.for_run(self.name, model, settings, calibration, self.options.checkpoint_dir)

    def _e2e_windows(self, calibration: torch.Tensor) -> torch.Tensor:
        n = self.options.e2e_seqlen
        if n is None or n >= calibration.shape[1]:
            return calibration
        usable = calibration[:, : calibration.shape[1] // n * n]
        return usable.reshape(-1, n)

    def _check(self) -> str | None:
        cond = self.transforms.max_value_condition()
        if cond is not None and float(cond) > self.options.max_condition:
            return f"a value transform T_v's condition number reached {float(cond):.3g} (> max_condition)"
        return None

    def _scale_space(self, model: nn.Module):
        """A block in which the static scales train as ``scale_space`` says; yields their trainable tensors."""
        quantizers = static_quantizers(model)
        if self.options.scale_space == "log":
            return scales_in_log_space(quantizers)
        return contextlib.nullcontext([q.scale for q in quantizers])

    def _blockwise(self, model, adapter: ModelAdapter, calibration: torch.Tensor, store) -> None:
        saved = store.load("blockwise") if store is not None else None
        start = time.perf_counter()
        if saved is not None:
            device = model_device(model)
            self.transforms.load_state_dict({k[2:]: v.to(device) for k, v in saved.items() if k.startswith("t.")})
            load_quantizer_state(model, {k[2:]: v for k, v in saved.items() if k.startswith("q.")})
            log.warning("FPTQuant: block-wise stage loaded from %s", store.root)
            return
        windows = calibration[: self.options.blockwise_windows]
        settings = self.options.blockwise(self.recipe.seed)
        with self._scale_space(model):
            self.stats["blockwise_losses"] = train_blockwise(model, adapter, self.transforms, windows, settings)
        self.stats["blockwise_seconds"] = time.perf_counter() - start
        if store is not None:
            state = {f"t.{k}": v for k, v in self.transforms.state_dict().items()}
            store.save("blockwise", {**state, **{f"q.{k}": v for k, v in quantizer_state(model).items()}})

    def _train(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor) -> None:
        o, t = self.options, self.transforms
        store = self._store(model, calibration)
        local = store.load("local") if store is not None else None
        start = time.perf_counter()
        if local is not None:
            t.load_state_dict({k: v.to(model_device(model)) for k, v in local.items()})
            log.warning("FPTQuant: local stage loaded from %s", store.root)
        else:
            self.stats["local_losses"] = optimize_local(adapter, t, o.local_steps, o.local_lr, o.local_p, o.cuda_graph)
            if store is not None:
                store.save("local", t.state_dict())
        self.stats["local_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad(), computed_once(adapter, t):
            init_learned_weight_clip(model)  # a resumed end-to-end stage loads its own clips over these
            init_static_ranges_lp(model, calibration[: o.range_windows], p=o.range_p)
        self.stats["range_seconds"] = time.perf_counter() - start
        rotation = [t.residual.weight] if t.residual is not None else []
        others = [p for name, p in t.named_parameters() if not name.startswith("residual.")]
        clips = clip_parameters(model)
        for p in rotation + others + [q.scale for q in static_quantizers(model)] + clips:
            p.requires_grad_(True)
        if o.blockwise_epochs:
            self._blockwise(model, adapter, calibration, store)
        start = time.perf_counter()
        checkpoint = StepCheckpoint(store.root, "e2e") if store is not None else None
        norms: list[list[float]] = []
        with self._scale_space(model) as scales:
            groups = [
                g
                for g in (
                    {"params": others, "lr": o.lr, "name": "transforms"},
                    {"params": rotation, "lr": o.rotation_lr, "name": "residual rotation"},
                    {"params": scales, "lr": o.scale_lr, "name": "static scales"},
                    {"params": clips, "lr": o.clip_lr, "name": "clips"},
                )
                if g["params"]
            ]
            self.stats["e2e_losses"] = train_end_to_end(
                model,
                groups,
                self._e2e_windows(calibration),
                o.distill(self.recipe.seed),
                context=lambda: computed_once(adapter, t),
                check=self._check,
                checkpoint=checkpoint,
                desc="FPTQuant end-to-end",
                grad_norms=norms,
            )
        self.stats["e2e_grad_norm_groups"] = [g["name"] for g in groups]
        self.stats["e2e_grad_norms"] = norms
        self.stats["e2e_seconds"] = time.perf_counter() - start

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        self.transforms = self._build(model, adapter, self._training_recipe())
        attach(adapter, self.transforms)
        try:
            self._train(model, adapter, calibration)
        finally:
            detach(adapter)
        for p in self.transforms.parameters():
            p.requires_grad_(False)
        self._finish(model, adapter, calibration, None)

    def _finish(self, model, adapter, calibration, state: dict[str, torch.Tensor] | None) -> None:
        """Merge (float64), then the final weights and the learned (or saved) activation scales."""
        merge(adapter, self.transforms)
        learned = quantizer_state(model) if state is None else state
        self._structure(model, adapter, self.recipe, restoring=state is not None)
        expected = quantizer_state(model)
        load_quantizer_state(model, {k: v for k, v in learned.items() if k in expected})  # before GPTQ reads them
        if self._learns_weight_clip(self.recipe) and self.recipe.weight_quantizer != "gptq":
            self.weight_clip = {k: learned[k] for k in expected if ".weight_quantizer.clip_" in k}  # as loaded
            rtn_with_learned_clip(model)
        elif state is None:  # GPTQ reads each row's learned clip, where there is one
            quantize_weights(model, adapter, self.recipe, calibration)
        else:
            restore_weights(model, self.recipe, state)

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        self.transforms = self._build(model, adapter, self.recipe)
        saved = {k[len(PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(PREFIX)}
        self.transforms.load_state_dict({k: v.to(model_device(model)) for k, v in saved.items()})
        state.update({k[len(CLIP_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(CLIP_PREFIX)})
        self._finish(model, adapter, None, state)

    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        own = {PREFIX + k: v.detach().cpu() for k, v in self.transforms.state_dict().items()}
        clips = {CLIP_PREFIX + k: v for k, v in self.weight_clip.items()}
        return {**super().saved_state(model), **own, **clips}
