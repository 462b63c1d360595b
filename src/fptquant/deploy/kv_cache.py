"""A real INT4 KV cache for generation: transformers' ``Cache`` API over :class:`PackedKV` storage.

Each attention layer's keys (post-RoPE, after the layer's online q/k transform) and values are
quantized as they arrive, by the layer's own K/V quantizers (same scales, zero points and clip as the
evaluated fake-quant model), and stored as 4-bit codes. ``update`` returns the cache layer itself in
place of dense K/V tensors; the ``fptquant`` attention function sees that and calls :meth:`attend`:

* one new token per sequence: the INT4 decode-attention kernel reads the codes directly;
* several new tokens (prefill): the cache is dequantized (exactly the fake quantizer's values) and
  attended with the base implementation (SDPA) and the model's mask, which is the fake-quant
  evaluation's definition, so a prompt's logits are the evaluated model's.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from ..errors import ConfigError
from ..fakequant.attention import fused_write_plan
from ..kernels.kv_attention import PackedKV, int4_kv_decode_attention
from ..math.quantization import Axis

SYMMETRIC_OFFSET = 8  # symmetric codes -8..7 are stored as 0..15 with zero point 8


def _check_quantizer(name: str, quantizer, head_dim: int) -> None:
    s = quantizer.spec
    if not (s.bits == 4 and s.dynamic and s.axis is Axis.GROUP and s.group_size == head_dim):
        raise ConfigError(
            f"{name}: an INT4 KV cache needs 4-bit dynamic quantizers per (token, head), got {quantizer.extra_repr()}"
        )


class Int4KVLayer(DynamicLayer):
    """One attention layer's INT4 cache; ``capacity`` positions are allocated on the first update."""

    is_croppable = False

    def __init__(self, attention: nn.Module, capacity: int, unpadded: bool = False):
        super().__init__()
        self.attention, self.capacity, self.unpadded = attention, capacity, unpadded
        self.state = attention.fptquant_kv
        self.packed: tuple[PackedKV, PackedKV] | None = None
        self.plans = None  # per K and V: fused_write_plan, decided on the first (eager) update
        self.length = 0  # on the host, for eager calls; the device counter below is what a CUDA graph uses
        self.cumulative_length = torch.zeros((), dtype=torch.long)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.cumulative_length = self.cumulative_length.to(self.device)
        self.is_initialized = True

    def _codes(self, quantizer, x: torch.Tensor):
        b, h, t, d = x.shape
        flat = x.transpose(1, 2).reshape(b, t, h * d)  # as the fake quantizer sees it: heads side by side
        codes, scale, zero = quantizer.integer_codes(flat)
        if quantizer.spec.symmetric:
            codes, zero = codes + SYMMETRIC_OFFSET, zero + SYMMETRIC_OFFSET
        codes = codes.reshape(b, t, h, d).transpose(1, 2)
        return codes, scale.reshape(b, t, h).transpose(1, 2), zero.reshape(b, t, h).transpose(1, 2)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[2]
        if self.length + t > self.capacity:
            raise ConfigError(f"the KV cache holds {self.capacity} positions; {self.length + t} were asked for")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.state.qk_transform is not None:
            key_states = self.state.qk_transform.key(key_states)
        quantizers = (self.state.k_quantizer, self.state.v_quantizer)
        if self.plans is None:
            self.plans = [fused_write_plan(q, x) for q, x in zip(quantizers, (key_states, value_states), strict=True)]
        if all(self.plans):
            self._write_fused(key_states, value_states)
        else:
            new = [self._codes(q, x) for q, x in zip(quantizers, (key_states, value_states), strict=True)]
            if self.packed is None:
                b, h, _, d = key_states.shape
                self.packed = tuple(PackedKV.empty(b, h, self.capacity, d, s.dtype, self.device) for _, s, _ in new)
            positions = torch.arange(t, device=self.device) + self.cumulative_length
            for packed, (codes, scale, zero) in zip(self.packed, new, strict=True):
                packed.write(positions, codes, scale, zero)
        self.cumulative_length.add_(t)  # in place, after the writes read it: a CUDA graph replays this increment
        self.length += t
        return self, self

    def _write_fused(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Quantize, pack and store K and V with one Triton launch each (the torch path's numbers, bit for bit)."""
        from ..kernels.triton_kv_write import quantize_and_write

        if self.packed is None:
            b, h, _, d = key_states.shape
            self.packed = tuple(PackedKV.empty(b, h, self.capacity, d, dtype, self.device) for *_, dtype in self.plans)
        for packed, x, (lo, hi, dtype) in zip(self.packed, (key_states, value_states), self.plans, strict=True):
            quantize_and_write(x.to(dtype), packed.codes, packed.scale, packed.zero, self.cumulative_length, lo, hi)

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0
        self.cumulative_length.zero_()

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached K and V dequantized, ``(B, H_kv, length, d_h)``, as the fake quantizer makes them."""
        return tuple(p.dequantize(self.length) for p in self.packed)

    def attend(self, module: nn.Module, query: torch.Tensor, attention_mask, base, **kwargs):
        """Attention of ``query`` (post-RoPE) over the cache; returns what an attention function returns."""
        if self.state.qk_transform is not None:
            query = self.state.qk_transform.query(query)
        b, hq, t, d = query.shape
        if t == 1 and (attention_mask is None or self.unpadded):
            lengths = self.cumulative_length.expand(b).to(torch.int32)
            scaling = kwargs.get("scaling") or module.scaling
            # a captured step must not depend on the host length: split the whole capacity instead
            capturing = query.is_cuda and torch.cuda.is_current_stream_capturing()
            bound = self.capacity if capturing else self.length
            out = int4_kv_decode_attention(query[:, :, 0], *self.packed, lengths, scaling, max_length=bound)
            return out.to(query.dtype)[:, None], None  # (B, 1, H_q, d_h), as SDPA's wrapper returns
        key, value = self.dense()
        return base(module, query, key.to(query.dtype), value.to(query.dtype), attention_mask, **kwargs)


def int4_kv_cache(model: nn.Module, capacity: int, unpadded: bool = False) -> Cache:
    """An INT4 cache for ``model`` (a loaded fptquant model whose KV quantizers are 4-bit) of ``capacity``
    positions per sequence (prompt + new tokens).

    ``unpadded=True`` promises that no sequence is padded, so one-token steps run the INT4 kernel even
    when transformers builds a causal mask (it does while a CUDA graph is being captured)."""
    attentions = sorted(
        (m for m in model.modules() if getattr(m, "fptquant_kv", None) is not None), key=lambda m: m.layer_idx
    )
    if not attentions:
        raise ConfigError("this model has no fptquant KV quantizers; load it with fptquant.load first")
    for m in attentions:
        _check_quantizer(f"layer {m.layer_idx} keys", m.fptquant_kv.k_quantizer, m.head_dim)
        _check_quantizer(f"layer {m.layer_idx} values", m.fptquant_kv.v_quantizer, m.head_dim)
    if [m.layer_idx for m in attentions] != list(range(len(attentions))):
        raise ConfigError("every attention layer needs KV quantizers for an INT4 cache")
    return Cache(layers=[Int4KVLayer(m, capacity, unpadded) for m in attentions])


__all__ = ["Int4KVLayer", "int4_kv_cache"]
