"""Norm folding and residual-stream rotation (QuaRot/SpinQuant R1, FPTQuant T_r), written once."""

from __future__ import annotations

import torch
from torch import nn

from ..math.rotation import merge_input_transform, merge_output_transform, scale_input_channels
from ..models.base import ModelAdapter


@torch.no_grad()
def fold_norms(adapter: ModelAdapter) -> None:
    """Move every RMSNorm gain into the linears that read the norm's output; the gains become 1.

    Unties the embeddings first, because the final norm's gain is folded into lm_head only.
    """
    adapter.untie_embeddings()
    for layer in adapter.layers():
        for norm, roles in (
            (adapter.input_norm(layer), ("q", "k", "v")),
            (adapter.post_attention_norm(layer), ("gate", "up")),
        ):
            for role in roles:
                scale_input_channels(adapter.linear(layer, role).weight, norm.weight)
            norm.weight.fill_(1.0)
    norm = adapter.final_norm()
    scale_input_channels(adapter.lm_head().weight, norm.weight)
    norm.weight.fill_(1.0)


@torch.no_grad()
def rotate_residual(adapter: ModelAdapter, rotation: torch.Tensor) -> None:
    """Rotate the residual stream by the orthogonal ``rotation`` (needs folded norms, untied embeddings)."""
    if adapter.embeddings_tied():
        raise ValueError("rotate_residual needs untied embeddings; call fold_norms first")
    merge_input_transform(adapter.embeddings().weight, rotation)  # rows of E are token vectors: E <- E Q
    for layer in adapter.layers():
        for role in ("q", "k", "v", "gate", "up"):
            merge_input_transform(adapter.linear(layer, role).weight, rotation)
        for role in ("o", "down"):
            linear = adapter.linear(layer, role)
            merge_output_transform(linear.weight, linear.bias, rotation)
    merge_input_transform(adapter.lm_head().weight, rotation)


@torch.no_grad()
def transform_values(adapter: ModelAdapter, layer: nn.Module, per_kv_head: list[torch.Tensor]) -> None:
    """``v_h -> v_h M_h`` merged into v_proj, ``M_h^{-1}`` into the o_proj columns of every query head of group h."""
    v, o = adapter.linear(layer, "v"), adapter.linear(layer, "o")
    d, groups = adapter.head_dim, adapter.num_heads // adapter.num_kv_heads
    for h, m in enumerate(per_kv_head):
        rows = slice(h * d, (h + 1) * d)  # views: the merges write through into the parameters
        merge_output_transform(v.weight[rows], v.bias[rows] if v.bias is not None else None, m)
        inv_t = torch.linalg.inv(m.double()).t()
        for q in range(h * groups, (h + 1) * groups):
            merge_input_transform(o.weight[:, q * d : (q + 1) * d], inv_t)
