"""Attaching FPTQuant's transforms to a model (live, differentiable) and merging them (float64)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...math.cayley import cached_all
from ...math.kronecker import no_autocast
from ...models.base import LINEAR_ROLES, ModelAdapter
from .transforms import FPTTransforms, transformed


class _Transformed(nn.Module):
    """Parametrization ``W -> transformed(W)`` for one weight or bias (float32 math, no autocast)."""

    def __init__(self, role: str, is_bias: bool, transforms: FPTTransforms, index: int | None):
        super().__init__()
        self.role, self.is_bias, self.index = role, is_bias, index
        self.__dict__["transforms"] = transforms  # a reference, not a submodule: not in the model's state

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        with no_autocast(tensor.device):
            dtype = torch.promote_types(tensor.dtype, torch.float32)
            return transformed(self.role, tensor, self.is_bias, self.transforms, self.index, dtype).to(tensor.dtype)


def _targets(adapter: ModelAdapter):
    """``(module, tensor name, role, layer index)`` of every tensor a transform touches."""
    yield adapter.embeddings(), "weight", "embed", None
    yield adapter.lm_head(), "weight", "lm_head", None
    for i, layer in enumerate(adapter.layers()):
        for role in LINEAR_ROLES:
            linear = adapter.linear(layer, role)
            yield linear, "weight", role, i
            if linear.bias is not None:
                yield linear, "bias", role, i


def attach(adapter: ModelAdapter, transforms: FPTTransforms) -> None:
    for module, name, role, index in _targets(adapter):
        p = _Transformed(role, name == "bias", transforms, index)
        parametrize.register_parametrization(module, name, p, unsafe=True)


def detach(adapter: ModelAdapter) -> None:
    """Remove the live transforms, restoring the original tensors bit for bit."""
    for module, name, _, _ in _targets(adapter):
        if parametrize.is_parametrized(module, name):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)


@torch.no_grad()
def merge(adapter: ModelAdapter, transforms: FPTTransforms) -> None:
    """Fold every mergeable transform into the (detached) weights, computed in float64."""
    for module, name, role, index in _targets(adapter):
        tensor = getattr(module, name)
        tensor.copy_(transformed(role, tensor, name == "bias", transforms, index, torch.float64).to(tensor.dtype))


def weight_lp_loss(adapter: ModelAdapter, p: float) -> torch.Tensor:
    """FPTQuant's local loss: ``Σ (mean |W|^p)^{1/p}`` over the (transformed) decoder linears."""
    terms = [
        adapter.linear(layer, role).weight.float().abs().pow(p).mean().pow(1.0 / p)
        for layer in adapter.layers()
        for role in LINEAR_ROLES
    ]
    return torch.stack(terms).sum()


@contextlib.contextmanager
def computed_once(adapter: ModelAdapter, transforms: FPTTransforms):
    """Every parametrized tensor of the model computed once, up front, and reused inside the block.

    Computing them before the forward also keeps them out of activation-checkpointed regions, so a
    layer's recomputation in the backward pass finds the same tensors instead of redoing the math.
    """
    with cached_all(transforms.rotations(), batched=True), parametrize.cached():  # one solve per matrix size
        for module in adapter.model.modules():  # the transformed weights, and log-space static scales if any
            if parametrize.is_parametrized(module):
                for name in module.parametrizations:
                    getattr(module, name)
        yield
