"""KV-cache fake quantization through transformers' attention-function interface.

We register an attention implementation named ``fptquant`` that receives post-RoPE queries, keys
and values (after any cache update), applies the attention module's optional online q/k transform
(QuaRot R3, FlatQuant P_h) and the K/V quantizers, then delegates to the registered base
implementation (SDPA by default). Quantizing the whole K/V each call equals quantizing at cache
write time: the quantizers are per (token, head), so each token's codes do not depend on the others.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from ..math.quantizer import Quantizer, QuantSpec

ATTN_IMPLEMENTATION = "fptquant"
BASE_IMPLEMENTATION = "sdpa"


class AttentionQuantizers(nn.Module):
    """Per-attention-module state: online q/k transform and K/V quantizers (on ``(b, h_kv, s, d_h)``)."""

    def __init__(self, num_kv_heads: int, head_dim: int, k_spec: QuantSpec, v_spec: QuantSpec):
        super().__init__()
        self.qk_transform: nn.Module | None = None  # applied as q -> f(q, inverse=True), k -> f(k)
        features = num_kv_heads * head_dim
        self.k_quantizer = Quantizer(k_spec, features)
        self.v_quantizer = Quantizer(v_spec, features)

    @staticmethod
    def _per_token(quantizer: Quantizer, x: torch.Tensor) -> torch.Tensor:
        if not quantizer.spec.enabled:
            return x
        b, h, s, d = x.shape
        flat = x.transpose(1, 2).reshape(b, s, h * d)  # heads side by side so groups of d_h = heads
        return quantizer(flat).reshape(b, s, h, d).transpose(1, 2)

    def forward(self, query, key, value):
        if self.qk_transform is not None:
            query, key = self.qk_transform(query, key)
        return query, self._per_token(self.k_quantizer, key), self._per_token(self.v_quantizer, value)


def fptquant_attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    base = AttentionInterface._global_mapping[BASE_IMPLEMENTATION]
    if hasattr(key, "attend"):  # a real quantized cache (deploy.kv_cache) returned itself: it attends
        return key.attend(module, query, attention_mask, base, **kwargs)
    state = getattr(module, "fptquant_kv", None)
    if state is not None:
        query, key, value = state(query, key, value)
    return base(module, query, key, value, attention_mask, **kwargs)


def register() -> str:
    """Register the ``fptquant`` attention (and its mask, the same as SDPA's); idempotent."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, fptquant_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS[BASE_IMPLEMENTATION])
    return ATTN_IMPLEMENTATION
