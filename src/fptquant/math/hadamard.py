"""Hadamard matrices by construction, and the fast Walsh-Hadamard transform.

An order ``n`` is built as ``H_k ⊗ H_{2^m}`` where ``H_{2^m}`` is Sylvester's and ``H_k`` comes from a
Paley construction over the finite field GF(q), q a prime power:

* Paley I:  q ≡ 3 (mod 4) gives order q + 1      (12 = 11+1, 20, 24, 60, 108, 344 = 7³+1, ...)
* Paley II: q ≡ 1 (mod 4) gives order 2(q + 1)   (28 = 2·14, 36 = 2·18, 52 = 2·(25+1), ...)

This covers the sizes the models here need (576 = 36·16, 1536 = 12·128, 11008 = 344·32,
14336 = 28·512, ...). All matrices returned are normalised (orthogonal).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from ..errors import ConfigError


def _prime_power(q: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``q = p^k`` for a prime ``p``, else None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    k, rest = 0, q
    while rest % p == 0:
        rest //= p
        k += 1
    return (p, k) if rest == 1 else None


class _GaloisField:
    """GF(p^k) with elements encoded as integers (base-p digits = polynomial coefficients)."""

    def __init__(self, p: int, k: int):
        self.p, self.k, self.q = p, k, p**k
        self.modulus = self._irreducible() if k > 1 else None

    def _digits(self, a: int) -> list[int]:
        return [(a // self.p**i) % self.p for i in range(self.k)]

    def _number(self, digits: list[int]) -> int:
        return sum(d * self.p**i for i, d in enumerate(digits))

    def _irreducible(self) -> list[int]:
        """A monic degree-k polynomial with no factor of degree <= k/2 (found by search)."""
        p, k = self.p, self.k
        for tail in itertools.product(range(p), repeat=k):
            poly = list(tail) + [1]
            if tail[0] != 0 and not any(self._divides(f, poly) for d in range(1, k // 2 + 1) for f in self._monics(d)):
                return poly
        raise ValueError(f"no irreducible polynomial of degree {k} over GF({p})")

    def _monics(self, degree: int):
        for tail in itertools.product(range(self.p), repeat=degree):
            yield list(tail) + [1]

    def _divides(self, f: list[int], g: list[int]) -> bool:
        g = g[:]
        while len(g) >= len(f):
            c = g[-1]
            for i in range(len(f)):
                g[len(g) - len(f) + i] = (g[len(g) - len(f) + i] - c * f[i]) % self.p
            g.pop()
        return not any(g)

    def sub(self, a: int, b: int) -> int:
        return self._number([(x - y) % self.p for x, y in zip(self._digits(a), self._digits(b), strict=True)])

    def mul(self, a: int, b: int) -> int:
        if self.k == 1:
            return a * b % self.p
        prod = [0] * (2 * self.k - 1)
        for i, x in enumerate(self._digits(a)):
            for j, y in enumerate(self._digits(b)):
                prod[i + j] = (prod[i + j] + x * y) % self.p
        for top in range(len(prod) - 1, self.k - 1, -1):  # reduce modulo the irreducible polynomial
            c = prod[top]
            if c:
                for i in range(self.k + 1):
                    prod[top - self.k + i] = (prod[top - self.k + i] - c * self.modulus[i]) % self.p
        return self._number(prod[: self.k])


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(a_i − a_j), χ the quadratic character of GF(q)."""
    p, k = _prime_power(q)
    field = _GaloisField(p, k)
    squares = {field.mul(x, x) for x in range(1, q)}
    chi = [0] + [1 if a in squares else -1 for a in range(1, q)]
    return torch.tensor([[chi[field.sub(i, j)] for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley(order: int) -> torch.Tensor | None:
    """An unnormalised ±1 Hadamard matrix of ``order`` by Paley I or II, or None."""
    q = order - 1
    if _prime_power(q) and q % 4 == 3:
        Q = _jacobsthal(q)
        S = torch.zeros(order, order, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
        return S + torch.eye(order, dtype=torch.float64)
    q = order // 2 - 1
    if order % 2 == 0 and _prime_power(q) and q % 4 == 1:
        Q = _jacobsthal(q)
        S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, 1, Q
        a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        return torch.kron(S, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


@functools.cache
def _base_factor(n: int) -> int | None:
    """The smallest k with n = k·2^m and a known construction of H_k (k = 1 for powers of two)."""
    m = (n & -n).bit_length() - 1
    for shift in range(m, -1, -1):
        k = n >> shift
        if k == 1 or (k % 4 == 0 and _paley(k) is not None):
            return k
    return None


def hadamard_exists(n: int) -> bool:
    """Whether :func:`hadamard` can build a Hadamard matrix of order ``n``."""
    return n >= 1 and (n <= 2 or _base_factor(n) is not None)


@functools.lru_cache(maxsize=32)
def _hadamard_unnormalised(n: int) -> torch.Tensor:
    if n == 2:
        return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    k = _base_factor(n)
    if k is None:
        raise ValueError(f"no Hadamard matrix of order {n} can be constructed here (n = k·2^m, k from Paley I/II)")
    base = torch.ones(1, 1, dtype=torch.float64) if k == 1 else _paley(k)
    sylvester = torch.ones(1, 1, dtype=torch.float64)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range((n // k).bit_length() - 1):
        sylvester = torch.kron(sylvester, h2)
    return torch.kron(base, sylvester)


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalised (orthogonal) Hadamard matrix ``H_n / √n``."""
    return (_hadamard_unnormalised(n) / math.sqrt(n)).to(dtype)


def hadamard_factors(block: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(P1, P2, gain)`` with ``gain · (P1 ⊗ P2)`` the normalised Hadamard of a power-of-two ``block``
    (Sylvester: ``H_ab = H_a ⊗ H_b``), both factors ``±2^-j`` (exact in bfloat16, so the fused transform+quantize
    kernel needs no ``lo`` dots for them) and as near square as the block allows; ``gain`` (1, 1/2 or 1/√2)
    holds the rest of the normalisation."""
    if block < 1 or block & (block - 1):
        raise ConfigError(f"the fused block Hadamard takes power-of-two blocks, got {block}")
    log2 = block.bit_length() - 1
    a, b = log2 // 2, log2 - log2 // 2
    p1 = hadamard(2**a) * 2 ** (a / 2 - a // 2)  # ±2^-(a//2)
    p2 = hadamard(2**b) * 2 ** (b / 2 - b // 2)
    return p1.float(), p2.float(), 2.0 ** ((a // 2 + b // 2) - log2 / 2)


def random_hadamard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``diag(s) H_n / √n`` with random signs ``s``: orthogonal, and different for each seed (float64)."""
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard(n)


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Haar-random orthogonal matrix (QR of a Gaussian with the sign fix), float64."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous()


def fwht(x: torch.Tensor) -> torch.Tensor:
    """``x @ H_n / √n`` along the last dim in O(n log n): butterflies over the 2^m part, dense over k."""
    n = x.shape[-1]
    k = 1 if n & (n - 1) == 0 else _base_factor(n)
    if k is None:
        raise ValueError(f"no Hadamard matrix of order {n}")
    size = n // k
    shape = x.shape
    y = x.reshape(-1, k, size)
    h = 1
    while h < size:  # Sylvester butterflies on the trailing 2^m block
        y = y.view(-1, k, size // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    y = y.reshape(-1, k, size)
    if k > 1:
        y = torch.einsum("ij,bjs->bis", _hadamard_unnormalised(k).to(y.dtype).t().to(y.device), y)
    return (y / math.sqrt(n)).reshape(shape)


def block_fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Block-diagonal Hadamard: :func:`fwht` applied to each consecutive ``block`` of the last dim."""
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"block {block} does not divide {n}")
    return fwht(x.reshape(*x.shape[:-1], n // block, block)).reshape(x.shape)


def largest_power_of_two_factor(n: int) -> int:
    return n & -n
