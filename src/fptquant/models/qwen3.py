"""Qwen3: the Llama layout plus per-head RMSNorms on q and k *before* RoPE.

Those norms sit between q/k_proj and RoPE, so a transform merged into the rows of W_q/W_k no
longer commutes with attention exactly; methods consult :meth:`qk_norms` and refuse or adapt.
"""

from .base import ModelAdapter
from .registry import register_adapter


@register_adapter
class Qwen3Adapter(ModelAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
    q_norm_path = "self_attn.q_norm"
    k_norm_path = "self_attn.k_norm"
