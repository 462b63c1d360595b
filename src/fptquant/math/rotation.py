"""Merging linear transforms into ``y = x Wᵀ + b`` weights, exactly, in float64.

* input side:  ``x Wᵀ = (x P)(W P^{-T})ᵀ``  -> :func:`merge_input_transform` with ``P^{-T}``
* output side: ``(x Wᵀ + b) T = x (Tᵀ W)ᵀ + b T`` -> :func:`merge_output_transform`
* per-channel: ``diag(g)`` on the input is the input-side merge with ``P^{-T} = diag(g)``
For an orthogonal ``Q``, ``Q^{-T} = Q``.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def merge_input_transform(weight: torch.Tensor, inverse_transpose: torch.Tensor) -> None:
    """In place: ``W <- W P^{-T}``, so the layer accepts inputs ``x P`` (computed in float64)."""
    merged = weight.double() @ inverse_transpose.double().to(weight.device)
    weight.copy_(merged.to(weight.dtype))


@torch.no_grad()
def merge_output_transform(weight: torch.Tensor, bias: torch.Tensor | None, transform: torch.Tensor) -> None:
    """In place: ``W <- Tᵀ W`` and ``b <- b T``, so the layer emits ``y T``."""
    t = transform.double().to(weight.device)
    weight.copy_((t.t() @ weight.double()).to(weight.dtype))
    if bias is not None:
        bias.copy_((bias.double() @ t).to(bias.dtype))


@torch.no_grad()
def scale_input_channels(weight: torch.Tensor, scale: torch.Tensor) -> None:
    """In place: ``W <- W diag(s)`` (absorbs a per-input-channel scale, e.g. a folded norm gain)."""
    weight.copy_((weight.double() * scale.double().to(weight.device)[None, :]).to(weight.dtype))


def block_diagonal(block: torch.Tensor, repeats: int) -> torch.Tensor:
    """``I_repeats ⊗ block``: the same transform applied to each consecutive chunk (e.g. per head)."""
    return torch.kron(torch.eye(repeats, dtype=block.dtype, device=block.device), block)


def across_chunks(mix: torch.Tensor, chunk: int) -> torch.Tensor:
    """``mix ⊗ I_chunk``: mixes chunks (e.g. heads) with ``mix`` and leaves positions inside a chunk alone."""
    return torch.kron(mix, torch.eye(chunk, dtype=mix.dtype, device=mix.device))
