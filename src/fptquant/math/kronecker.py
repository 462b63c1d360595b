"""Kronecker-factored affine transforms (FlatQuant): ``x -> x (P1 ⊗ P2)`` without forming the product.

A token vector of size ``n = n1·n2`` is viewed as an ``n1×n2`` matrix ``X`` (row-major); then
``x (P1 ⊗ P2) = vec(P1ᵀ X P2)``. Each factor is parametrised as ``P = U diag(σ) Vᵀ`` with orthogonal
``U``, ``V`` (Cayley), so ``P^{-T} = U diag(1/σ) Vᵀ`` is available in closed form; or, as FlatQuant's
``--direct_inv``, as a plain matrix whose inverse is computed in float64 at every use.

Matrices are built outside autocast, in float32 (float64 for merging): a half-precision ``P`` and
``P^{-T}`` would not cancel, and mixed-precision training must only round the activations.

With ``bf16=True`` the online side runs in bfloat16 numerics, training and deploy alike: each factor is
rounded to bfloat16 (the weight side takes the exact inverse of the rounded factor, so the function is kept)
and the product ``P1ᵀX`` is rounded to bfloat16 before ``P2`` meets it; gradients pass straight through the
roundings. The fused transform+quantize kernel then takes one tensor-core product per factor
(kernels/transform_quantize.py, ``round_mid``).
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


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to the nearest bfloat16, kept in ``t``'s dtype, with the identity's gradient (straight-through)."""
    return t.detach().to(torch.bfloat16).to(t.dtype) + (t - t.detach())


def kron_apply(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, round_mid: bool = False) -> torch.Tensor:
    """``x (P1 ⊗ P2)`` along the last dim, as ``P1ᵀ X P2`` on the ``n1×n2`` view of each token
    (``round_mid``: ``P1ᵀ X`` rounded to bfloat16 first)."""
    n1, n2 = p1.shape[0], p2.shape[0]
    mid = p1.t().to(x.dtype) @ x.reshape(*x.shape[:-1], n1, n2)
    if round_mid:
        mid = round_bf16(mid)
    return (mid @ p2.to(x.dtype)).reshape(x.shape)


def factor_matrix(factor: nn.Module, bf16: bool, inverse_transpose: bool = False) -> torch.Tensor:
    """A live factor's ``P`` (or ``P^{-T}``), differentiable; with ``bf16``, ``P`` rounded to bfloat16 and the
    exact inverse of that (gradients of the unrounded factor pass straight through)."""
    if not bf16:
        return factor(inverse_transpose=inverse_transpose)
    rounded = round_bf16(factor())
    if not inverse_transpose:
        return rounded
    closed_form = factor(inverse_transpose=True)
    with no_autocast(closed_form.device):
        # Newton–Schulz from the unrounded factor's inverse: the error (2^-9 times the condition number at the
        # start) squares each step, to float rounding after three; matmuls only, so a CUDA graph can hold it
        r, inv = rounded.detach(), closed_form.detach().t()
        two = 2 * torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
        for _ in range(3):
            inv = inv @ (two - r @ inv)
    return inv.t() + (closed_form - closed_form.detach())


@torch.no_grad()
def factor_matrix64(factor: nn.Module, bf16: bool, inverse_transpose: bool = False) -> torch.Tensor:
    """:func:`factor_matrix` in float64 for merging (the rounded ``P`` is exact in any float dtype)."""
    if not bf16:
        return factor.matrix64(inverse_transpose=inverse_transpose)
    rounded = factor.matrix64().to(torch.bfloat16).double()
    return torch.linalg.inv(rounded).t() if inverse_transpose else rounded


FACTOR_KINDS = ("svd", "inverse")


def no_autocast(device: torch.device):
    """Full-precision matrix math inside an autocast region (for transform matrices and weight sides)."""
    return torch.autocast(device.type, enabled=False)


class SVDFactor(nn.Module):
    """``P = U diag(σ) Vᵀ`` with Cayley-orthogonal ``U``, ``V`` and ``σ = 1``.

    ``U`` and ``V`` start as random orthogonal matrices (FlatQuant), or as the identity with
    ``identity=True`` (FPTQuant's value transform, which starts as the identity map).
    """

    def __init__(self, n: int, generator: torch.Generator | None = None, identity: bool = False):
        super().__init__()
        self.n = n
        init = (lambda: torch.eye(n, dtype=torch.float64)) if identity else (lambda: random_orthogonal(n, generator))
        self.u = CayleyRotation(init())
        self.v = CayleyRotation(init())
        self.sigma = nn.Parameter(torch.ones(n))

    def condition_number(self) -> torch.Tensor:
        """``max|σ| / min|σ|`` (a tensor, so checking it needs no GPU synchronisation until read)."""
        s = self.sigma.detach().abs()
        return s.max() / s.min().clamp(min=1e-30)

    def forward(self, inverse_transpose: bool = False) -> torch.Tensor:
        with no_autocast(self.sigma.device):
            u, v = self.u(), self.v()
            sigma = self.sigma.to(u.dtype)  # 1/σ in the factors' precision, so P and P^{-T} cancel
            s = 1.0 / sigma if inverse_transpose else sigma
            return (u * s[None, :]) @ v.t()

    def rotations(self) -> list[CayleyRotation]:
        return [self.u, self.v]

    @torch.no_grad()
    def matrix64(self, inverse_transpose: bool = False) -> torch.Tensor:
        s = 1.0 / self.sigma.double() if inverse_transpose else self.sigma.double()
        return (self.u.matrix64() * s[None, :]) @ self.v.matrix64().t()


