"""Qwen2 / Qwen2.5: the Llama layout with biases on q, k and v (transforms must carry them along)."""

from .base import ModelAdapter
from .registry import register_adapter


@register_adapter
class Qwen2Adapter(ModelAdapter):
    name = "qwen2"
    model_types = ("qwen2",)
