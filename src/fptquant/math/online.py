"""Online transforms: modules applied to activations at run time, whose inverse is merged offline.

Each has ``matrix()`` returning the dense float64 equivalent ``T`` of ``x -> x T`` so the weight side
can be merged exactly (``W <- W T^{-T}``). Learned matrices are stored in ``dtype`` (float32 for
float32/16-bit models) and the merge inverts exactly the stored matrix, so both sides agree.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .hadamard import block_fwht, fwht, hadamard, hadamard_exists, largest_power_of_two_factor
from .kronecker import kron_apply, round_bf16
from .rotation import across_chunks, block_diagonal

DENSE_HADAMARD_MAX = 1024  # on a GPU, blocks up to this size are one float32 matmul (≤ 4 MB matrix)
_dense_blocks: dict[tuple[int, torch.device], torch.Tensor] = {}


def _dense_block(block: int, device: torch.device) -> torch.Tensor:
    """``H_block / √block`` in float32 on ``device``, built once (the first, eager, call: not in a CUDA graph)."""
    key = (block, device)
    if key not in _dense_blocks:
        _dense_blocks[key] = hadamard(block, torch.float32).to(device)
    return _dense_blocks[key]


class OnlineHadamard(nn.Module):
    """``x -> x H`` over the last dim (block-diagonal with ``block`` when given), in float32.

    On a GPU a block of at most ``DENSE_HADAMARD_MAX`` is one matmul: the fast transform's butterflies are
    dozens of small kernels a call, and they bounded FPTQuant's end-to-end training step by launch cost.
    Elsewhere (and for larger blocks) the O(n log n) fast transform runs."""

    def __init__(self, size: int, block: int | None = None):
        super().__init__()
        self.size, self.block = size, block or size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_to(x, dense=x.is_cuda and self.block <= DENSE_HADAMARD_MAX)

    def apply_to(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        if dense:
            with torch.autocast(x.device.type, enabled=False):  # float32, also inside bf16-autocast training
                blocks = x.float().reshape(*x.shape[:-1], self.size // self.block, self.block)
                return (blocks @ _dense_block(self.block, x.device)).reshape(x.shape).to(x.dtype)
        if self.block == self.size:
            return fwht(x.float()).to(x.dtype)
        return block_fwht(x.float(), self.block).to(x.dtype)

    def matrix(self) -> torch.Tensor:
        return block_diagonal(hadamard(self.block), self.size // self.block)

    def extra_repr(self) -> str:
        return f"size={self.size}, block={self.block}"


def online_hadamard(kind: str, n: int) -> OnlineHadamard | None:
    """An online Hadamard over ``n`` features: ``full`` (of order ``n`` where one exists, else block-diagonal
    over the largest power-of-two factor, with a warning), ``block`` (that block-diagonal one) or ``none``."""
    if kind == "none":
        return None
    block = largest_power_of_two_factor(n)
    if kind == "block":
        return OnlineHadamard(n, block)
    if kind != "full":
        raise ValueError(f"unknown online Hadamard kind {kind!r} (full, block or none)")
    if hadamard_exists(n):
        return OnlineHadamard(n)
    logging.getLogger(__name__).warning(
        "no Hadamard matrix of order %d: using a block-diagonal Hadamard with blocks of %d", n, block
    )
    return OnlineHadamard(n, block)


class HeadMixing(nn.Module):
    """``x -> x (M ⊗ I_d)``: mixes the heads of an ``(h·d)``-wide activation with an ``h×h`` matrix
    (``round_mid``: the result rounded to bfloat16, FlatQuant's bf16 online numerics)."""

    def __init__(self, mix: torch.Tensor, head_dim: int, dtype: torch.dtype = torch.float32, round_mid: bool = False):
        super().__init__()
        self.head_dim, self.round_mid = head_dim, round_mid
        self.register_buffer("mix", mix.to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(*x.shape[:-1], self.mix.shape[0], self.head_dim)
        y = torch.einsum("...jd,ji->...id", y, self.mix.to(x.dtype))
        return (round_bf16(y) if self.round_mid else y).reshape(x.shape)

    def matrix(self) -> torch.Tensor:
        return across_chunks(self.mix.double(), self.head_dim)


class QKHadamard(nn.Module):
    """Hadamard on post-RoPE queries and keys per head: ``q kᵀ = (q H)(k H)ᵀ`` for orthogonal ``H``."""

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return fwht(x.float()).to(x.dtype)

    key = query

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(query), self.key(key)


class OnlineKronecker(nn.Module):
    """``x -> x (P1 ⊗ P2)`` with fixed factors (FlatQuant's deploy-time online transform; ``round_mid``:
    ``P1ᵀX`` rounded to bfloat16, its bf16 online numerics)."""

    def __init__(self, p1: torch.Tensor, p2: torch.Tensor, dtype: torch.dtype = torch.float32, round_mid: bool = False):
        super().__init__()
        self.round_mid = round_mid
        self.register_buffer("p1", p1.to(dtype).contiguous())
        self.register_buffer("p2", p2.to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kron_apply(x, self.p1, self.p2, round_mid=self.round_mid)

    def matrix(self) -> torch.Tensor:
        return torch.kron(self.p1.double(), self.p2.double())

    def inverse_transpose(self) -> torch.Tensor:
        """``(P1 ⊗ P2)^{-T}`` of the stored factors, in float64, from the small inverses."""
        return torch.kron(torch.linalg.inv(self.p1.double()).t(), torch.linalg.inv(self.p2.double()).t())

    def extra_repr(self) -> str:
        return f"{self.p1.shape[0]}x{self.p2.shape[0]}{', round_mid' if self.round_mid else ''}"


class QKTransform(nn.Module):
    """Post-RoPE ``k -> k P`` and ``q -> q P^{-T}`` per head, so ``q kᵀ`` is unchanged (FlatQuant P_h)."""

    def __init__(self, matrix: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        key_side = matrix.to(dtype)
        self.register_buffer("key_side", key_side.contiguous())
        self.register_buffer("query_side", torch.linalg.inv(key_side.double()).t().to(dtype).contiguous())

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.query_side.to(x.dtype)

    def key(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.key_side.to(x.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(query), self.key(key)
