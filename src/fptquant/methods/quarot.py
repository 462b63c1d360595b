"""QuaRot (Ashkboos et al., 2024): Hadamard rotations that remove outliers, then RTN or GPTQ.

* R1: random Hadamard on the residual stream, merged (after folding the norms and untying).
* R2: per-head Hadamard on the values, merged into v_proj rows and o_proj columns.
* online head mixing before o_proj (Hadamard over the heads; seeded random orthogonal if none exists).
* R3: online Hadamard on post-RoPE queries and keys (only when the KV cache is quantized).
* R4: online (block-)Hadamard before down_proj, its inverse merged into down_proj.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..fakequant.wrap import quantize_model_structure
from ..math.hadamard import hadamard, hadamard_exists, random_hadamard, random_orthogonal
from ..math.online import HeadMixing, QKHadamard, online_hadamard
from ..math.rotation import merge_input_transform
from ..models.base import ModelAdapter
from ..pipelines.residual import fold_norms, rotate_residual, transform_values
from .base import Method, register_method

log = logging.getLogger(__name__)


def orthogonal_or_fallback(n: int, generator: torch.Generator, what: str, randomize: bool = True) -> torch.Tensor:
    """A (random-sign) Hadamard of order ``n``, or a seeded random orthogonal matrix where none exists."""
    if hadamard_exists(n):
        return random_hadamard(n, generator) if randomize else hadamard(n)
    log.warning("no Hadamard matrix of order %d for %s: using a seeded random orthogonal matrix", n, what)
    return random_orthogonal(n, generator)


def hadamard_or_fallback_r2(adapter: ModelAdapter, gen: torch.Generator) -> torch.Tensor:
    return orthogonal_or_fallback(adapter.head_dim, gen, "R2 (head dim)", randomize=False)


def apply_rotations(
    model: nn.Module,
    adapter: ModelAdapter,
    seed: int,
    rotate_qk: bool,
    residual: torch.Tensor | None = None,
    values: list[torch.Tensor] | None = None,
) -> None:
    """Insert QuaRot's R1-R4 into a model whose decoder linears are already QuantLinears.

    ``residual`` (R1) and ``values`` (one R2 per layer) override the Hadamard defaults; SpinQuant
    passes identities to train on top, then its learned rotations to restore.
    """
    gen = torch.Generator().manual_seed(seed)
    fold_norms(adapter)
    r1 = residual if residual is not None else orthogonal_or_fallback(adapter.hidden_size, gen, "R1 (hidden size)")
    rotate_residual(adapter, r1)
    head_mix = orthogonal_or_fallback(adapter.num_heads, gen, "the heads before o_proj", randomize=False)
    for i, layer in enumerate(adapter.layers()):
        r2 = values[i] if values is not None else hadamard_or_fallback_r2(adapter, gen)
        transform_values(adapter, layer, [r2] * adapter.num_kv_heads)
        o_proj = adapter.linear(layer, "o")
        o_proj.input_transform = HeadMixing(head_mix, adapter.head_dim).to(o_proj.weight.device)
        merge_input_transform(o_proj.weight, o_proj.input_transform.matrix())
        down = adapter.linear(layer, "down")
        down.input_transform = online_hadamard("full", adapter.intermediate_size)
        merge_input_transform(down.weight, down.input_transform.matrix())
        if rotate_qk:
            if not hadamard_exists(adapter.head_dim):
                raise ValueError(f"R3 needs a Hadamard matrix of the head dim {adapter.head_dim}")
            adapter.attention(layer).fptquant_kv.qk_transform = QKHadamard()


@register_method
class QuaRot(Method):
    name = "quarot"
    summary = "Hadamard rotations R1-R4 (QuaRot), then RTN or GPTQ (--weights gptq) weights"
    defaults = {"act_clip_ratio": 0.9, "kv_clip_ratio": 0.95, "weight_clip_search": True}

    def _transform(self, model: nn.Module, adapter: ModelAdapter) -> None:
        quantize_model_structure(model, adapter, self.recipe)
        apply_rotations(model, adapter, self.recipe.seed, rotate_qk=self.recipe.bit_spec.kv_cache < 16)

    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None:
        self._transform(model, adapter)
        self.quantize_weights_and_ranges(model, adapter, calibration)

    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None:
        self._transform(model, adapter)
        self.restore_weights_and_ranges(model, state)
