"""The deploy model's RMSNorms fused into the quantize of the linears that read them.

A LLaMA-style layer's input norm is read only by q/k/v, and its post-attention norm only by gate/up. Where those
linears quantize their input identically (one :class:`~.modules.SharedInput`, no online transform: RTN, GPTQ,
QuaRot, SpinQuant and FPTQuant exports), the norm's kernel can write their codes directly
(:func:`~fptquant.kernels.norm_quantize.norm_quantize`). The unfused path writes the normalized bfloat16
activations and reads them back to quantize them. On the H100 at 8192 tokens the fused kernel is 2.5–3.1× faster
than ``F.rms_norm`` followed by the quantize (docs/RESULTS.md, session 23).

The fused norm returns an unwritten tensor of the norm's output shape, under whose identity the readers find their
codes; nothing else in those layers reads a norm's output. A norm with hooks is left alone: S_n records its input
there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.norm_quantize import norm_quantize, rms_norm_reference
from ..models.base import ModelAdapter
from .modules import QuantizedLinear

NORM_READERS = (("input_norm_path", ("q", "k", "v")), ("post_attention_norm_path", ("gate", "up")))


class FusedRMSNorm(nn.Module):
    """An RMSNorm (its weight under the same name: the state dict is unchanged) that quantizes its output for
    ``readers`` (linears sharing one input) instead of writing it, wherever they can take it
    (:meth:`~.modules.QuantizedLinear.fused_norm_args`); elsewhere a plain RMSNorm."""

    def __init__(self, norm: nn.Module, eps: float, readers: list[QuantizedLinear]):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = eps
        self.readers = tuple(readers)  # a tuple, not submodules: they live in the attention and the MLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = self.readers[0]
        args = lead.fused_norm_args(x)
        if args is None:
            return rms_norm_reference(x, self.weight, self.variance_epsilon)
        codes, scales = norm_quantize(x.reshape(-1, x.shape[-1]), self.weight, self.variance_epsilon, **args)
        out = torch.empty_like(x)  # never written or read: the readers look their codes up by its identity
        lead.shared_input.store(out, (codes, scales), reads=0)
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}, fused into the quantize of {len(self.readers)}"


def _eps(norm: nn.Module) -> float | None:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


@torch.no_grad()
def _computes_rms_norm(norm: nn.Module, eps: float) -> bool:
    """Whether ``norm`` is HF's RMSNorm with a weight and nothing else (not, e.g., Gemma's ``1 + weight``),
    checked on a probe: its output must equal the reference's bit for bit."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or len(norm.state_dict()) != 1:
        return False
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(3, weight.shape[0], generator=g).to(weight.device, weight.dtype) * 3
    return torch.equal(norm(probe), rms_norm_reference(probe, weight, eps))


def _fusable(norm: nn.Module, readers: list[nn.Module]) -> float | None:
    """The norm's eps where it can be fused into its readers' quantize, else None."""
    if norm._forward_pre_hooks or norm._forward_hooks or isinstance(norm, FusedRMSNorm):
        return None
    if not all(isinstance(r, QuantizedLinear) for r in readers):
        return None
    shared = readers[0].shared_input
    if not readers[0].quantizes_shared_input_plainly() or shared.members != len(readers):
        return None
    if any(r.shared_input is not shared for r in readers):
        return None
    eps = _eps(norm)
    return eps if eps is not None and _computes_rms_norm(norm, eps) else None


def fuse_norms(adapter: ModelAdapter) -> int:
    """Replace each decoder layer's input and post-attention norm by :class:`FusedRMSNorm` where its readers
    (q/k/v, gate/up) share one quantized input; returns how many were replaced."""
    replaced = 0
    for layer in adapter.layers():
        for path_name, roles in NORM_READERS:
            path = getattr(adapter, path_name)
            norm = layer.get_submodule(path)
            readers = [adapter.linear(layer, role) for role in roles]
            eps = _fusable(norm, readers)
            if eps is not None:
                layer.set_submodule(path, FusedRMSNorm(norm, eps, readers))
                replaced += 1
    return replaced
