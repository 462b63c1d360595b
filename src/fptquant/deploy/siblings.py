"""Sibling linears (q/k/v) as one GEMM over their weights stacked by rows.

q, k and v read one activation with the same input side, so they already quantize it once
(:class:`~.modules.SharedInput`); their three GEMMs still launched one by one, and at decode a GEMM's cost is
mostly its fixed latency, not its bytes. Here the first member's call runs one GEMM over the stacked weights,
returns its own columns and keeps the others' for their calls on the same input (held by identity, as the shared
codes are). Each output column is the same sum as in its own GEMM, so the outputs are those of the three GEMMs
exactly. The members' buffers become row slices of the stacked ones: no second copy, the state dict unchanged.

``FPTQUANT_MERGE_SIBLINGS=0`` runs the members' GEMMs one by one.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ..errors import ConfigError
from ..kernels.w4a4_matmul import w4a4_matmul


def env_switch(name: str) -> bool:
    """A deploy switch in the environment: ``1`` (default) or ``0``, anything else refused by name."""
    value = os.environ.get(name, "1")
    if value not in ("0", "1"):
        raise ConfigError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def merging_enabled() -> bool:
    return env_switch("FPTQUANT_MERGE_SIBLINGS")


class Rearranged(NamedTuple):
    """Linears' weights, scales and biases laid out as one GEMM reads them (q/k/v stacked by rows here; gate and
    up interleaved in .mlp), and the views of them the linears hold (to notice when a buffer was replaced)."""

    packed: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    views: tuple[torch.Tensor | None, ...]


class SiblingGemm:
    """One GEMM for linears that quantize one input alike (``same_input_side``), all with or all without bias, of
    one weight-scale and bias dtype."""

    def __init__(self, members: list):
        self.members = members
        self.source: torch.Tensor | None = None
        self.pending: dict[int, torch.Tensor] = {}  # member index -> its output for ``source``
        self._stacked: Rearranged | None = None

    def forward(self, member, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x``, or None where the member should run alone (a later member called on an
        input the first one has not seen). The first member always runs the stacked GEMM, so a kept output never
        outlives the forward it belongs to."""
        index = next(i for i, m in enumerate(self.members) if m is member)
        if index > 0:
            if self.source is not x or index not in self.pending:
                return None
            out = self.pending.pop(index)
            if not self.pending:
                self.source = None
            return out
        rows = x.reshape(-1, member.in_features)
        codes, scales = member.quantized_input(x, rows, reads=len(self.members))
        stacked = self._weights()
        bias = stacked.bias.float() if stacked.bias is not None else None  # as QuantizedLinear._matmul passes it
        y = w4a4_matmul(codes, scales.float(), stacked.packed, stacked.scale, bias, out_dtype=x.dtype)
        outs = y.split([m.out_features for m in self.members], dim=1)
        shape = x.shape[:-1]
        self.source = x
        self.pending = {i: o.reshape(*shape, o.shape[1]) for i, o in enumerate(outs) if i > 0}
        return outs[0].reshape(*shape, outs[0].shape[1])

    def _weights(self) -> Rearranged:
        """The stacked weights, built on first use and again whenever a member's buffers were replaced (loaded
        anew, moved to another device); in-place updates reach them through the views."""
        buffers = tuple(t for m in self.members for t in (m.qweight, m.weight_scale, m.bias))
        cached = self._stacked
        if cached is not None and all(a is b for a, b in zip(cached.views, buffers, strict=True)):
            return cached
        packed = torch.cat([m.qweight for m in self.members])
        scale = torch.cat([m.weight_scale for m in self.members])
        has_bias = self.members[0].bias is not None
        bias = torch.cat([m.bias for m in self.members]) if has_bias else None
        start = 0
        for m in self.members:
            rows = slice(start, start + m.out_features)
            m.qweight, m.weight_scale = packed[rows], scale[rows]
            if has_bias:
                m.bias = bias[rows]
            start += m.out_features
        views = tuple(t for m in self.members for t in (m.qweight, m.weight_scale, m.bias))
        self._stacked = Rearranged(packed, scale, bias, views)
        return self._stacked


def link_sibling_gemms(groups: list[list]) -> int:
    """Give each group of QuantizedLinears that share one quantized input (``shared_input``) and agree on bias one
    :class:`SiblingGemm`; returns how many groups were linked."""
    linked = 0
    for group in groups:
        shared = {id(m.shared_input) for m in group}
        if len(group) < 2 or group[0].shared_input is None or len(shared) > 1:
            continue
        if len({m.bias is None for m in group}) > 1 or not group[0].input_quantizer.spec.enabled:
            continue
        if len({(m.weight_scale.dtype, m.bias.dtype if m.bias is not None else None) for m in group}) > 1:
            continue
        gemm = SiblingGemm(group)
        for m in group:
            m.sibling_gemm = gemm
        linked += 1
    return linked
