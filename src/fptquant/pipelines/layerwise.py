"""Layer-wise calibration: train each decoder layer's transforms to reproduce its full-precision output.

Layer ``l`` is trained on the full-precision outputs of layer ``l-1`` (quantization errors are not
propagated, as FlatQuant does) against its own full-precision outputs, by MSE with the loss
normalised as ``loss / loss.detach()``. What is trained, and how it is merged afterwards, is the
method's business (:class:`LayerRecipe`); this module owns the loop, the data, the checkpoints and
the divergence checks. The loop never synchronises with the GPU inside an epoch, so the CPU keeps
queueing work and the GPU stays busy on small layers.

On small models an eager step is thousands of tiny kernels and bound by the CPU that launches them,
so on CUDA each layer's whole step (forward, backward, AdamW) is recorded once as a CUDA graph and
replayed: the GPU no longer waits for the CPU. The step can also be compiled (``torch.compile``, the
default only without a graph): one graph serves every layer, since all layers share one structure and
the live transforms keep the modules' types unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TrainingError
from ..fakequant.wrap import quantizers_bypassed
from ..models.base import ModelAdapter, model_device
from .checkpoints import CheckpointStore
from .graphed_step import graphed_or_none
from .sequential import capture_first_layer_inputs

log = logging.getLogger(__name__)


@dataclass
class LayerwiseSettings:
    epochs: int = 15
    batch_size: int = 4
    lr: float = 5e-3
    clip_lr: float = 5e-2
    weight_decay: float = 0.01
    min_lr_factor: float = 1e-3
    amp: bool = True  # autocast on CUDA (parameters stay float32)
    amp_dtype: torch.dtype = torch.bfloat16
    offload: bool | None = None  # keep activations on the CPU; None: only when GPU memory is short
    seed: int = 0
    compile: bool | None = None  # torch.compile the step; None: on CUDA without a CUDA graph
    compile_backend: str = "inductor"
    cuda_graph: bool | None = None  # replay each step (forward, backward, AdamW) as a CUDA graph; None: on CUDA


class LayerRecipe(ABC):
    """What a method trains in each layer and how it merges it (FlatQuant, ...)."""

    @abstractmethod
    def build(self, index: int, layer: nn.Module) -> None:
        """Create the layer's trainable parts (not yet attached to the forward)."""

    def initialize(self, index: int, layer: nn.Module, inputs: torch.Tensor, kwargs: dict) -> None:  # noqa: B027
        """Data-dependent initialisation from the layer's full-precision inputs (optional; none by default)."""

    @abstractmethod
    def attach(self, index: int, layer: nn.Module) -> None: ...

    @abstractmethod
    def detach(self, index: int, layer: nn.Module) -> None: ...

    @abstractmethod
    def param_groups(self, index: int, layer: nn.Module) -> list[dict]:
        """AdamW groups; each names its ``lr_key`` ("lr" or "clip_lr") in the settings."""

    def step_context(self, index: int):
        return contextlib.nullcontext()

    @abstractmethod
    def state(self, index: int, layer: nn.Module) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_state(self, index: int, layer: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def deploy(self, index: int, layer: nn.Module) -> None:
        """Merge the trained parts into the weights (float64), leaving only the online transforms."""


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def layer_outputs(layer: nn.Module, inputs: torch.Tensor, kwargs: dict, batch_size: int = 8) -> torch.Tensor:
    """The layer's full-precision outputs (every quantizer bypassed), stored like ``inputs``."""
    device = next(layer.parameters()).device
    out = torch.empty_like(inputs)
    with quantizers_bypassed(layer):
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].to(device, non_blocking=True)
            out[start : start + batch_size] = _layer_out(layer(x, **kwargs)).to(out.device, out.dtype)
    return out


def _step_loss(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, kwargs: dict) -> torch.Tensor:
    return F.mse_loss(_layer_out(layer(x, **kwargs)).float(), y.float())


def _compiled_step_loss(backend: str):
    return torch.compile(_step_loss, backend=backend, dynamic=False)


class _StepLoss:
    """One step's loss and its normalised backward (``loss / loss.detach()``), compiled when asked; if this
    torch cannot compile the forward or the backward, warn once and run the step eagerly."""

    compile_failed = False  # once per process: a failing compiler is not retried for every layer

    def __init__(self, recipe: LayerRecipe, index: int, compiled: bool, backend: str, autocast):
        self.recipe, self.index, self.autocast = recipe, index, autocast
        self.compiled = _compiled_step_loss(backend) if compiled and not _StepLoss.compile_failed else None
        self.proven = False

    def _eager(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor, kwargs: dict) -> torch.Tensor:
        with self.autocast(), self.recipe.step_context(self.index):  # one matrix solve per step, not per use
            loss = _step_loss(layer, x, y, kwargs)
        (loss / loss.detach()).backward()
        return loss.detach()

    def __call__(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor, kwargs: dict) -> torch.Tensor:
        if self.compiled is None:
            return self._eager(layer, x, y, kwargs)
        try:  # compiled graphs deduplicate the transform matrices themselves
            with self.autocast():
                loss = self.compiled(layer, x, y, kwargs)
            (loss / loss.detach()).backward()  # the backward graph compiles on its first call
            self.proven = True
            return loss.detach()
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager step is equivalent
            if self.proven:
                raise
            log.warning("torch.compile failed (%s: %s); calibrating eagerly", type(error).__name__, error)
            _StepLoss.compile_failed, self.compiled = True, None
            for group in self.recipe.param_groups(self.index, layer):
                for p in group["params"]:
                    p.grad = None
            return self._eager(layer, x, y, kwargs)