class InverseFactor(nn.Module):
    """A free matrix (random orthogonal init) whose inverse-transpose is ``inv(P)ᵀ`` in float64."""

    def __init__(self, n: int, generator: torch.Generator | None = None):
        super().__init__()
        self.n = n
        self.matrix = nn.Parameter(random_orthogonal(n, generator).float())

    def forward(self, inverse_transpose: bool = False) -> torch.Tensor:
        if not inverse_transpose:
            return self.matrix
        return torch.linalg.inv_ex(self.matrix.double())[0].t().to(self.matrix.dtype)  # _ex: no GPU sync

    def rotations(self) -> list[CayleyRotation]:
        return []

    @torch.no_grad()
    def matrix64(self, inverse_transpose: bool = False) -> torch.Tensor:
        m = self.matrix.double()
        return torch.linalg.inv(m).t() if inverse_transpose else m


def make_factor(n: int, kind: str = "svd", generator: torch.Generator | None = None) -> nn.Module:
    """A learnable invertible ``n×n`` matrix: ``svd`` (closed-form inverse) or ``inverse`` (float64 inverse)."""
    if kind == "svd":
        return SVDFactor(n, generator)
    if kind == "inverse":
        return InverseFactor(n, generator)
    raise ValueError(f"unknown factor kind {kind!r}; choose one of {FACTOR_KINDS}")


class KroneckerTransform(nn.Module):
    """A learnable ``x -> (x ⊙ c)(P1 ⊗ P2)`` over ``n`` features, with its weight-side counterpart.

    ``forward`` is the online activation side; :meth:`apply_to_weight` is the differentiable weight
    side ``W diag(1/c) (P1 ⊗ P2)^{-T}`` used in training, and :meth:`weight_side` the same map as a
    dense float64 matrix for the final merge. ``factors=False`` keeps only the diagonal (no ``P``);
    ``bf16`` the bfloat16 online numerics of the module docstring.
    """

    def __init__(
        self,
        n: int,
        diagonal: bool = True,
        generator: torch.Generator | None = None,
        factors: bool = True,
        kind: str = "svd",
        bf16: bool = False,
    ):
        super().__init__()
        if not (diagonal or factors):
            raise ValueError("a KroneckerTransform needs the diagonal, the factors or both")
        self.n = n
        self.n1, self.n2 = decompose_dim(n)
        self.p1 = make_factor(self.n1, kind, generator) if factors else None
        self.p2 = make_factor(self.n2, kind, generator) if factors else None
        self.diag = nn.Parameter(torch.ones(n)) if diagonal else None
        self.bf16 = bf16

    def rotations(self) -> list[CayleyRotation]:
        return [r for p in (self.p1, self.p2) if p is not None for r in p.rotations()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.diag is not None:
            x = x * self.diag.to(x.dtype)
        if self.p1 is None:
            return x
        return kron_apply(x, *self._factors(), round_mid=self.bf16)

    def _factors(self, inverse_transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(factor_matrix(p, self.bf16, inverse_transpose) for p in (self.p1, self.p2))

    def apply_to_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``W diag(1/c) (P1 ⊗ P2)^{-T}`` for a weight whose input features this transform feeds."""
        with no_autocast(weight.device):
            w = weight.to(torch.promote_types(weight.dtype, torch.float32))
            if self.diag is not None:
                w = w / self.diag.to(w.dtype)
            if self.p1 is not None:
                w = kron_apply(w, *self._factors(inverse_transpose=True))
            return w.to(weight.dtype)

    @torch.no_grad()
    def online_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(P1, P2)`` in float64: what stays online once ``c`` is folded away (None without factors)."""
        if self.p1 is None:
            return None
        return factor_matrix64(self.p1, self.bf16), factor_matrix64(self.p2, self.bf16)

    @torch.no_grad()
    def weight_side(self, factors_inverse_transpose: torch.Tensor | None = None) -> torch.Tensor:
        """``M`` with ``W <- W M`` preserving the layer: ``M = diag(1/c) (P1 ⊗ P2)^{-T}`` in float64.

        ``factors_inverse_transpose`` replaces ``(P1 ⊗ P2)^{-T}``, e.g. the exact inverse of factors
        stored rounded to a compute dtype, so the merge cancels what is really applied online.
        """
        device = next(self.parameters()).device
        if factors_inverse_transpose is not None:
            m = factors_inverse_transpose.double()
        elif self.p1 is None:
            m = torch.eye(self.n, dtype=torch.float64, device=device)
        else:
            m = torch.kron(*(factor_matrix64(p, self.bf16, inverse_transpose=True) for p in (self.p1, self.p2)))
        if self.diag is not None:
            m = m / self.diag.double()[:, None]
        return m

    def extra_repr(self) -> str:
        return (f"n={self.n} ({self.n1}x{self.n2}), diagonal={self.diag is not None}, factors={self.p1 is not None}"
                f"{', bf16' if self.bf16 else ''}")  # fmt: skip
