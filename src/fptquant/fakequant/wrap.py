"""Turn a model into its fake-quantized form: QuantLinear everywhere in the decoder, KV quantizers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..config.recipe import Recipe
from ..math.quantizer import Quantizer
from ..models.base import LINEAR_ROLES, ModelAdapter
from .attention import AttentionQuantizers, register
from .linear import QuantLinear


def quantize_model_structure(model: nn.Module, adapter: ModelAdapter, recipe: Recipe) -> None:
    """Insert weight, activation and KV quantizers as the recipe says (lm_head and embeddings untouched).

    Idempotent: linears already wrapped only get their quantizers replaced.
    """
    wspec, aspec = recipe.weight_spec(), recipe.activation_spec()
    kv = recipe.kv_spec(adapter.head_dim)
    for layer in adapter.layers():
        for role in LINEAR_ROLES:
            linear = adapter.linear(layer, role)
            if isinstance(linear, QuantLinear):
                linear.set_quantizers(wspec, aspec)
            else:
                adapter.set_linear(layer, role, QuantLinear.from_linear(linear, wspec, aspec))
        attn = adapter.attention(layer)
        device = next(attn.parameters()).device
        old = getattr(attn, "fptquant_kv", None)
        state = AttentionQuantizers(adapter.num_kv_heads, adapter.head_dim, kv, kv).to(device)
        if old is not None:
            state.qk_transform = old.qk_transform
        attn.fptquant_kv = state
    model.set_attn_implementation(register())


def quant_linears(model: nn.Module) -> Iterator[tuple[str, QuantLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            yield name, module


def set_observing(model: nn.Module, observing: bool) -> None:
    """Switch every static quantizer into (or out of) range-observation mode."""
    for module in model.modules():
        if isinstance(module, Quantizer) and module.spec.enabled and not module.spec.dynamic:
            if observing:
                module.observing = True
            else:
                module.finish_observing()


@contextlib.contextmanager
def quantizers_bypassed(module: nn.Module):
    """Every quantizer inside ``module`` passes its input through unchanged within the block."""
    quantizers = [m for m in module.modules() if isinstance(m, Quantizer)]
    previous = [q.bypass for q in quantizers]
    for q in quantizers:
        q.bypass = True
    try:
        yield
    finally:
        for q, b in zip(quantizers, previous, strict=True):
            q.bypass = b


def _learnable(quantizer: Quantizer, units: int, device) -> Quantizer:
    s = quantizer.spec
    if not (s.enabled and s.dynamic) or s.learnable_clip:
        return quantizer
    return Quantizer(s.with_(learnable_clip=True), quantizer.features, clip_units=units).to(device)


def learnable_clipping(module: nn.Module, weights: bool = True, activations: bool = True, kv: bool = True) -> None:
    """Learnable clipping (FlatQuant's LWC/LAC) on the enabled dynamic quantizers inside ``module``: one
    sigmoid-logit pair per weight row (per group with groups), one per activation or K/V quantizer."""
    default = next(module.parameters()).device
    for sub in module.modules():
        if isinstance(sub, QuantLinear):
            device = sub.weight.device
            if weights:
                spec = sub.weight_quantizer.spec
                units = sub.weight.numel() // (spec.group_size or sub.in_features)
                sub.weight_quantizer = _learnable(sub.weight_quantizer, units, device)
            if activations:
                sub.input_quantizer = _learnable(sub.input_quantizer, 1, device)
        elif kv and isinstance(sub, AttentionQuantizers):
            sub.k_quantizer = _learnable(sub.k_quantizer, 1, default)
            sub.v_quantizer = _learnable(sub.v_quantizer, 1, default)


def named_clip_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Every learnable clip logit inside ``module``, keyed ``<quantizer path>.clip_{max,min}_logit``."""
    return {
        f"{name}.{attr}": getattr(q, attr)
        for name, q in module.named_modules()
        if isinstance(q, Quantizer) and q.learnable_clip_parameters()
        for attr in ("clip_max_logit", "clip_min_logit")
    }


def clip_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every learnable clip logit inside ``module``."""
    return list(named_clip_parameters(module).values())
