"""FPTQuant's learnable transforms and how each decoder weight depends on them.

One :class:`FPTTransforms` holds the residual rotation ``T_r`` (shared by the whole model) and, per
layer, the mergeable ``T_k`` (pre-RoPE scale-and-rotate), ``T_v`` (one invertible matrix per KV
head, SVD-parametrised so its inverse is closed-form and its conditioning visible) and ``T_u``
(per-channel scale of up_proj). :func:`transformed` maps an original (norm-folded) weight to its
transformed value; training applies it live (float32, differentiable) and the merge applies the
very same function in float64, which is why the deploy model equals the live one.
"""

from __future__ import annotations

import torch
from torch import nn

from ...math.cayley import CayleyRotation
from ...math.kronecker import SVDFactor
from ...math.prerope import pair_transform
from ...models.base import ModelAdapter


class LayerTransforms(nn.Module):
    """``T_k``, ``T_v`` and ``T_u`` of one decoder layer; each is the identity at initialisation."""

    def __init__(self, adapter: ModelAdapter, prerope: bool, values: bool, up_scale: bool):
        super().__init__()
        kv, d = adapter.num_kv_heads, adapter.head_dim
        self.head_dim, self.num_kv_heads, self.num_heads = d, kv, adapter.num_heads
        pairs = adapter.rope().rotary_dim // 2
        self.key_log_scale = nn.Parameter(torch.zeros(kv, pairs)) if prerope else None
        self.key_angle = nn.Parameter(torch.zeros(kv, pairs)) if prerope else None
        self.values = nn.ModuleList(SVDFactor(d, identity=True) for _ in range(kv)) if values else None
        self.up_log_scale = nn.Parameter(torch.zeros(adapter.intermediate_size)) if up_scale else None

    def rotations(self) -> list[CayleyRotation]:
        return [r for f in self.values or [] for r in f.rotations()]

    def key(self, dtype: torch.dtype, inverse_transpose: bool = False) -> torch.Tensor | None:
        """``(h_kv, d, d)``: ``T_k`` (keys) or ``T_k^{-T}`` (queries)."""
        if self.key_angle is None:
            return None
        scale, angle = self.key_log_scale.to(dtype).exp(), self.key_angle.to(dtype)
        return pair_transform(scale, angle, self.head_dim, inverse_transpose)

    def value(self, dtype: torch.dtype, inverse_transpose: bool = False) -> torch.Tensor | None:
        """``(h_kv, d, d)``: ``M`` with ``v -> v M`` per KV head, or ``M^{-T}`` for o_proj's columns."""
        if self.values is None:
            return None
        if dtype == torch.float64:
            return torch.stack([f.matrix64(inverse_transpose) for f in self.values])
        return torch.stack([f(inverse_transpose) for f in self.values]).to(dtype)

    def up(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.up_log_scale is None else self.up_log_scale.to(dtype).exp()

    def value_condition(self) -> torch.Tensor | None:
        if self.values is None:
            return None
        return torch.stack([f.condition_number() for f in self.values]).max()


class FPTTransforms(nn.Module):
    """Every learnable FPTQuant transform of a model."""

    def __init__(
        self,
        adapter: ModelAdapter,
        residual_init: torch.Tensor | None,
        prerope: bool,
        values: bool,
        up_scale: bool,
        down_online: nn.Module | None,
        o_online: nn.Module | None = None,
    ):
        super().__init__()
        self.residual = CayleyRotation(residual_init) if residual_init is not None else None
        self.layers = nn.ModuleList(LayerTransforms(adapter, prerope, values, up_scale) for _ in adapter.layers())
        # T_d, the fixed online rotation before down_proj (x -> x H); down_proj's weight gets W H. The same for
        # the optional online rotation before o_proj.
        self.down_online, self.o_online = down_online, o_online

    def rotations(self) -> list[CayleyRotation]:
        own = [self.residual] if self.residual is not None else []
        return own + [r for layer in self.layers for r in layer.rotations()]

    def residual_matrix(self, dtype: torch.dtype) -> torch.Tensor | None:
        if self.residual is None:
            return None
        return self.residual.matrix64() if dtype == torch.float64 else self.residual().to(dtype)

    def max_value_condition(self) -> torch.Tensor | None:
        conds = [c for layer in self.layers if (c := layer.value_condition()) is not None]
        return torch.stack(conds).max() if conds else None


def _per_head_rows(t: torch.Tensor, per_kv: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head's block ``W_h`` become ``A_{g(h)} W_h`` (``A`` per KV head, repeated over its group)."""
    a = per_kv.repeat_interleave(heads // per_kv.shape[0], dim=0)
    blocks = t.reshape(heads, a.shape[-1], *t.shape[1:])
    if t.ndim == 1:
        return torch.einsum("hij,hj->hi", a, blocks).reshape(t.shape)
    return torch.einsum("hij,hjk->hik", a, blocks).reshape(t.shape)


def _per_head_columns(w: torch.Tensor, per_kv: torch.Tensor, heads: int) -> torch.Tensor:
    """Columns of each head's block become ``W_h B_{g(h)}``."""
    b = per_kv.repeat_interleave(heads // per_kv.shape[0], dim=0)
    blocks = w.reshape(w.shape[0], heads, b.shape[-1])
    return torch.einsum("ohj,hjk->ohk", blocks, b).reshape(w.shape)


def _online_columns(w: torch.Tensor, h: nn.Module | None, dtype: torch.dtype) -> torch.Tensor:
    """``W H`` for an online rotation ``x -> x H`` of the weight's input: the fast transform while training,
    the exact dense matrix for the float64 merge."""
    if h is None:
        return w
    return w @ h.matrix().to(w.device, dtype) if dtype == torch.float64 else h(w)


def transformed(
    role: str, tensor: torch.Tensor, is_bias: bool, t: FPTTransforms, index: int | None, dtype: torch.dtype
) -> torch.Tensor:
    """The transformed value of a weight or bias of ``role`` in layer ``index``, computed in ``dtype``.

    Roles: the seven decoder linears, plus ``embed`` and ``lm_head`` (``index`` None). Row-vector
    convention for the residual: ``x -> x R``; readers of the residual get ``W R``, writers ``Rᵀ W``.
    """
    x = tensor.to(dtype)
    r = t.residual_matrix(dtype)
    if role in ("embed", "lm_head"):
        return x if r is None else x @ r
    layer = t.layers[index]
    heads, kv = layer.num_heads, layer.num_kv_heads
    if role in ("q", "k"):
        a = layer.key(dtype, inverse_transpose=role == "q")
        if a is not None:
            x = _per_head_rows(x, a, heads if role == "q" else kv)
    elif role == "v":
        m = layer.value(dtype)
        if m is not None:  # v -> v M: rows W_g -> Mᵀ W_g, bias b_g -> b_g M
            x = _per_head_rows(x, m.transpose(-1, -2), kv)
    elif role == "up":
        s = layer.up(dtype)
        if s is not None:
            x = x * (s if is_bias else s[:, None])
    elif role == "o" and not is_bias:
        m_inv_t = layer.value(dtype, inverse_transpose=True)
        if m_inv_t is not None:
            x = _per_head_columns(x, m_inv_t, heads)
        x = _online_columns(x, t.o_online, dtype)
    elif role == "down" and not is_bias:
        s = layer.up(dtype)
        if s is not None:
            x = x / s[None, :]
        x = _online_columns(x, t.down_online, dtype)
    if r is None:
        return x
    if role in ("o", "down"):  # writers of the residual: W <- Rᵀ W, b <- b R
        return x @ r if is_bias else r.t() @ x
    return x if is_bias else x @ r
