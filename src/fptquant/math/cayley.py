"""Orthogonal matrices parametrised on the Stiefel manifold by the Cayley map.

``R = (I - A/2)^{-1} (I + A/2) R0`` with ``A`` skew-symmetric. ``A = 0`` gives exactly the initial
rotation ``R0``; every ``A`` gives an orthogonal ``R`` (``I - A/2`` is never singular for skew ``A``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def cayley(skew: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(skew.shape[0], dtype=skew.dtype, device=skew.device)
    # solve_ex: no error check, hence no GPU synchronisation (I - A/2 is never singular for skew A;
    # NaN parameters surface as NaN losses, which the training loops catch)
    return torch.linalg.solve_ex(eye - skew / 2, eye + skew / 2)[0]


class CayleyRotation(nn.Module):
    """A trainable orthogonal matrix starting at ``init``; call it to get the matrix."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        # float64 so that matrix64() is orthogonal to machine precision; forward casts to the compute dtype
        self.register_buffer("base", init.double().contiguous())
        self.weight = nn.Parameter(torch.zeros_like(self.base))  # only the strict upper triangle is used
        self._cached: torch.Tensor | None = None
        self._caching = False

    def _skew(self, dtype: torch.dtype) -> torch.Tensor:
        upper = torch.triu(self.weight.to(dtype), diagonal=1)
        return upper - upper.t()

    def forward(self) -> torch.Tensor:
        if self._caching and self._cached is not None:
            return self._cached
        dtype = self.weight.dtype
        matrix = cayley(self._skew(dtype)) @ self.base.to(dtype)
        if self._caching:
            self._cached = matrix
        return matrix

    @contextlib.contextmanager
    def cached(self):
        """Compute the matrix once for every use inside the block (one solve per forward, not per weight)."""
        self._caching, self._cached = True, None
        try:
            yield
        finally:
            self._caching, self._cached = False, None

    @torch.no_grad()
    def matrix64(self) -> torch.Tensor:
        """The current rotation computed in float64 (for exact merging)."""
        return cayley(self._skew(torch.float64)) @ self.base.double()


def cached_all(rotations: list[CayleyRotation], batched: bool = False) -> contextlib.ExitStack:
    """:meth:`CayleyRotation.cached` for many rotations at once. ``batched``: compute their matrices on entry
    with one batched solve per matrix size. A solve is a handful of small launches (LU, triangular solves),
    so sixty separate ones made FlatQuant's compiled training step wait on the CPU (docs/RESULTS.md)."""
    stack = contextlib.ExitStack()
    for rotation in rotations:
        stack.enter_context(rotation.cached())
    if not batched:
        return stack
    groups: dict[tuple, list[CayleyRotation]] = {}
    for rotation in rotations:
        w = rotation.weight
        groups.setdefault((w.shape[0], w.dtype, w.device), []).append(rotation)
    for (n, dtype, device), members in groups.items():
        skew = torch.stack([m._skew(dtype) for m in members])
        eye = torch.eye(n, dtype=dtype, device=device).expand_as(skew)
        solved = torch.linalg.solve_ex(eye - skew / 2, eye + skew / 2)[0]  # no error check: no synchronisation
        matrices = solved @ torch.stack([m.base.to(dtype) for m in members])
        for i, member in enumerate(members):
            member._cached = matrices[i]
    return stack
