"""KV-cache fake quantization through transformers' attention-function interface.

We register an attention implementation named ``fptquant`` that receives post-RoPE queries, keys
and values (after any cache update), applies the attention module's optional online q/k transform
(QuaRot R3, FlatQuant P_h) and the K/V quantizers, then delegates to the registered base
implementation (SDPA by default). Quantizing the whole K/V each call equals quantizing at cache
write time: the quantizers are per (token, head), so each token's codes do not depend on the others.
Without gradients, on the Triton backend, 4-bit asymmetric per-(token, head) K/V quantizers run as one
kernel launch (:func:`fptquant.kernels.triton_kv_write.fake_quantize_heads`, bit for bit the quantizer's
values) instead of about 25 torch operations each.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from ..kernels.backend import backend_for
from ..math.quantization import Axis
from ..math.quantizer import Quantizer, QuantSpec

ATTN_IMPLEMENTATION = "fptquant"
BASE_IMPLEMENTATION = "sdpa"
# On the CPU the interpreter would run one Python program per (token, head): the kernel path is for CUDA
# tensors unless a test turns this on to check it.
KERNEL_ON_CPU = False
KV_WRITE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the Triton K/V write stores


def fused_write_plan(quantizer, x: torch.Tensor) -> tuple[float, float, torch.dtype] | None:
    """``(lo, hi, compute dtype)`` when the one-launch Triton K/V quantize applies to ``x``, else None: asymmetric
    codes, a power-of-two head dimension, one clip pair (read to the host, as plain floats) and a compute dtype
    the kernel stores (not float64: a float64 model takes the torch path)."""
    d = x.shape[-1]
    if quantizer.spec.symmetric or d < 2 or d & (d - 1) or backend_for(x) != "triton":
        return None
    factors = quantizer.clip_factors()
    if any(torch.is_tensor(f) and f.numel() != 1 for f in factors):
        return None
    # torch's type promotion of ``x.amin(...) * factor``: a factor tensor with dimensions takes part, a float not
    dtype = x.dtype
    for f in factors:
        if torch.is_tensor(f) and f.dim() > 0:
            dtype = torch.promote_types(dtype, f.dtype)
    if dtype not in KV_WRITE_DTYPES:
        return None
    return *quantizer.host_clip_pair(), dtype


class AttentionQuantizers(nn.Module):
    """Per-attention-module state: online q/k transform and K/V quantizers (on ``(b, h_kv, s, d_h)``)."""

    def __init__(self, num_kv_heads: int, head_dim: int, k_spec: QuantSpec, v_spec: QuantSpec):
        super().__init__()
        self.qk_transform: nn.Module | None = None  # applied as q -> f(q, inverse=True), k -> f(k)
        features = num_kv_heads * head_dim
        self.k_quantizer = Quantizer(k_spec, features)
        self.v_quantizer = Quantizer(v_spec, features)
        self._kernel_plans: dict[tuple, tuple | None] = {}  # see _kernel_plan

    def _kernel_plan(self, quantizer: Quantizer, x: torch.Tensor):
        """:func:`fused_write_plan` for a 4-bit per-(token, head) quantizer outside autograd, kept until the
        quantizer's parameters change (reading a learned clip to the host synchronises the GPU)."""
        s = quantizer.spec
        if not (x.is_cuda or KERNEL_ON_CPU) or (torch.is_grad_enabled() and x.requires_grad):
            return None
        if quantizer.bypass or not s.dynamic or s.bits != 4:
            return None
        if s.axis is not Axis.GROUP or s.group_size != x.shape[-1]:
            return None
        key = (id(quantizer), s, x.dtype, x.device, *((id(t), t._version) for t in quantizer.parameters()))
        plans = self._kernel_plans
        if key not in plans:
            if len(plans) >= 8:  # parameters that keep changing (training) would grow it without end
                plans.clear()
            plans[key] = fused_write_plan(quantizer, x)
        return plans[key]

    def _per_token(self, quantizer: Quantizer, x: torch.Tensor) -> torch.Tensor:
        if not quantizer.spec.enabled:
            return x
        plan = self._kernel_plan(quantizer, x)
        if plan is not None:
            from ..kernels.triton_kv_write import fake_quantize_heads

            lo, hi, compute = plan
            return fake_quantize_heads(x.to(compute), lo, hi)
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
