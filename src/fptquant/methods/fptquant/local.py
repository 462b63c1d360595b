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


def optimize_local(
    adapter: ModelAdapter, transforms: FPTTransforms, steps: int, lr: float, p: float = 4.0
) -> list[float]:
    params = [q for q in transforms.parameters() if q.requires_grad]
    if steps == 0 or not params:
        return []
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    bar = tqdm(range(steps), desc="FPTQuant local stage", unit="step")
    for step in bar:
        with cached_all(transforms.rotations()):
            loss = weight_lp_loss(adapter, p)
            loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"FPTQuant local stage diverged at step {step + 1}: the loss became {value}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
    return losses
