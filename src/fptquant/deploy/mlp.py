"""The deploy model's SwiGLU MLP with the gate's activation and product fused into down_proj's input kernel.

The transformers MLP computes ``down(silu(gate(x)) · up(x))``: one kernel for silu, one for the product, and
then down_proj's transform+quantize reads that product back. Here down_proj's transform+quantize kernel reads
the gate and up outputs and forms the product itself (:meth:`~.modules.QuantizedLinear.forward_gated`), in the
same rounding, so the bfloat16 product never goes through memory. On LLaMA-3-8B at 8192 tokens that product
is 235 MB written and read again.

Where down_proj's input has a static scale and no online transform, the MLP goes further
(:mod:`fptquant.kernels.w4a4_swiglu`): gate and up run as one GEMM over their rows interleaved, whose epilogue
forms the product and writes down_proj's codes, so neither gate, up nor the product reaches memory and down_proj
has no quantize left to run. The interleaved weights are built once, and gate's and up's buffers become views of
them: no second copy, and the state dict (names, values) is unchanged. It runs at every token count, on the
few-token kernels too (dp4a, sliced): on the H100 the fused chain leads the unfused one from one token (session 26,
8B: 36.3 against 40.6 µs at one token, 39.7 against 45.7 at four, 44.0 against 48.3 at sixteen).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.backend import backend_for
from ..kernels.quantize import gated_product
from ..kernels.w4a4_swiglu import w4a4_swiglu_quantize
from ..models.base import ModelAdapter
from .modules import QuantizedLinear
from .siblings import Rearranged, env_switch, merging_enabled, rearranged, share_one_input, stacked_outputs

GATED_ACTIVATIONS = ("silu",)


def epilogue_enabled() -> bool:
    """``FPTQUANT_SWIGLU_EPILOGUE``: ``1`` (default) lets a static down_proj input take the gate+up epilogue, ``0``
    keeps the unfused path (to compare the two, or to rule the epilogue out)."""
    return env_switch("FPTQUANT_SWIGLU_EPILOGUE")


class FusedSwiGLU(nn.Module):
    """Holds the MLP's three linears under their original names (the state dict is unchanged)."""

    def __init__(self, names: tuple[str, str, str], gate: nn.Module, up: nn.Module, down: QuantizedLinear):
        super().__init__()
        self.names = names
        for name, module in zip(names, (gate, up, down), strict=True):
            self.add_module(name, module)
        self._rearranged: Rearranged | None = None  # gate's and up's weights as the last GEMM read them

    def forward(self, x):
        gate, up, down = (getattr(self, name) for name in self.names)
        if self._takes_epilogue(x, gate, up, down):
            return self._interleaved_forward(x, gate, up, down)
        g, u = self._stacked_gate_up(x, gate, up) if self._stacks(gate, up) else (gate(x), up(x))
        if _hooked(down):  # S_n wraps down_proj: its hooks take the product
            return down(gated_product(g, u))
        return down.forward_gated(g, u)

    @staticmethod
    def _takes_epilogue(x: torch.Tensor, gate: nn.Module, up: nn.Module, down: QuantizedLinear) -> bool:
        """Gate and up as :meth:`_stacks` takes them, no hooks on down_proj, and down_proj's input static with no
        online transform, on the Triton backend."""
        if not _one_input_side(gate, up) or _hooked(down) or not epilogue_enabled():
            return False
        spec = down.input_quantizer.spec
        if not spec.enabled or spec.dynamic or down.input_transform is not None:
            return False
        return backend_for(x) == "triton"

    @staticmethod
    def _stacks(gate: nn.Module, up: nn.Module) -> bool:
        """Gate and up run one GEMM over their rows stacked (:func:`_one_input_side`; ``FPTQUANT_MERGE_SIBLINGS``,
        as q/k/v do in .siblings); their outputs are those of the two GEMMs."""
        return _one_input_side(gate, up) and merging_enabled()

    def _stacked_gate_up(self, x: torch.Tensor, gate: QuantizedLinear, up: QuantizedLinear):
        """Gate's and up's outputs as the two column halves of one GEMM's: row-strided views, which the gated
        quantize of down_proj reads in place."""
        self._rearranged = rearranged(self._rearranged, (gate, up))
        return stacked_outputs((gate, up), x, self._rearranged)

    def _interleaved_forward(self, x, gate: QuantizedLinear, up: QuantizedLinear, down: QuantizedLinear):
        rows = x.reshape(-1, gate.in_features)
        codes, scales = gate.quantized_input(x, rows, reads=2)  # gate's and up's reads
        weights = self._rearranged = rearranged(self._rearranged, (gate, up), interleaved=True)
        static = down._input_plan()[1]
        down_codes, down_scales = w4a4_swiglu_quantize(codes, scales.float(), weights.packed, weights.scale, static,
                                                       weights.bias, out_dtype=x.dtype)  # fmt: skip
        return down._matmul(down_codes, down_scales, x)


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_pre_hooks or m._forward_hooks for m in modules)


def _one_input_side(gate: nn.Module, up: nn.Module) -> bool:
    """Gate and up that :func:`~.siblings.share_one_input`, with no hooks on them."""
    return share_one_input((gate, up)) and not _hooked(gate, up)


def fuse_swiglu(adapter: ModelAdapter) -> int:
    """Replace every decoder layer's MLP by :class:`FusedSwiGLU` where its activation is silu and its three
    linears are the adapter's ``mlp.*`` children with a quantized down_proj; returns how many were replaced."""
    if getattr(adapter.config, "hidden_act", None) not in GATED_ACTIVATIONS:
        return 0
    parents = {adapter.linear_paths[role].rpartition(".")[0] for role in ("gate", "up", "down")}
    if parents != {adapter.mlp_path}:
        return 0
    names = tuple(adapter.linear_paths[role].rpartition(".")[2] for role in ("gate", "up", "down"))
    replaced = 0
    for layer in adapter.layers():
        gate, up, down = (adapter.linear(layer, role) for role in ("gate", "up", "down"))
        if not isinstance(down, QuantizedLinear):
            continue
        adapter.set_mlp(layer, FusedSwiGLU(names, gate, up, down))
        replaced += 1
    return replaced
