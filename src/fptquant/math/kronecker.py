"""Kronecker-factored affine transforms (FlatQuant): ``x -> x (P1 ⊗ P2)`` without forming the product.

A token vector of size ``n = n1·n2`` is viewed as an ``n1×n2`` matrix ``X`` (row-major); then
``x (P1 ⊗ P2) = vec(P1ᵀ X P2)``. Each factor is parametrised as ``P = U diag(σ) Vᵀ`` with orthogonal
``U``, ``V`` (Cayley), so ``P^{-T} = U diag(1/σ) Vᵀ`` is available in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cayley import CayleyRotation
from .hadamard import random_orthogonal


def decompose_dim(n: int) -> tuple[int, int]:
    """The factor pair ``n1 <= n2`` of ``n`` closest to ``√n`` (FlatQuant's rule: 576 -> 24×24, 1536 -> 32×48)."""
    a = math.isqrt(n)
    if a * a < n:
        a += 1
    while True:
        b2 = a * a - n
        b = math.isqrt(b2)
        if b * b == b2:
            return a - b, a + b
        a += 1


def kron_apply(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """``x (P1 ⊗ P2)`` along the last dim, as ``P1ᵀ X P2`` on the ``n1×n2`` view of each token."""
    n1, n2 = p1.shape[0], p2.shape[0]
    view = x.reshape(*x.shape[:-1], n1, n2)
    return (p1.t().to(x.dtype) @ view @ p2.to(x.dtype)).reshape(x.shape)


class SVDFactor(nn.Module):
    """``P = U diag(σ) Vᵀ`` with Cayley-orthogonal ``U``, ``V`` (random orthogonal init) and ``σ = 1``."""

    def __init__(self, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.u = CayleyRotation(random_orthogonal(n, generator))
        self.v = CayleyRotation(random_orthogonal(n, generator))
        self.sigma = nn.Parameter(torch.ones(n))

    def forward(self, inverse_transpose: bool = False) -> torch.Tensor:
        s = 1.0 / self.sigma if inverse_transpose else self.sigma
        return (self.u() * s[None, :]) @ self.v().t()

    @torch.no_grad()
    def matrix64(self, inverse_transpose: bool = False) -> torch.Tensor:
        s = 1.0 / self.sigma.double() if inverse_transpose else self.sigma.double()
        return (self.u.matrix64() * s[None, :]) @ self.v.matrix64().t()


class KroneckerTransform(nn.Module):
    """A learnable ``x -> (x ⊙ c)(P1 ⊗ P2)`` over ``n`` features, with its weight-side counterpart.

    ``forward`` is the online activation side; :meth:`weight_side` gives ``diag(1/c)·(P1 ⊗ P2)^{-T}``
    densely in float64, to merge into the weights of the linears that read the transformed input.
    """

    def __init__(self, n: int, diagonal: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        self.n = n
        self.n1, self.n2 = decompose_dim(n)
        self.p1, self.p2 = SVDFactor(self.n1, generator), SVDFactor(self.n2, generator)
        self.diag = nn.Parameter(torch.ones(n)) if diagonal else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.diag is not None:
            x = x * self.diag.to(x.dtype)
        return kron_apply(x, self.p1(), self.p2())

    @torch.no_grad()
    def weight_side(self) -> torch.Tensor:
        """``M`` with ``W <- W M`` preserving the layer: ``M = diag(1/c) (P1 ⊗ P2)^{-T}``."""
        m = torch.kron(self.p1.matrix64(inverse_transpose=True), self.p2.matrix64(inverse_transpose=True))
        if self.diag is not None:
            m = m / self.diag.double()[:, None]
        return m

    def extra_repr(self) -> str:
        return f"n={self.n} ({self.n1}x{self.n2}), diagonal={self.diag is not None}"
