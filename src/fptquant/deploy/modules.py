"""Deploy-time modules: ``QuantizedLinear`` on packed INT4 weights, and the online transforms it may run.

A ``QuantizedLinear`` computes ``y = dequant(Q_a(T(x)) · Q_w)`` with real integer codes: the input
is transformed and quantized per token (dynamic, with one clip ratio or a learned one per end of the
row) or with a fixed scale (static) by :func:`fptquant.kernels.transform_quantize` (one fused kernel,
for Kronecker, head-mixing and block-Hadamard transforms) or :func:`fptquant.kernels.quantize_per_token`,
then multiplied by the packed weights in :func:`fptquant.kernels.w4a4_matmul` (Triton on CUDA, the
PyTorch reference elsewhere: the ``FPTQUANT_KERNELS`` switch). The fused kernel computes the transform
with bfloat16 operand pairs and float32 accumulation, a float32 transform to about 15 bits
(kernels/transform_quantize.py), so its codes differ by one from a float32 transform's only on rare entries.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from ..kernels import quantize_per_token, quantize_per_token_reference, transform_quantize
from ..kernels.backend import backend_for
from ..kernels.norm_quantize import MAX_FUSED_ROW
from ..kernels.quantize import gated_product
from ..kernels.w4a4_matmul import w4a4_matmul
from ..math.hadamard import hadamard_factors
from ..math.online import HeadMixing, OnlineHadamard, OnlineKronecker, QKHadamard, QKTransform
from ..math.packing import unpack_int4
from ..math.quantizer import Quantizer, QuantSpec


def describe_transform(module: nn.Module | None) -> dict | None:
    """A JSON description from which :func:`build_transform` rebuilds ``module`` (buffers come from the state)."""
    if module is None:
        return None
    if isinstance(module, OnlineHadamard):
        return {"kind": "hadamard", "size": module.size, "block": module.block}
    if isinstance(module, OnlineKronecker):
        return {"kind": "kronecker", "n1": module.p1.shape[0], "n2": module.p2.shape[0], "dtype": str(module.p1.dtype),
                "round_mid": module.round_mid}  # fmt: skip
    if isinstance(module, HeadMixing):
        return {"kind": "head_mixing", "heads": module.mix.shape[0], "head_dim": module.head_dim,
                "dtype": str(module.mix.dtype), "round_mid": module.round_mid}  # fmt: skip
    if isinstance(module, QKHadamard):
        return {"kind": "qk_hadamard"}
    if isinstance(module, QKTransform):
        return {"kind": "qk_transform", "head_dim": module.key_side.shape[0], "dtype": str(module.key_side.dtype)}
    raise ConfigError(f"online transform {type(module).__name__} cannot be exported yet")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


def build_transform(desc: dict | None) -> nn.Module | None:
    if desc is None:
        return None
    kind = desc.get("kind")
    if kind == "hadamard":
        return OnlineHadamard(desc["size"], desc["block"])
    if kind == "kronecker":
        eyes = torch.eye(desc["n1"]), torch.eye(desc["n2"])
        return OnlineKronecker(*eyes, dtype=_dtype(desc["dtype"]), round_mid=desc.get("round_mid", False))
    if kind == "head_mixing":
        return HeadMixing(torch.eye(desc["heads"]), desc["head_dim"], dtype=_dtype(desc["dtype"]),
                          round_mid=desc.get("round_mid", False))  # fmt: skip
    if kind == "qk_hadamard":
        return QKHadamard()
    if kind == "qk_transform":
        return QKTransform(torch.eye(desc["head_dim"], dtype=torch.float64), dtype=_dtype(desc["dtype"]))
    raise ConfigError(f"unknown online transform kind {kind!r} in the checkpoint")


class FusedTransform(NamedTuple):
    """``x T = x (I ⊗ gain·P1 ⊗ P2)`` as the fused transform+quantize kernel takes it (``round_mid``: the
    transform's bfloat16 numerics, kernels/transform_quantize.py)."""

    p1: torch.Tensor
    p2: torch.Tensor
    gain: float = 1.0
    round_mid: bool = False


def fused_factors(transform: nn.Module | None) -> FusedTransform | None:
    """``transform`` as factors of the fused kernel when it can run it: a Kronecker transform, a head mixing
    (``M ⊗ I_d``), or a block Hadamard of power-of-two blocks (:func:`~fptquant.math.hadamard.hadamard_factors`:
    factors exact in bfloat16)."""
    if isinstance(transform, OnlineKronecker):
        return FusedTransform(transform.p1, transform.p2, 1.0, transform.round_mid)
    if isinstance(transform, HeadMixing):
        eye = torch.eye(transform.head_dim, dtype=transform.mix.dtype, device=transform.mix.device)
        return FusedTransform(transform.mix, eye, 1.0, transform.round_mid)
    if isinstance(transform, OnlineHadamard) and transform.block & (transform.block - 1) == 0:
        return FusedTransform(*hadamard_factors(transform.block))
    return None


class SharedInput:
    """Linears that read the same activation with the same transform and quantizer (q/k/v, gate/up)
    quantize it once: the first call keeps the codes keyed by the input tensor's identity (holding a
    reference, so no other tensor can take that identity while the entry lives); the others reuse them.
    The entry is dropped once every member has read it: kept for the next forward, the inputs and codes of
    every layer would stay alive together (13 GB for SmolLM2 at batch 64 × 2048 tokens)."""

    def __init__(self, members: int):
        self.members = members
        self.source: torch.Tensor | None = None
        self.codes: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reads = 0

    def lookup(self, x: torch.Tensor, reads: int = 1):
        """``x``'s codes if kept, counted as ``reads`` reads (2: gate and up at once, :mod:`.mlp`)."""
        if self.source is not x:
            return None
        codes = self.codes
        self.reads += reads
        if self.reads >= self.members:
            self.source = self.codes = None
        return codes

    def store(self, x: torch.Tensor, codes: tuple[torch.Tensor, torch.Tensor], reads: int = 1) -> None:
        """Keep ``x``'s codes, already read ``reads`` times (1: by the member that quantized it; 0: quantized
        for the members by the norm in front of them, :class:`~.norm.FusedRMSNorm`); nothing is kept once every
        member has read them."""
        self.source, self.codes, self.reads = (x, codes, reads) if reads < self.members else (None, None, 0)


class QuantizedLinear(nn.Module):
    """Packed INT4 weights ``(N, K/2)`` uint8 with float32 per-channel scales, plus the input side."""

    def __init__(self, in_features: int, out_features: int, bias: bool, act_spec: QuantSpec):
        super().__init__()
        if in_features % 2:
            raise ConfigError(f"packed int4 weights need an even input size, got {in_features}")
        if act_spec.enabled and (act_spec.bits != 4 or not act_spec.symmetric or act_spec.group_size):
            raise ConfigError(f"real kernels take symmetric per-token or per-tensor 4-bit activations, not {act_spec}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.input_transform: nn.Module | None = None
        self.input_quantizer = Quantizer(act_spec, in_features)
        self.shared_input: SharedInput | None = None  # set by link_shared_inputs, not saved
        self.sibling_gemm = None  # a .siblings.SiblingGemm, set by link_sibling_gemms, not saved
        self._plan: tuple[str, float | None] | None = None  # host values of the input quantizer (see _input_plan)
        self._plan_key: tuple | None = None
        self._factors: tuple | None = None  # (transform, device, (P1, P2) or None) for the fused kernel

    def _input_plan(self) -> tuple[str, float | tuple[float, float] | None]:
        """How the input is quantized: ``("static", scale)`` or ``("clip", (lo, hi))`` (one clip ratio, or a
        learned clip per end of the row).

        The host values are read from the quantizer's tensors once and kept until the quantizer, its spec
        or those tensors change (their version counters), so a forward has no GPU synchronisation and can
        be a CUDA graph.
        """
        q, spec = self.input_quantizer, self.input_quantizer.spec
        key = (id(q), spec, *((id(t), t._version) for t in q.parameters()))
        if self._plan_key != key:
            if not spec.dynamic:
                plan = ("static", float(q.scale.detach().abs().clamp(min=1e-8)))
            elif not spec.learnable_clip:
                plan = ("clip", (spec.clip_ratio, spec.clip_ratio))
            else:
                plan = ("clip", q.host_clip_pair())
            self._plan, self._plan_key = plan, key
        return self._plan

    def _fusable_factors(self, device: torch.device) -> FusedTransform | None:
        transform = self.input_transform
        if self._factors is None or self._factors[0] is not transform or self._factors[1] != device:
            factors = fused_factors(transform)
            factors = factors and factors._replace(p1=factors.p1.to(device), p2=factors.p2.to(device))
            self._factors = (transform, device, factors)
        return self._factors[2]

    def _transform_and_quantize(
        self, rows: torch.Tensor, up: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The online transform and the input quantizer, in one fused kernel where one exists (a Kronecker,
        head-mixing or power-of-two block Hadamard transform). With ``up``, ``rows`` is a gate and the input is
        ``silu(rows) · up``, formed inside that kernel where it can take it."""
        kind, value = self._input_plan()
        scale = {"static_scale": value} if kind == "static" else {"clip_ratio": value}
        factors = self._fusable_factors(rows.device) if self.input_transform is not None else None
        if factors is not None:
            p1, p2, gain, round_mid = factors
            return transform_quantize(rows, p1, p2, gain=gain, round_mid=round_mid, up=up, **scale)
        args = self._per_token_args()
        if up is not None and (self.input_transform is not None or args is None):  # no kernel takes these gated
            rows, up = gated_product(rows, up), None
        if self.input_transform is not None:
            rows = self.input_transform(rows)
        if args is None:  # no Triton kernel for two clips yet
            return quantize_per_token_reference(rows, clip_ratio=value)
        return quantize_per_token(rows, up=up, **args)

    def quantizes_shared_input_plainly(self) -> bool:
        """Whether this linear and its siblings quantize one shared input with no online transform in front: the
        quantize an RMSNorm before them may take over (:mod:`.norm`)."""
        return self.input_quantizer.spec.enabled and self.input_transform is None and self.shared_input is not None

    def fused_norm_args(self, x: torch.Tensor) -> dict | None:
        """The quantizer as :func:`~fptquant.kernels.norm_quantize.norm_quantize` arguments where the RMSNorm in
        front of this linear (and its siblings) can be fused into the quantize of ``x``; None where not: no
        quantized input, an online transform, no siblings linked, rows the fused kernel does not hold, the
        PyTorch backend, or a learned clip per end of the row."""
        if not self.quantizes_shared_input_plainly():
            return None
        if x.shape[-1] > MAX_FUSED_ROW or backend_for(x) != "triton":
            return None
        return self._per_token_args()

    def _per_token_args(self) -> dict | None:
        """The input quantizer as ``quantize_per_token`` arguments: a static scale or
        one clip ratio; None for a learned clip per end of the row, which only the reference takes."""
        kind, value = self._input_plan()
        if kind == "static":
            return {"static_scale": value}
        return {"clip_ratio": value[0]} if value[0] == value[1] else None

    def dequantized_weight(self) -> torch.Tensor:
        return unpack_int4(self.qweight).float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if not self.input_quantizer.spec.enabled:  # weight-only (W4A16)
            if self.input_transform is not None:
                rows = self.input_transform(rows)
            y = rows.float() @ self.dequantized_weight().t() + (self.bias.float() if self.bias is not None else 0)
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        if self.sibling_gemm is not None:
            out = self.sibling_gemm.forward(self, x)
            if out is not None:
                return out
        # one token too: quantize then dp4a beat the GEMV that quantizes as it reads (H100, session 19)
        return self._matmul(*self.quantized_input(x, rows), x)

    def quantized_input(self, x: torch.Tensor, rows: torch.Tensor, reads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes and scales of ``rows`` (``x`` as a matrix), from the shared input's cache where a sibling or
        the norm in front left them, counted as ``reads`` of its members' reads."""
        cached = self.shared_input.lookup(x, reads) if self.shared_input is not None else None
        codes = cached if cached is not None else self._transform_and_quantize(rows)
        if self.shared_input is not None and cached is None:
            self.shared_input.store(x, codes, reads)
        return codes

    def forward_gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``forward(silu(gate) · up)`` with the product formed by the input's transform+quantize kernel, so a
        SwiGLU MLP's down projection never writes or reads the product (:class:`~.mlp.FusedSwiGLU`)."""
        if not self.input_quantizer.spec.enabled:
            return self(gated_product(gate, up))
        rows, up_rows = gate.reshape(-1, self.in_features), up.reshape(-1, self.in_features)
        return self._matmul(*self._transform_and_quantize(rows, up_rows), gate)

    def _matmul(self, codes: torch.Tensor, scales: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # gate and up hold views of their MLP's interleaved weights (.mlp): the kernels read unit strides
        bias = self.bias.float().contiguous() if self.bias is not None else None
        weights, scale = self.qweight.contiguous(), self.weight_scale.contiguous()
        y = w4a4_matmul(codes, scales.float(), weights, scale, bias, out_dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w=int4 packed, a={self.input_quantizer.extra_repr()}"


def same_input_side(a: QuantizedLinear, b: QuantizedLinear) -> bool:
    """Whether ``a`` and ``b`` turn one input into the same codes: the same transform, quantizer spec and state."""
    if a.input_transform is not b.input_transform or a.input_quantizer.spec != b.input_quantizer.spec:
        return False
    sa, sb = a.input_quantizer.state_dict(), b.input_quantizer.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def link_shared_inputs(groups: list[list[nn.Module]]) -> int:
    """Give each group of QuantizedLinears that provably quantize their input identically one
    :class:`SharedInput`; returns how many groups were linked."""
    linked = 0
    for group in groups:
        if len(group) > 1 and all(isinstance(m, QuantizedLinear) for m in group):
            if all(same_input_side(group[0], m) for m in group[1:]):
                shared = SharedInput(len(group))
                for m in group:
                    m.shared_input = shared
                linked += 1
    return linked
