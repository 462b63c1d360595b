"""FPTQuant's dynamic per-token scaling S_n, meant to make static activation scales work (``residual_scaling``;
off by default: it made long static training diverge on SmolLM2, docs/FPTQUANT.md).

The inputs of o_proj and down_proj have the widest per-token range of all quantized activations,
and it follows the residual stream's: a block's contribution grows with the residual it is added
to. S_n divides each of these inputs by the per-token RMS ``r`` of the residual that the norm in
front of the block computes anyway, so a *static* quantizer sees ``x / r``, and scales the
linear's output back by ``r``: ``y = W Q(x / r) · r + b``. Without quantization this is exactly the
original function. The quantized tensor is the same as in the form that carries a normalised
residual ``(x + F(Norm(x))) / r`` between blocks; that form needs the running product of earlier
scales to stay exact, while this one needs no state between layers, and the multiply by ``r`` is
the per-token factor a W4A4 GEMM epilogue applies anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import ModelAdapter

ATTRIBUTE = "fptquant_residual_scaling"


def token_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(mean(x²) + eps)`` per token, in float32, as HF RMSNorms compute it."""
    return torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)


class _BlockScaling:
    """The RMS seen by one norm, applied around the linear that closes the block (hooks, no state dict)."""

    def __init__(self, norm: nn.Module, linear: nn.Module, linear_name: str):
        self.linear_name = linear_name
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        self.rms: torch.Tensor | None = None
        self.handles = [
            norm.register_forward_pre_hook(self._record),
            linear.register_forward_pre_hook(self._divide),
            linear.register_forward_hook(self._multiply),
        ]

    def _record(self, module, args):
        self.rms = token_rms(args[0], self.eps)

    def _divide(self, module, args):
        x, *rest = args
        return ((x.float() / self.rms).to(x.dtype), *rest)

    def _multiply(self, module, args, out):
        bias = getattr(module, "bias", None)
        core = out if bias is None else out - bias
        core = (core.float() * self.rms).to(out.dtype)
        return core if bias is None else core + bias

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def residual_scaling_roles(adapter: ModelAdapter) -> tuple[str, ...]:
    """The closing linears S_n wraps in every layer (``()`` when it is off)."""
    blocks = getattr(adapter.layers()[0], ATTRIBUTE, None) or []
    return tuple(block.linear_name for block in blocks)


def disable_residual_scaling(adapter: ModelAdapter) -> None:
    """Remove S_n's hooks from every decoder layer (before its linears are replaced)."""
    for layer in adapter.layers():
        for block in layer.__dict__.pop(ATTRIBUTE, None) or []:
            block.remove()


def enable_residual_scaling(adapter: ModelAdapter, roles: tuple[str, ...] = ("o", "down")) -> None:
    """Insert S_n around the given closing linears (``o``, ``down``) of every decoder layer (idempotent)."""
    unknown = set(roles) - {"o", "down"}
    if unknown:
        raise ValueError(f"S_n wraps o_proj and down_proj only, not {sorted(unknown)}")
    for layer in adapter.layers():
        if getattr(layer, ATTRIBUTE, None) is not None:
            continue
        norms = {"o": adapter.input_norm(layer), "down": adapter.post_attention_norm(layer)}
        blocks = [_BlockScaling(norms[role], adapter.linear(layer, role), role) for role in roles]
        layer.__dict__[ATTRIBUTE] = blocks  # plain attribute: not a submodule, not in the state dict
