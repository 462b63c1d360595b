"""Recover the integer codes and scales of weights that already lie on a symmetric quantization grid.

RTN and GPTQ leave each decoder weight as ``q · s`` (codes ``q`` in ``[-2^(b-1), 2^(b-1) - 1]``, one
scale per output row) stored in the model's dtype. Export needs ``q`` and ``s`` back: for each row the
entry of largest magnitude has code ``±k`` for some ``k ≤ 2^(b-1)``; the finest ``s = max|w| / k`` that
makes every entry integral (within the storage dtype's rounding) is taken, so ``q · s`` rebuilds ``w``.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .quantization import SCALE_EPS


def recover_symmetric_grid(
    weight: torch.Tensor, bits: int = 4, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 (N, K), scales float32 (N,))`` with ``codes · scales[:, None] ≈ weight``."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    # storage rounding: a code q·s kept in bf16 is off by up to |q|·2^-8 units; float32 by far less
    tol = 0.05 if weight.dtype in (torch.bfloat16, torch.float16) else 1e-3
    codes = torch.zeros_like(w, dtype=torch.int8)
    scales = torch.full_like(amax, SCALE_EPS)
    todo = amax > 0
    for k in range(-qmin, 0, -1):  # 8, 7, ..., 1: the finest grid first
        if not todo.any():
            break
        s = amax[todo] / k
        q = w[todo] / s[:, None]
        r = torch.round(q)
        ok = ((q - r).abs() <= tol).all(dim=1) & (r >= qmin).all(dim=1) & (r <= qmax).all(dim=1)
        rows = todo.nonzero().squeeze(1)[ok]
        codes[rows] = r[ok].to(torch.int8)
        scales[rows] = s[ok]
        todo[rows] = False
    if todo.any():
        raise ConfigError(
            f"{name}: {int(todo.sum())} rows are not on a symmetric {bits}-bit per-channel grid; export packs "
            "RTN/GPTQ weights with per-channel symmetric scales only (no groups, no zero points)"
        )
    return codes, scales
