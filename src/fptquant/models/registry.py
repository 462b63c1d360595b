"""Registry of architecture adapters, keyed by the transformers ``model_type``."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedArchitectureError
from .base import ModelAdapter

_ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make ``cls`` the adapter of each of its ``model_types``."""
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_classes() -> list[type[ModelAdapter]]:
    return sorted(set(_ADAPTERS.values()), key=lambda c: c.name)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, or a clear error naming the supported architectures."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    return _ADAPTERS[model_type](model)
