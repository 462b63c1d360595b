"""The recipe: everything needed to reproduce a quantized model (method, bits, quantizer settings, data)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..math.quantization import Axis
from ..math.quantizer import QuantSpec
from .bits import BitsSpec, parse_bits
from .jsonfile import read_json

RECIPE_VERSION = 1
WEIGHT_QUANTIZERS = ("rtn", "gptq")
BASE_DEFAULTS = {"weight_quantizer": "rtn", "act_clip_ratio": 1.0, "kv_clip_ratio": 1.0, "weight_clip_search": False}


@dataclass
class Recipe:
    """A quantization recipe. Defaults follow the papers' W4A4KV4 setting with RTN.

    Weights: per output channel, symmetric, min-max. Activations (inputs of every decoder linear):
    per token, symmetric, dynamic. KV cache: per (token, head), asymmetric, quantized after RoPE.
    """

    method: str = "rtn"
    bits: str = "w4a4kv4"
    model: str | None = None
    weight_quantizer: str | None = None  # "rtn" (round to nearest) or "gptq"; None: the method's default
    weight_symmetric: bool = True
    weight_group_size: int | None = None
    weight_clip_ratio: float = 1.0
    weight_clip_search: bool | None = None  # None: the method's default
    act_symmetric: bool = True
    act_static: bool = False
    act_clip_ratio: float | None = None  # None: the method's default (1.0 for RTN, 0.9 for QuaRot)
    kv_symmetric: bool = False
    kv_clip_ratio: float | None = None  # None: the method's default (1.0 for RTN, 0.95 for QuaRot)
    gptq_block_size: int = 128
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    gptq_static_groups: bool = False
    calib_samples: int = 128
    calib_seqlen: int = 2048
    seed: int = 0
    method_args: dict[str, Any] = field(default_factory=dict)
    version: int = RECIPE_VERSION

    def __post_init__(self):
        self.bits = str(parse_bits(self.bits))
        if self.weight_quantizer is not None and self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ConfigError(
                f"unknown weight quantizer {self.weight_quantizer!r}; choose {', '.join(WEIGHT_QUANTIZERS)}"
            )
        for name in ("weight_clip_ratio", "act_clip_ratio", "kv_clip_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.weight_group_size is not None and self.weight_group_size <= 0:
            raise ConfigError(f"weight_group_size must be positive, got {self.weight_group_size}")
        if self.calib_samples <= 0 or self.calib_seqlen <= 0:
            raise ConfigError("calib_samples and calib_seqlen must be positive")
        if self.version > RECIPE_VERSION:
            raise ConfigError(
                f"recipe version {self.version} is newer than this fptquant understands "
                f"({RECIPE_VERSION}); upgrade fptquant"
            )

    def resolved(self, method_defaults: dict[str, Any]) -> Recipe:
        """A copy with every ``None`` option filled from the method's defaults, then the global ones."""
        values = self.to_dict()
        for key, default in {**BASE_DEFAULTS, **method_defaults}.items():
            if values.get(key) is None:
                values[key] = default
        return Recipe.from_dict(values)

    @property
    def bit_spec(self) -> BitsSpec:
        return parse_bits(self.bits)

    def weight_spec(self) -> QuantSpec:
        grouped = self.weight_group_size is not None
        return QuantSpec(
            bits=self.bit_spec.weights,
            symmetric=self.weight_symmetric,
            axis=Axis.GROUP if grouped else Axis.ROW,
            group_size=self.weight_group_size,
            clip_ratio=self.weight_clip_ratio,
        )

    def activation_spec(self) -> QuantSpec:
        return QuantSpec(
            bits=self.bit_spec.activations,
            symmetric=self.act_symmetric,
            axis=Axis.TENSOR if self.act_static else Axis.ROW,
            dynamic=not self.act_static,
            clip_ratio=self.act_clip_ratio or 1.0,
        )

    def kv_spec(self, head_dim: int) -> QuantSpec:
        return QuantSpec(
            bits=self.bit_spec.kv_cache,
            symmetric=self.kv_symmetric,
            axis=Axis.GROUP,
            group_size=head_dim,
            clip_ratio=self.kv_clip_ratio or 1.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown recipe keys: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(read_json(path, "recipe file", ConfigError))
