"""GPTQ (Frantar et al., 2022): column-by-column rounding with second-order error feedback.

Pure tensor code: takes a weight ``W (out, in)`` and the Hessian proxy ``H = 2/n Σ x xᵀ`` of the
inputs that layer really sees, returns the fake-quantized weight.
"""

from __future__ import annotations

import torch

from .quantization import fake_quantize, weight_qparams


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over all tokens seen, in float32 (float64 would double the memory)."""

    def __init__(self, features: int, device: torch.device):
        self.H = torch.zeros(features, features, device=device, dtype=torch.float32)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.H.mul_(self.count / (self.count + n))
        self.count += n
        x = x * (2.0 / self.count) ** 0.5
        self.H.addmm_(x.t(), x)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    group_size: int | None = None,
    clip_search: bool = False,
    clip_ratio: float = 1.0,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    row_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return the GPTQ fake-quantized ``weight`` (same shape and dtype).

    Scales are per output row (``group_size=None``) or per ``group_size`` input columns, min-max
    with an optional clip-ratio search. With ``act_order`` columns are processed by decreasing
    Hessian diagonal; groups then use scales fixed up front (``static_groups``) so each group's
    scale still covers consecutive original columns. ``row_qparams`` gives the per-row ``(scale, zero)``
    instead (e.g. from clips learned with the weights fake-quantized).
    """
    W = weight.detach().clone().float()
    H = hessian.detach().clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    def qparams(block: torch.Tensor):
        return weight_qparams(block, bits, symmetric, clip_ratio, clip_search)

    if row_qparams is not None:
        if group_size is not None:
            raise ValueError("row_qparams are per row: they cannot go with a group size")
        scale, zero = (t.to(W.device, torch.float32) for t in row_qparams)
    elif group_size is None:
        scale, zero = qparams(W)
    elif static_groups or act_order:
        group_params = [qparams(W[:, g : g + group_size]) for g in range(0, cols, group_size)]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]

    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    Q = torch.zeros_like(W)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        Err1 = torch.zeros_like(W1)
        for i in range(end - start):
            col = start + i
            original = int(perm[col])
            if group_size is not None:
                if static_groups or act_order:
                    scale, zero = group_params[original // group_size]
                elif original % group_size == 0:
                    scale, zero = qparams(torch.cat([W1[:, i:], W[:, end:]], dim=1)[:, :group_size])
            w = W1[:, i : i + 1]
            q = fake_quantize(w, scale, zero, bits, symmetric)
            Q[:, col : col + 1] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        W[:, end:] -= Err1 @ Hinv[start:end, end:]
    Q = Q[:, torch.argsort(perm)]
    return Q.to(weight.dtype)
