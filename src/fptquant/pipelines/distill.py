"""End-to-end student–teacher training of a quantized model's transforms and quantizer scales.

The teacher is the same model with every quantizer bypassed: the transforms preserve the function,
so that *is* the full-precision model, and no second copy is kept in memory. The student is the
quantized forward. The loss compares their next-token distributions (Jensen–Shannon divergence by
default; KL(teacher || student) and plain next-token cross-entropy as options). Training
checkpoints every few steps so that a rerun resumes, and a NaN/Inf loss or a failed health check
stops it with the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TrainingError
from ..fakequant.wrap import quantizers_bypassed
from ..models.base import model_device
from .graphed_step import GraphedStep, graphed_or_none, tensor_learning_rates

LOSSES = ("jsd", "kl", "ce")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, labels=None, temperature=1.0):
    """Mean per-token divergence between ``(…, vocab)`` logits (``labels`` for ``ce``)."""
    if kind == "ce":
        return F.cross_entropy(student[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
    ls = F.log_softmax(student.float() / temperature, dim=-1)
    lt = F.log_softmax(teacher.float() / temperature, dim=-1)
    if kind == "kl":
        return (lt.exp() * (lt - ls)).sum(-1).mean()
    if kind == "jsd":
        lm = torch.logaddexp(ls, lt) - math.log(2.0)
        return 0.5 * ((ls.exp() * (ls - lm)).sum(-1) + (lt.exp() * (lt - lm)).sum(-1)).mean()
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {LOSSES}")


@dataclass
class DistillSettings:
    steps: int = 256
    batch_size: int = 4
    micro_batch: int = 1
    loss: str = "jsd"
    temperature: float = 1.0
    weight_decay: float = 0.0
    amp: bool = True
    amp_dtype: torch.dtype = torch.bfloat16
    gradient_checkpointing: bool = True
    checkpoint_every: int = 50
    seed: int = 0
    cuda_graph: bool | None = None  # replay each step as a CUDA graph; None: on CUDA
    max_grad_norm: float | None = None  # clip the global gradient norm (all groups together); None: no clipping


class StepCheckpoint:
    """The latest training state in one directory: parameters, optimizer and scheduler, written atomically."""

    def __init__(self, root: Path, name: str):
        self.path = Path(root) / f"{name}.pt"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def _checkpointing(model: nn.Module, on: bool, graphed: bool = False) -> None:
    """Activation (gradient) checkpointing of the decoder layers; transformers renamed the method in 5.x.

    Inside a CUDA graph the RNG state cannot be read, and no layer here draws random numbers."""
    verb = "enable" if on else "disable"
    kwargs = {"use_reentrant": False, "preserve_rng_state": not graphed}
    if hasattr(model, f"activation_checkpointing_{verb}"):
        fn = getattr(model, f"activation_checkpointing_{verb}")
        fn(activation_checkpointing_kwargs=kwargs) if on else fn()
    elif hasattr(model, f"gradient_checkpointing_{verb}"):
        fn = getattr(model, f"gradient_checkpointing_{verb}")
        fn(gradient_checkpointing_kwargs=kwargs) if on else fn()


def _optimizer(groups: list[dict], s: DistillSettings, graph_device: torch.device | None):
    """AdamW and its cosine schedule; for a CUDA graph, capturable with learning rates as device tensors
    (made after the scheduler, which may assign plain floats on older torch)."""
    optimizer = torch.optim.AdamW(groups, weight_decay=s.weight_decay, capturable=graph_device is not None)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(s.steps, 1))
    if graph_device is not None:
        tensor_learning_rates(optimizer, graph_device)
    return optimizer, scheduler


def _forward_backward(model, batch, s: DistillSettings, context, device, graphed: bool) -> torch.Tensor:
    """Every micro-batch's student and teacher forward, loss and backward; returns the batch loss (a tensor)."""
    total = torch.zeros((), device=device)
    amp = s.amp and device.type == "cuda"
    for chunk in batch.split(s.micro_batch):
        # autocast's weight-cast cache would keep tensors from one graph replay to the next
        with context(), torch.autocast(device.type, dtype=s.amp_dtype, enabled=amp, cache_enabled=not graphed):
            with torch.no_grad(), quantizers_bypassed(model):
                teacher = None if s.loss == "ce" else model(input_ids=chunk, use_cache=False).logits
            student = model(input_ids=chunk, use_cache=False).logits
            part = distillation_loss(student, teacher, s.loss, chunk, s.temperature) * (len(chunk) / len(batch))
            part.backward()
        total += part.detach()
    return total


def _group_norms_and_clip(groups: list[dict], max_norm: float | None, out: torch.Tensor) -> None:
    """Each parameter group's gradient norm into ``out`` (before clipping), then, with ``max_norm``, every
    gradient scaled so that their global norm is at most ``max_norm``. No host synchronisation: it runs
    inside a CUDA-graph step, and a non-finite norm turns the parameters non-finite, which the loss shows."""
    per_group = [[p.grad for p in group["params"] if p.grad is not None] for group in groups]
    norms = torch.stack(
        [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))) if g else out.new_zeros(()) for g in per_group]
    ).float()
    out.copy_(norms)
    if max_norm is not None:
        coef = (max_norm / (norms.norm() + 1e-6)).clamp(max=1.0)
        for grads in per_group:
            if grads:
                torch._foreach_mul_(grads, coef.to(grads[0].dtype))


