"""Quantize the weights of every QuantLinear once the transforms are in place: RTN or GPTQ."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config.recipe import Recipe
from ..errors import DataError
from ..fakequant.linear import QuantLinear
from ..fakequant.wrap import quant_linears
from ..math.gptq import HessianAccumulator, gptq_quantize
from ..math.quantization import Axis, fake_quantize, search_clip_ratio, to_groups, weight_qparams
from ..math.quantizer import Quantizer, QuantSpec
from ..models.base import ModelAdapter
from .sequential import StopForward, capture_first_layer_inputs, run_layer

# Linears that share an input are quantized together; later groups see earlier groups' quantized output.
SEQUENTIAL_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def _disable_weight_quantizer(linear: QuantLinear) -> None:
    linear.weight_quantizer = Quantizer(QuantSpec())


@torch.no_grad()
def rtn_quantize_linear(linear: QuantLinear, recipe: Recipe) -> None:
    spec = recipe.weight_spec()
    if spec.enabled:
        w = linear.weight.data.float()
        g = to_groups(w, spec.axis, spec.group_size)
        scale, zero = weight_qparams(g, spec.bits, spec.symmetric, spec.clip_ratio, bool(recipe.weight_clip_search))
        q = fake_quantize(g, scale, zero, spec.bits, spec.symmetric).reshape(w.shape)
        linear.weight.data.copy_(q.to(linear.weight.dtype))
    _disable_weight_quantizer(linear)


@torch.no_grad()
def rtn_with_learned_clip(model: nn.Module) -> None:
    """RTN with each row's learned clip (LWC): the weight becomes exactly what training fake-quantized."""
    for _, linear in quant_linears(model):
        linear.weight.copy_(linear.weight_quantizer(linear.weight))
        _disable_weight_quantizer(linear)


@torch.no_grad()
def init_learned_weight_clip(model: nn.Module, grid: int = 20, max_ratio: float = 0.99) -> None:
    """Start each row's learned clip at the ratio minimising its quantization error (a coarse grid search
    on the weights as they are now, e.g. transformed), capped at ``max_ratio`` so its logit stays finite."""
    for _, linear in quant_linears(model):
        q = linear.weight_quantizer
        if not q.learnable_clip_parameters():
            continue
        groups = to_groups(linear.weight.float(), q.spec.axis, q.spec.group_size)
        ratio = search_clip_ratio(groups, q.spec.bits, q.spec.symmetric, grid=grid).clamp(max=max_ratio)
        logit = torch.log(ratio / (1 - ratio)).to(q.clip_max_logit.dtype)
        q.clip_max_logit.copy_(logit)
        q.clip_min_logit.copy_(logit)


def learned_row_qparams(linear: QuantLinear) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row ``(scale, zero)`` from the weight quantizer's learned clips, if it has per-row ones."""
    q = linear.weight_quantizer
    if not (q.spec.enabled and q.spec.learnable_clip and q.spec.axis is Axis.ROW):
        return None
    rows = to_groups(linear.weight.detach().float(), q.spec.axis, q.spec.group_size)
    return tuple(t.detach() for t in q.dynamic_qparams(rows))


@torch.no_grad()
def gptq_quantize_linear(linear: QuantLinear, hessian: torch.Tensor, recipe: Recipe) -> None:
    """GPTQ on ``linear``; per-row scales from its learned clips when the weight quantizer has them."""
    spec = recipe.weight_spec()
    if spec.enabled:
        q = gptq_quantize(
            linear.weight.data,
            hessian,
            spec.bits,
            spec.symmetric,
            group_size=spec.group_size if spec.axis is Axis.GROUP else None,
            clip_search=bool(recipe.weight_clip_search),
            clip_ratio=spec.clip_ratio,
            block_size=recipe.gptq_block_size,
            damp=recipe.gptq_damp,
            act_order=recipe.gptq_act_order,
            static_groups=recipe.gptq_static_groups,
            row_qparams=learned_row_qparams(linear),
        )
        linear.weight.data.copy_(q)
    _disable_weight_quantizer(linear)


def quantize_weights(model: nn.Module, adapter: ModelAdapter, recipe: Recipe, calibration: torch.Tensor | None) -> None:
    """Replace every decoder weight by its quantized value with the recipe's weight quantizer."""
    if recipe.weight_quantizer == "gptq":
        if calibration is None or len(calibration) == 0:
            raise DataError("GPTQ needs calibration data")
        gptq_weights(model, adapter, recipe, calibration)
    else:
        for _, linear in quant_linears(model):
            rtn_quantize_linear(linear, recipe)


@torch.no_grad()
def gptq_weights(model: nn.Module, adapter: ModelAdapter, recipe: Recipe, calibration: torch.Tensor) -> None:
    """Sequential GPTQ: Hessians from the (transformed, activation-quantized) inputs each linear really sees."""
    inputs = capture_first_layer_inputs(model, adapter, calibration)
    for layer in tqdm(adapter.layers(), desc="GPTQ", unit="layer"):
        for group in SEQUENTIAL_GROUPS:
            linears = [adapter.linear(layer, role) for role in group]
            # Linears of a group read the same input: one Hessian serves them all, and the forward can
            # stop as soon as the first of them has seen its input.
            stats = HessianAccumulator(linears[0].in_features, linears[0].weight.device)

            def collect(module, args, out, stats=stats):
                stats.add(out)
                raise StopForward

            hook = linears[0].input_quantizer.register_forward_hook(collect)
            try:
                run_layer(layer, inputs)
            finally:
                hook.remove()
            for lin in linears:
                gptq_quantize_linear(lin, stats.H, recipe)
        inputs.hidden = run_layer(layer, inputs)


def saved_weight_state(model: nn.Module, recipe: Recipe) -> dict[str, torch.Tensor]:
    """GPTQ weights depend on the calibration data, so they are saved; RTN weights are recomputed on load."""
    if recipe.weight_quantizer != "gptq":
        return {}
    return {f"{name}.weight": lin.weight.detach().cpu().clone() for name, lin in quant_linears(model)}


@torch.no_grad()
def restore_weights(model: nn.Module, recipe: Recipe, state: dict[str, torch.Tensor]) -> None:
    """Put back saved GPTQ weights (removing them from ``state``) or redo RTN on the loaded weights."""
    for name, linear in quant_linears(model):
        if recipe.weight_quantizer == "gptq":
            saved = state.pop(f"{name}.weight")
            linear.weight.data.copy_(saved.to(linear.weight.device, linear.weight.dtype))
            _disable_weight_quantizer(linear)
        else:
            rtn_quantize_linear(linear, recipe)
