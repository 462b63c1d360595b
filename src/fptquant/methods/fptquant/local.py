"""FPTQuant's local stage: data-free outlier reduction of the merged weights.

Minimises ``Σ (mean |W'|^p)^{1/p}`` (p = 4) over every transform parameter, where ``W'`` is each
decoder weight with all mergeable transforms folded in. Unlike AIMET's optimizer, which keeps only
the last transform's parameters of each layer (so the pre-RoPE ones were never trained), every
transform's parameters are optimised here.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ...errors import TrainingError
from ...math.cayley import cached_all
from ...models.base import ModelAdapter
from .live import weight_lp_loss
from .transforms import FPTTransforms

SYNC_EVERY = 20


def optimize_local(
    adapter: ModelAdapter, transforms: FPTTransforms, steps: int, lr: float, p: float = 4.0
) -> list[float]:
    params = [q for q in transforms.parameters() if q.requires_grad]
    if steps == 0 or not params:
        return []
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses: list[torch.Tensor] = []
    bar = tqdm(range(steps), desc="FPTQuant local stage", unit="step")
    for step in bar:
        with cached_all(transforms.rotations(), batched=True):  # one float64 solve per matrix size
            loss = weight_lp_loss(adapter, p)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if (step + 1) % SYNC_EVERY == 0 or step + 1 == steps:  # reading a loss waits for the GPU: not every step
            recent = torch.stack(losses[-SYNC_EVERY:]).tolist()
            bad = [i for i, v in enumerate(recent) if not math.isfinite(v)]
            if bad:
                first = len(losses) - len(recent) + bad[0] + 1
                raise TrainingError(f"FPTQuant local stage diverged at step {first}: the loss became {recent[bad[0]]}")
            bar.set_postfix(loss=f"{recent[-1]:.4f}")
    return torch.stack(losses).tolist()