def _storage_device(inputs: torch.Tensor, device: torch.device, offload: bool | None) -> torch.device:
    if device.type != "cuda" or offload is False:
        return device
    if offload:
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    need = 2 * inputs.numel() * inputs.element_size()  # inputs and targets
    return device if need < 0.5 * free else torch.device("cpu")


def cosine_learning_rates(base: float, floor: float, steps: int) -> list[float]:
    """Cosine annealing from ``base`` to ``floor`` over ``steps`` (torch's CosineAnnealingLR, closed form)."""
    return [floor + (base - floor) * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]


def train_layer(
    recipe: LayerRecipe, index: int, layer: nn.Module, inputs, targets, kwargs, s: LayerwiseSettings, bar
) -> float:
    device = next(layer.parameters()).device
    groups = recipe.param_groups(index, layer)
    params = [p for g in groups for p in g["params"]]
    if not params or s.epochs == 0:
        return float("nan")
    graphed = device.type == "cuda" and s.cuda_graph is not False
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "lr": getattr(s, g["lr_key"])} for g in groups],
        weight_decay=s.weight_decay,
        capturable=graphed,
        fused=device.type == "cuda",  # one kernel for every parameter, not a few per parameter
    )
    per_epoch = math.ceil(len(inputs) / s.batch_size)
    total_steps, floor = s.epochs * per_epoch, s.lr * s.min_lr_factor
    schedules = [cosine_learning_rates(g["lr"], floor, total_steps) for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(s.seed + index)
    orders = [torch.randperm(len(inputs), generator=gen).to(inputs.device).split(s.batch_size) for _ in range(s.epochs)]
    amp = s.amp and device.type == "cuda"
    # Under a CUDA graph compiling saves only ~12% of the step (H100, SmolLM2: 15.9 vs 18.1 ms) and
    # costs ~80 s once, more than it saves on a small model; so it is the default only without a graph.
    compiled = s.compile if s.compile is not None else device.type == "cuda" and not graphed
    # autocast's weight-cast cache would keep tensors from one graph replay to the next
    autocast = lambda: torch.autocast(device.type, dtype=s.amp_dtype, enabled=amp, cache_enabled=not graphed)  # noqa: E731
    step_loss = _StepLoss(recipe, index, compiled, s.compile_backend, autocast)

    def batch(idx: torch.Tensor) -> torch.Tensor:
        return torch.stack((inputs[idx], targets[idx])).to(device, non_blocking=True)

    def step_fn(b: torch.Tensor) -> torch.Tensor:
        return step_loss(layer, b[0], b[1], kwargs)

    runner = graphed_or_none(step_fn, optimizer, params, batch(orders[0][0]), "calibrating") if graphed else None
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # 1 + first step with a non-finite loss
    step, loss_mean = 0, float("nan")
    for epoch in range(s.epochs):
        total = torch.zeros((), device=device)
        for idx in orders[epoch]:
            if runner is not None:
                for t, schedule in zip(runner.lr_tensors, schedules, strict=True):
                    t.fill_(schedule[step])  # a fill kernel: no synchronisation
                loss = runner(batch(idx))
                if step == 0:
                    runner.verify()
            else:
                for group, schedule in zip(optimizer.param_groups, schedules, strict=True):
                    group["lr"] = schedule[step]
                loss = step_fn(batch(idx))  # forward and backward
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            finite = torch.isfinite(loss)
            first_bad = torch.where((first_bad == 0) & ~finite, step, first_bad)
            total += loss
        bad = int(first_bad)  # one synchronisation per epoch
        if bad or not all(bool(torch.isfinite(p).all()) for p in params):
            where = f"step {bad} (epoch {epoch + 1})" if bad else f"epoch {epoch + 1}"
            raise TrainingError(
                f"layer-wise calibration diverged in layer {index} at {where}: the loss or a parameter became "
                "NaN/Inf (try --method-arg amp=false or a lower lr); finished layers are kept and a rerun resumes"
            )
        loss_mean = float(total) / per_epoch
        bar.set_postfix(layer=index, epoch=epoch + 1, loss=f"{loss_mean:.3e}")
    for p in params:
        p.grad = None
    return loss_mean


def calibrate_layerwise(
    model: nn.Module,
    adapter: ModelAdapter,
    windows: torch.Tensor,
    recipe: LayerRecipe,
    settings: LayerwiseSettings,
    store: CheckpointStore | None = None,
    desc: str = "layer-wise calibration",
) -> list[float]:
    """Train, checkpoint and deploy every layer in turn; returns the final-epoch loss of each trained layer."""
    device = model_device(model)
    captured = capture_first_layer_inputs(model, adapter, windows)
    inputs = torch.cat(captured.hidden).float()
    inputs = inputs.to(_storage_device(inputs, device, settings.offload))
    if inputs.device.type == "cpu" and device.type == "cuda":
        inputs = inputs.pin_memory()
    kwargs = captured.kwargs
    losses = []
    bar = tqdm(adapter.layers(), desc=desc, unit="layer")
    for index, layer in enumerate(bar):
        targets = layer_outputs(layer, inputs, kwargs)
        recipe.build(index, layer)
        saved = store.load(index) if store is not None else None
        if saved is not None:
            recipe.load_state(index, layer, saved)
            bar.set_postfix(layer=index, resumed=True)
        else:
            recipe.initialize(index, layer, inputs, kwargs)
            recipe.attach(index, layer)
            try:
                losses.append(train_layer(recipe, index, layer, inputs, targets, kwargs, settings, bar))
            finally:
                recipe.detach(index, layer)
            if store is not None:
                store.save(index, recipe.state(index, layer))
        recipe.deploy(index, layer)
        inputs = targets
    return losses
