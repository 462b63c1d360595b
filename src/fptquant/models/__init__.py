"""Layer 2: one small adapter per architecture family, plus model loading."""

from . import llama, qwen2, qwen3  # noqa: F401  (register the adapters)
from .base import LINEAR_ROLES, ModelAdapter, RopeInfo
from .registry import get_adapter, register_adapter, supported_model_types

__all__ = ["LINEAR_ROLES", "ModelAdapter", "RopeInfo", "get_adapter", "register_adapter", "supported_model_types"]
