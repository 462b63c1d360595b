"""FlatQuant's per-layer transforms, in their live (training) form and merged into a deploy form.

Per decoder layer (FlatQuant §3.2; SmolLM2 sizes in brackets):

* ``attn_in``  P_a ⊗ with diagonal c_a on the q/k/v input [24⊗24]; c_a is folded into the input norm.
* ``heads``    P_o (h×h) mixing heads on the o_proj input [9×9], online.
* ``values``   P_v (d_h×d_h) on each KV head's values, merged into v_proj; o_proj gets kron(P_o, P_v)^{-T}.
* ``qk``       P_h (d_h×d_h) on post-RoPE keys (queries get P_h^{-T}); only when the KV cache is quantized.
* ``mlp_in``   P_ug with c_ug on the gate/up input [24⊗24]; c_ug is folded into the post-attention norm.
* ``down_in``  P_d with c_d on the down_proj input [32⊗48]; c_d is folded into up_proj's rows.

In training each linear recomputes its weight from its transforms on every forward
(``QuantLinear.weight_transform``: ``W -> W diag(1/c) P^{-T}`` in float32); the deploy form merges
in float64 and keeps ``P_a``, ``P_o``, ``P_h``, ``P_ug`` and ``P_d`` as fixed online modules. With ``bf16``
(``online_bf16``, the default) the online Kronecker transforms and ``P_o`` use bfloat16 numerics in both forms
(math/kronecker.py): the fused transform+quantize kernel's fast path; the rounded factors are inverted exactly,
so the function moves only by the bfloat16 rounding of ``P1ᵀX``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...math.kronecker import (
    KroneckerTransform,
    factor_matrix,
    factor_matrix64,
    kron_apply,
    make_factor,
    no_autocast,
)
from ...math.online import HeadMixing, OnlineKronecker, QKTransform
from ...math.rotation import across_chunks, merge_input_transform, merge_output_transform
from ...models.base import ModelAdapter
from ...pipelines.residual import transform_values


@dataclass(frozen=True)
class TransformOptions:
    transforms: bool = True  # LT: learnable affine matrices
    diag: bool = True  # PS: per-channel scaling vectors
    factor: str = "svd"  # "svd" (closed-form inverse) or "inverse" (float64 inverse)
    rotate_qk: bool = True  # P_h, only useful when the KV cache is quantized
    bf16: bool = False  # bfloat16 online numerics of the Kronecker transforms and P_o


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


class LayerTransforms(nn.Module):
    def __init__(self, adapter: ModelAdapter, options: TransformOptions, generator: torch.Generator):
        super().__init__()
        d, dff, h, dh = adapter.hidden_size, adapter.intermediate_size, adapter.num_heads, adapter.head_dim
        lt, kind = options.transforms, options.factor

        def kron(n):
            if not (lt or options.diag):
                return None
            return KroneckerTransform(n, options.diag, generator, factors=lt, kind=kind, bf16=options.bf16)

        self.attn_in, self.mlp_in, self.down_in = kron(d), kron(d), kron(dff)
        self.heads = make_factor(h, kind, generator) if lt else None
        self.values = make_factor(dh, kind, generator) if lt else None
        self.qk = make_factor(dh, kind, generator) if lt and options.rotate_qk else None
        self.head_dim, self.bf16 = dh, options.bf16

    def rotations(self) -> list:
        return [r for m in self.modules() if m is not self and hasattr(m, "rotations") for r in m.rotations()]


# --- live form: weight-side transforms and online modules that keep gradients -------------------------


class _InputSide(nn.Module):
    def __init__(self, transform: KroneckerTransform):
        super().__init__()
        self.transform = transform

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.transform.apply_to_weight(weight)


class _ValueRows(nn.Module):
    """Each KV head's output ``v_h -> v_h P_v``: ``W_h -> P_vᵀ W_h`` (``bias=True``: ``b_h -> b_h P_v``)."""

    def __init__(self, factor: nn.Module, head_dim: int, bias: bool = False):
        super().__init__()
        self.factor, self.head_dim, self.bias = factor, head_dim, bias

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with no_autocast(t.device):
            x = t.to(torch.promote_types(t.dtype, torch.float32))
            p = self.factor().to(x.dtype)
            if self.bias:
                return (x.reshape(-1, self.head_dim) @ p).reshape(t.shape).to(t.dtype)
            out = torch.einsum("ji,hjk->hik", p, x.reshape(-1, self.head_dim, t.shape[-1]))
            return out.reshape(t.shape).to(t.dtype)


class _OProjInput(nn.Module):
    """o_proj's weight side ``W_o (P_o ⊗ P_v)^{-T}`` (``bf16``: of ``P_o`` rounded to bfloat16)."""

    def __init__(self, heads: nn.Module, values: nn.Module, bf16: bool):
        super().__init__()
        self.heads, self.values, self.bf16 = heads, values, bf16

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with no_autocast(w.device):
            x = w.to(torch.promote_types(w.dtype, torch.float32))
            heads = factor_matrix(self.heads, self.bf16, inverse_transpose=True)
            return kron_apply(x, heads, self.values(inverse_transpose=True)).to(w.dtype)