def _load_eager(optimizer, scheduler, saved: dict) -> None:
    """Resume an eager optimizer, also from a CUDA-graph run's state (whose learning rates are tensors)."""
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if torch.is_tensor(group.get(key)):
                group[key] = float(group[key])


def _graphed(forward_backward, optimizer, scheduler, params, first_batch, saved, s: DistillSettings, groups):
    """The step as a CUDA graph, with any saved optimizer state loaded; if this torch cannot capture it,
    a warning and the eager optimizer (``runner`` None)."""

    def load_saved(runner: GraphedStep) -> None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for group, lr in zip(optimizer.param_groups, runner.lr_tensors, strict=True):  # loading may bring floats
            lr.fill_(float(group["lr"]))
            group["lr"] = lr

    hook = load_saved if saved is not None else None
    runner = graphed_or_none(forward_backward, optimizer, params, first_batch, "training", before_capture=hook)
    if runner is not None:
        return runner, optimizer, scheduler
    optimizer, scheduler = _optimizer(groups, s, None)
    if saved is not None:
        _load_eager(optimizer, scheduler, saved)
    return None, optimizer, scheduler


def train_end_to_end(
    model: nn.Module,
    groups: list[dict],
    windows: torch.Tensor,
    s: DistillSettings,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    check: Callable[[], str | None] = lambda: None,
    checkpoint: StepCheckpoint | None = None,
    desc: str = "end-to-end",
    grad_norms: list[list[float]] | None = None,
) -> list[float]:
    """``s.steps`` AdamW steps over seeded batches of ``windows``; returns the loss of every step run.

    ``grad_norms``, if given, receives each step's gradient norm per group (before any clipping; the steps
    run in this call only, not those a resumed run loaded).

    ``groups`` are AdamW parameter groups (each with its ``lr``); every lr follows a cosine to 0.
    ``context`` wraps each micro-batch (e.g. caching shared matrices); ``check`` returns an error
    message when the parameters became unusable (e.g. an exploding condition number).
    """
    if s.loss not in LOSSES:
        raise ValueError(f"unknown distillation loss {s.loss!r}; choose one of {LOSSES}")
    params = [p for g in groups for p in g["params"]]
    device = model_device(model)
    graphed = s.cuda_graph if s.cuda_graph is not None else device.type == "cuda"
    optimizer, scheduler = _optimizer(groups, s, device if graphed else None)
    gen = torch.Generator().manual_seed(s.seed)
    order = [
        torch.randperm(len(windows), generator=gen) for _ in range(math.ceil(s.steps * s.batch_size / len(windows)) + 1)
    ]
    order = torch.cat(order)
    start, losses = 0, []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        with torch.no_grad():
            for p, value in zip(params, saved["params"], strict=True):
                p.copy_(value)
        start, losses = int(saved["step"]), list(saved["losses"])

    def batch_of(step: int) -> torch.Tensor:
        return windows[order[step * s.batch_size : (step + 1) * s.batch_size]].to(device)

    norms = torch.zeros(len(groups), device=device)

    def forward_backward(batch: torch.Tensor) -> torch.Tensor:
        loss = _forward_backward(model, batch, s, context, device, graphed)
        _group_norms_and_clip(groups, s.max_grad_norm, norms)
        return loss

    if s.gradient_checkpointing:
        _checkpointing(model, True, graphed)
    model.train()
    runner = None
    try:
        if graphed and start < s.steps:
            runner, optimizer, scheduler = _graphed(
                forward_backward, optimizer, scheduler, params, batch_of(start), saved, s, groups
            )
        elif saved is not None:
            _load_eager(optimizer, scheduler, saved)
        bar = tqdm(range(start, s.steps), desc=desc, unit="step", initial=start, total=s.steps)
        for step in bar:
            if runner is not None:
                for t, lr in zip(runner.lr_tensors, scheduler.get_last_lr(), strict=True):
                    t.fill_(float(lr))
                loss = float(runner(batch_of(step)))
                if step == start:
                    runner.verify()
            else:
                loss = float(forward_backward(batch_of(step)))
            problem = None if math.isfinite(loss) else f"the loss became {loss}"
            problem = problem or check()
            if problem:
                where = f" in {checkpoint.path}" if checkpoint is not None and checkpoint.path.is_file() else ""
                raise TrainingError(
                    f"{desc} training stopped at step {step + 1}: {problem}; the last good checkpoint is kept{where} "
                    "(lower the learning rate, or try --method-arg amp=false)"
                )
            if runner is None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss)
            if grad_norms is not None:
                grad_norms.append(norms.tolist())
            bar.set_postfix(loss=f"{loss:.4f}")
            done = step + 1
            if checkpoint is not None and (done % s.checkpoint_every == 0 or done == s.steps):
                checkpoint.save(
                    {
                        "params": [p.detach().cpu() for p in params],
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": done,
                        "losses": losses,
                    }
                )
    finally:
        model.eval()
        if s.gradient_checkpointing:
            _checkpointing(model, False)
        for p in params:
            p.grad = None
    return losses
