"""The method interface and registry. A new method is one file with a ``@register_method`` class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from ..config.recipe import Recipe
from ..errors import ConfigError
from ..math.quantizer import Quantizer
from ..models.base import ModelAdapter
from ..pipelines.calibration import calibrate_static_ranges
from ..pipelines.weights import quantize_weights, restore_weights, saved_weight_state

_METHODS: dict[str, type[Method]] = {}


class Method(ABC):
    """A quantization recipe's algorithm.

    ``apply`` quantizes a full-precision model in place (using calibration windows if it needs
    them). ``saved_state`` returns every tensor needed to rebuild the result, and ``restore``
    rebuilds it on a freshly loaded full-precision model from that state, without calibration.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}  # recipe options this method sets when the user leaves them None

    def __init__(self, recipe: Recipe):
        self.recipe = recipe.resolved(self.defaults)
        self.stats: dict[str, Any] = {}  # what a run measured about itself (times, losses), for reports

    def requires_calibration(self) -> bool:
        return self.needs_calibration or self.recipe.act_static or self.recipe.weight_quantizer == "gptq"

    @abstractmethod
    def apply(self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None) -> None: ...

    @abstractmethod
    def restore(self, model: nn.Module, adapter: ModelAdapter, state: dict[str, torch.Tensor]) -> None: ...

    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {**quantizer_state(model), **saved_weight_state(model, self.recipe)}

    def quantize_weights_and_ranges(
        self, model: nn.Module, adapter: ModelAdapter, calibration: torch.Tensor | None
    ) -> None:
        """The common last step of ``apply``: the recipe's weight quantizer, then static activation ranges."""
        quantize_weights(model, adapter, self.recipe, calibration)
        calibrate_static_ranges(model, calibration)

    def restore_weights_and_ranges(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """The common last step of ``restore``: saved (GPTQ) or recomputed (RTN) weights, then quantizer state."""
        restore_weights(model, self.recipe, state)
        load_quantizer_state(model, state)


def register_method(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available_methods() -> list[type[Method]]:
    return [_METHODS[k] for k in sorted(_METHODS)]


def quantizer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer owned by a :class:`Quantizer` (static scales, clip logits, ...)."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            for key, tensor in module.state_dict().items():
                state[f"{name}.{key}"] = tensor.detach().cpu().clone()
    return state


def load_quantizer_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`quantizer_state` saved; every saved key must exist and vice versa."""
    expected = quantizer_state(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"saved quantizer state does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.load_state_dict(state, strict=False)
