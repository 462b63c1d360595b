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
from ...pipelines.graphed_step import graphed_or_none
from .live import weight_lp_loss
from .transforms import FPTTransforms

SYNC_EVERY = 20


def optimize_local(
    adapter: ModelAdapter,
    transforms: FPTTransforms,
    steps: int,
    lr: float,
    p: float = 4.0,
    cuda_graph: bool | None = None,
) -> list[float]:
    """``steps`` AdamW steps on the local loss; on CUDA (``cuda_graph`` None or True) each step is replayed
    as one CUDA graph: the loss touches every weight of the model through small transform kernels, so an
    eager step waits on the CPU that launches them."""
    params = [q for q in transforms.parameters() if q.requires_grad]
    if steps == 0 or not params:
        return []
    device = params[0].device
    graphed = device.type == "cuda" and cuda_graph is not False
    optimizer = torch.optim.AdamW(params, lr=lr, capturable=graphed)

    def step_fn(_: torch.Tensor) -> torch.Tensor:
        with cached_all(transforms.rotations(), batched=True):  # one float64 solve per matrix size
            loss = weight_lp_loss(adapter, p)
            loss.backward()
        return loss.detach()

    nothing = torch.zeros(1, device=device)  # the step reads no data
    runner = graphed_or_none(step_fn, optimizer, params, nothing, "running the local stage") if graphed else None
    losses: list[torch.Tensor] = []
    bar = tqdm(range(steps), desc="FPTQuant local stage", unit="step")
    for step in bar:
        if runner is not None:
            losses.append(runner(nothing).clone())  # the graph's loss tensor is overwritten by the next replay
            if step == 0:
                runner.verify()
        else:
            losses.append(step_fn(nothing))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if (step + 1) % SYNC_EVERY == 0 or step + 1 == steps:  # reading a loss waits for the GPU: not every step
            recent = torch.stack(losses[-SYNC_EVERY:]).tolist()
            bad = [i for i, v in enumerate(recent) if not math.isfinite(v)]
            if bad:
                first = len(losses) - len(recent) + bad[0] + 1
                raise TrainingError(f"FPTQuant local stage diverged at step {first}: the loss became {recent[bad[0]]}")
            bar.set_postfix(loss=f"{recent[-1]:.4f}")
    for q in params:
        q.grad = None
    return torch.stack(losses).tolist()
