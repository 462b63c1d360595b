"""Training a few parameters of a (fake-quantized) model by next-token cross-entropy."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models.base import model_device


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())


def train_next_token(
    model: nn.Module,
    params: list[nn.Parameter],
    windows: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 1,
    optimizer: str = "sgd",
    seed: int = 0,
    desc: str = "training",
    max_step: float | None = None,
    micro_batch: int = 2,
    context=contextlib.nullcontext,
) -> list[float]:
    """``steps`` optimizer steps on batches drawn (seeded, cycling) from ``windows``, cosine lr to 0.

    ``max_step`` caps each parameter's SGD step norm (``lr·‖g‖ <= max_step``), as Cayley SGD's
    ``min(lr, 1/‖W‖)`` step size does (SpinQuant); it keeps the first large-gradient steps stable.
    """
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=gen)
    device, losses, cursor = model_device(model), [], 0
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(windows), generator=gen), 0
        batch = windows[order[cursor : cursor + batch_size]].to(device)
        cursor += batch_size
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for chunk in batch.split(micro_batch):  # gradient accumulation bounds activation memory
            with context():  # e.g. compute shared parametrized matrices once per forward/backward
                part = next_token_loss(model, chunk) * (len(chunk) / len(batch))
                part.backward()
            loss += part.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss} at step {step}")
        if max_step is not None:
            current = sched.get_last_lr()[0]
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], max_norm=max_step / max(current, 1e-12))
        opt.step()
        sched.step()
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    return losses