class _LiveHeadMixing(nn.Module):
    def __init__(self, heads: nn.Module, head_dim: int, bf16: bool):
        super().__init__()
        self.heads, self.head_dim, self.bf16 = heads, head_dim, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = factor_matrix(self.heads, self.bf16)
        return kron_apply(x, p, _eye(self.head_dim, p), round_mid=self.bf16)


class _LiveQK(nn.Module):
    def __init__(self, factor: nn.Module):
        super().__init__()
        self.factor = factor

    def forward(self, query, key):
        return query @ self.factor(inverse_transpose=True).to(query.dtype), key @ self.factor().to(key.dtype)


def _add(linear: nn.Module, attr: str, transform: nn.Module) -> None:
    """Chain ``transform`` after the linear's existing weight/bias transform (v_proj has two)."""
    current = getattr(linear, attr)
    setattr(linear, attr, transform if current is None else nn.Sequential(current, transform))


def attach_live(adapter: ModelAdapter, layer: nn.Module, t: LayerTransforms) -> None:
    """Insert the transforms into the layer's forward, keeping the function (up to float rounding)."""
    lin = adapter.linears(layer)
    for transform, roles in ((t.attn_in, ("q", "k", "v")), (t.mlp_in, ("gate", "up")), (t.down_in, ("down",))):
        if transform is not None:
            for role in roles:
                lin[role].input_transform = transform
                _add(lin[role], "weight_transform", _InputSide(transform))
    if t.values is not None:
        _add(lin["v"], "weight_transform", _ValueRows(t.values, t.head_dim))
        _add(lin["v"], "bias_transform", _ValueRows(t.values, t.head_dim, bias=True))
        _add(lin["o"], "weight_transform", _OProjInput(t.heads, t.values, t.bf16))
        lin["o"].input_transform = _LiveHeadMixing(t.heads, t.head_dim, t.bf16)
    if t.qk is not None:
        adapter.attention(layer).fptquant_kv.qk_transform = _LiveQK(t.qk)


def detach_live(adapter: ModelAdapter, layer: nn.Module) -> None:
    """Remove the live transforms, restoring the layer's original weights and forward."""
    for linear in adapter.linears(layer).values():
        linear.input_transform = linear.weight_transform = linear.bias_transform = None
    adapter.attention(layer).fptquant_kv.qk_transform = None


# --- deploy form: float64 merges, fixed online modules -----------------------------------------------


def _compute_dtype(linear: nn.Module) -> torch.dtype:
    return torch.promote_types(linear.weight.dtype, torch.float32)


@torch.no_grad()
def _merge_input_side(linears: list[nn.Module], transform: KroneckerTransform) -> None:
    """``W <- W diag(1/c) P^{-T}`` with ``P`` exactly as the (shared) online module stores it."""
    factors = transform.online_factors()
    online = None
    if factors is not None:
        dtype = _compute_dtype(linears[0])
        online = OnlineKronecker(*factors, dtype=dtype, round_mid=transform.bf16).to(linears[0].weight.device)
    m = transform.weight_side(online.inverse_transpose() if online is not None else None)
    for linear in linears:
        merge_input_transform(linear.weight, m)
        linear.input_transform = online


@torch.no_grad()
def _fold_into_norm(norm: nn.Module, transform: KroneckerTransform) -> None:
    if transform.diag is not None:
        norm.weight.copy_((norm.weight.double() * transform.diag.double()).to(norm.weight.dtype))


@torch.no_grad()
def deploy(adapter: ModelAdapter, layer: nn.Module, t: LayerTransforms) -> None:
    """Merge every mergeable part into the weights in float64; leave P_a, P_o, P_h, P_ug, P_d online."""
    lin = adapter.linears(layer)
    if t.attn_in is not None:
        _fold_into_norm(adapter.input_norm(layer), t.attn_in)
        _merge_input_side([lin["q"], lin["k"], lin["v"]], t.attn_in)
    if t.mlp_in is not None:
        _fold_into_norm(adapter.post_attention_norm(layer), t.mlp_in)
        _merge_input_side([lin["gate"], lin["up"]], t.mlp_in)
    if t.down_in is not None:
        if t.down_in.diag is not None:  # (silu(g) ⊙ u) ⊙ c = silu(g) ⊙ (u ⊙ c): c_d goes into up's rows
            merge_output_transform(lin["up"].weight, lin["up"].bias, torch.diag(t.down_in.diag.double()))
        _merge_input_side([lin["down"]], t.down_in)
    dtype, device = _compute_dtype(lin["q"]), lin["q"].weight.device
    if t.values is not None:
        transform_values(adapter, layer, [t.values.matrix64()] * adapter.num_kv_heads)
        mixing = HeadMixing(factor_matrix64(t.heads, t.bf16), t.head_dim, dtype=dtype, round_mid=t.bf16).to(device)
        merge_input_transform(lin["o"].weight, across_chunks(torch.linalg.inv(mixing.mix.double()).t(), t.head_dim))
        lin["o"].input_transform = mixing
    if t.qk is not None:
        adapter.attention(layer).fptquant_kv.qk_transform = QKTransform(t.qk.matrix64(), dtype=dtype).to(device)
