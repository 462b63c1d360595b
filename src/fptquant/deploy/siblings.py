"""Sibling linears (q/k/v) as one GEMM over their weights stacked by rows.

q, k and v read one activation with the same input side, so they already quantize it once
(:class:`~.modules.SharedInput`); their three GEMMs still launched one by one, and at decode a GEMM's cost is
mostly its fixed latency, not its bytes. Here the first member's call runs one GEMM over the stacked weights,
returns its own columns and keeps the others' for their calls on the same input (held by identity, as the shared
codes are). Each output column is the same sum as in its own GEMM, so the outputs are those of the three GEMMs
exactly. The members' buffers become row slices of the stacked ones: no second copy, the state dict unchanged.

Gate and up take the same stacked GEMM where no epilogue takes them (:mod:`.mlp`, which also lays them out
interleaved for its epilogue through :func:`rearranged`). ``FPTQUANT_MERGE_SIBLINGS=0`` runs the members' GEMMs
one by one.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ..errors import ConfigError
from ..kernels.w4a4_matmul import w4a4_matmul
from ..kernels.w4a4_swiglu import interleave_gate_up
from .modules import QuantizedLinear


def env_switch(name: str) -> bool:
    """A deploy switch in the environment: ``1`` (default) or ``0``, anything else refused by name."""
    value = os.environ.get(name, "1")
    if value not in ("0", "1"):
        raise ConfigError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def merging_enabled() -> bool:
    return env_switch("FPTQUANT_MERGE_SIBLINGS")


class Rearranged(NamedTuple):
    """Linears' weights, scales and biases laid out as one GEMM reads them (stacked by rows, or interleaved for the
    gate+up epilogue of .mlp), whether interleaved, and the views of them the linears hold (to notice when a buffer
    was replaced)."""

    packed: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    interleaved: bool
    views: tuple[torch.Tensor | None, ...]


def _held(linears) -> tuple[torch.Tensor | None, ...]:
    return tuple(t for m in linears for t in (m.qweight, m.weight_scale, m.bias))


def rearranged(cached: Rearranged | None, linears, interleaved: bool = False) -> Rearranged:
    """``cached`` where the linears still hold its views in that layout, else their weights laid out anew (built on
    first use and again whenever a buffer was replaced: loaded anew, moved to another device, or laid out the
    other way); the linears' buffers become views of the new layout, so there is no second copy and the state
    dict is unchanged, and in-place updates reach the layout through them."""
    if cached is not None and cached.interleaved == interleaved:
        if all(a is b for a, b in zip(cached.views, _held(linears), strict=True)):
            return cached
    join = (lambda ts: interleave_gate_up(*ts)) if interleaved else torch.cat
    packed = join([m.qweight for m in linears])
    scale = join([m.weight_scale for m in linears])
    bias = join([m.bias for m in linears]) if linears[0].bias is not None else None
    start = 0
    for i, m in enumerate(linears):
        rows = slice(i, None, len(linears)) if interleaved else slice(start, start + m.out_features)
        m.qweight, m.weight_scale = packed[rows], scale[rows]
        if bias is not None:
            m.bias = bias[rows]
        start += m.out_features
    return Rearranged(packed, scale, bias, interleaved, _held(linears))


def stacked_outputs(linears, x: torch.Tensor, weights: Rearranged) -> list[torch.Tensor]:
    """Each linear's output for ``x`` from one GEMM over ``weights`` (stacked by rows): column slices of its output,
    row-strided views. ``x`` is quantized once for them all (their ``SharedInput``)."""
    rows = x.reshape(-1, linears[0].in_features)
    codes, scales = linears[0].quantized_input(x, rows, reads=len(linears))
    bias = weights.bias.float() if weights.bias is not None else None  # as QuantizedLinear._matmul passes it
    y = w4a4_matmul(codes, scales.float(), weights.packed, weights.scale, bias, out_dtype=x.dtype)
    return [o.reshape(*x.shape[:-1], o.shape[1]) for o in y.split([m.out_features for m in linears], dim=1)]


def share_one_input(linears) -> bool:
    """QuantizedLinears linked to one shared input (which ``same_input_side`` decided when they were linked:
    checking it per call would read their quantizers' tensors back from the GPU), with a quantized input, all with
    or all without bias, of one weight-scale and bias dtype: one GEMM can run them."""
    first = linears[0]
    if not all(isinstance(m, QuantizedLinear) for m in linears) or first.shared_input is None:
        return False
    if any(m.shared_input is not first.shared_input for m in linears) or not first.input_quantizer.spec.enabled:
        return False
    # one entry: one weight-scale dtype, and all with a bias of one dtype or all without (None)
    return len({(m.weight_scale.dtype, m.bias.dtype if m.bias is not None else None) for m in linears}) == 1


class SiblingGemm:
    """One GEMM for linears that :func:`share_one_input`."""

    def __init__(self, members: list):
        self.members = members
        self.source: torch.Tensor | None = None
        self.pending: dict[int, torch.Tensor] = {}  # member index -> its output for ``source``
        self._stacked: Rearranged | None = None

    def forward(self, member, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x``, or None where the member should run alone (``FPTQUANT_MERGE_SIBLINGS=0``,
        or a later member called on an input the first one has not seen). The first member always runs the stacked
        GEMM, so a kept output never outlives the forward it belongs to."""
        if not merging_enabled():
            return None
        index = next(i for i, m in enumerate(self.members) if m is member)
        if index > 0:
            if self.source is not x or index not in self.pending:
                return None
            out = self.pending.pop(index)
            if not self.pending:
                self.source = None
            return out
        self._stacked = rearranged(self._stacked, self.members)
        outs = stacked_outputs(self.members, x, self._stacked)
        self.source = x
        self.pending = dict(enumerate(outs[1:], start=1))
        return outs[0]


def link_sibling_gemms(groups: list[list]) -> int:
    """Give each group of linears that :func:`share_one_input` one :class:`SiblingGemm`; returns how many groups
    were linked."""
    linked = 0
    for group in groups:
        if len(group) < 2 or not share_one_input(group):
            continue
        gemm = SiblingGemm(group)
        for m in group:
            m.sibling_gemm = gemm
        linked += 1
    return linked
