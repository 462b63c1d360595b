"""Typed method options from ``--method-arg KEY=VALUE`` pairs (a frozen dataclass per method)."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

import torch

from ..errors import ConfigError

T = TypeVar("T")
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # autocast dtypes a method may train in


def _coerce(method: str, key: str, default, value):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{method} option {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{method} option {key} must be a number, got {value!r}") from None
    return value


def options_from_args(cls: type[T], args: dict, method: str) -> T:
    """Build ``cls`` from user arguments: unknown keys and wrongly typed values are clear errors."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown {method} option(s) {unknown}; known: {', '.join(sorted(known))}")
    return cls(**{key: _coerce(method, key, getattr(cls, key), value) for key, value in args.items()})
