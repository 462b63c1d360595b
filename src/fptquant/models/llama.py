"""Llama family: Llama-2/3, SmolLM2, Mistral (same module layout, no q/k/v biases by default)."""

from .base import ModelAdapter
from .registry import register_adapter


@register_adapter
class LlamaAdapter(ModelAdapter):
    name = "llama"
    model_types = ("llama", "mistral")
