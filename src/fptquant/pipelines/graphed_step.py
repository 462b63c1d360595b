"""A whole training step (forward, backward, optimizer update) recorded once as a CUDA graph.

End-to-end training of a fake-quantized model launches tens of thousands of small kernels per step
(quantizers, transforms, per-head matrices), so on a GPU the step is bound by the CPU that launches
them. Replaying the step as one CUDA graph removes that cost. What a graph needs, and how it is met:

* static tensors: the batch is copied into one buffer; gradients are zeroed in place inside the graph;
  learning rates are device tensors the caller refills before each replay (capturable AdamW);
* lazy initialisation outside the capture: one eager forward/backward on a side stream, and the
  optimizer state created by a step at learning rate 0 (no parameter moves) and then zeroed;
* a check: the first replay's loss and gradients must match that eager warm-up on the same batch
  and parameters, so a graph that records something else (a host value frozen into it) is caught;
* capturable linear algebra: by default torch hands batched LU solves (the Cayley maps) of some sizes
  to MAGMA, which synchronises on its own and so breaks a capture (it did for SmolLM2's 180 64×64 solves
  on the H100); the capture prefers cuSOLVER/cuBLAS, and only if that fails tries torch's default
  (replays never dispatch again, so the preference only matters while recording).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import traceback
from collections.abc import Callable, Iterator

import torch

from ..errors import TrainingError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def capturable_linear_algebra() -> Iterator[None]:
    """Prefer cuSOLVER (and its cuBLAS batched paths) over MAGMA for the enclosed dispatches."""
    previous = torch.backends.cuda.preferred_linalg_library()
    if torch.cuda.is_available():  # a CPU-only torch has no cuSOLVER to prefer
        torch.backends.cuda.preferred_linalg_library("cusolver")
    try:
        yield
    finally:
        torch.backends.cuda.preferred_linalg_library(previous)


class GraphedStep:
    """``step_fn(batch) -> loss`` (gradients accumulated into ``.grad``) plus ``optimizer.step()``, replayed."""

    def __init__(self, step_fn: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 params: list[torch.Tensor], lr_tensors: list[torch.Tensor], first_batch: torch.Tensor):  # fmt: skip
        self.step_fn, self.optimizer, self.params, self.lr_tensors = step_fn, optimizer, params, lr_tensors
        self.batch = first_batch.clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for p in params:
                p.grad = None
            loss = step_fn(self.batch)
            self.reference = (loss.detach().clone(), [self._grad(p).clone() for p in params])
            saved = [t.clone() for t in lr_tensors]
            for t in lr_tensors:
                t.zero_()
            optimizer.step()  # creates the optimizer state; at lr 0 no parameter moves
            for t, value in zip(lr_tensors, saved, strict=True):
                t.copy_(value)
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
            for p in params:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()

    @staticmethod
    def _grad(p: torch.Tensor) -> torch.Tensor:
        return p.grad.detach() if p.grad is not None else torch.zeros_like(p)

    def capture(self) -> None:
        """Record the step (call after loading any optimizer state to resume: loading replaces tensors)."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            torch._foreach_zero_([p.grad for p in self.params])
            self.loss = self.step_fn(self.batch)
            self.optimizer.step()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch.copy_(batch)
        self.graph.replay()
        return self.loss

    def verify(self, rtol: float = 1e-2, grad_rtol: float = 5e-2) -> float:
        """After the first replay (same batch and parameters as the warm-up): the same loss and gradients.

        Gradients are compared as one vector (relative error of the concatenation): the graph's kernels may
        sum in another order (cuBLAS under capture, atomics), and a scalar clip or scale whose gradient is
        near-cancelling sum then differs relatively a lot on its own while the step is the same. On the H100
        SmolLM2's FPTQuant step (bf16 autocast, STE rounding) differed by 1.3% (the real model) and 2.4% (a
        random one), nearly all in the residual rotation's generator; a graph that froze a host value or lost a
        gradient path changes them by far more than ``grad_rtol``. Returns that relative error; the worst
        single tensor is named when it fails."""
        loss, grads = self.reference
        delta = torch.stack([(p.grad - g).float().norm() for p, g in zip(self.params, grads, strict=True)])
        norms = torch.stack([g.float().norm() for g in grads])
        error = float(delta.norm() / norms.norm().clamp_min(1e-30))
        if not torch.allclose(self.loss, loss, rtol=rtol, atol=0) or error > grad_rtol:
            worst = int(torch.argmax(delta))
            raise TrainingError(
                f"the CUDA-graph training step disagrees with the eager one (loss {float(self.loss):.6g} vs "
                f"{float(loss):.6g}; gradients off by {error:.3g} relative, most in tensor {worst} of shape "
                f"{tuple(self.params[worst].shape)}: {float(delta[worst]):.3g} vs norm {float(norms[worst]):.3g}); "
                "rerun with --method-arg cuda_graph=false"
            )
        del self.reference
        log.info("CUDA-graph step verified: gradients within %.2g of the eager step", error)
        return error


def tensor_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> list[torch.Tensor]:
    """Make every group's learning rate a device tensor (what a captured AdamW reads on each replay);
    the caller refills them with ``fill_`` (a kernel, no synchronisation) before each replay."""
    for group in optimizer.param_groups:
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return [group["lr"] for group in optimizer.param_groups]


def graphed_or_none(
    step_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    first_batch: torch.Tensor,
    what: str,
    before_capture: Callable[[GraphedStep], None] | None = None,
) -> GraphedStep | None:
    """A captured :class:`GraphedStep` (learning rates made device tensors first), or None with a warning
    if this torch refuses to capture the step, preferring cuSOLVER and then with torch's default linear
    algebra: the caller then runs it without a graph. ``before_capture`` runs between the warm-up and the
    capture (e.g. loading a saved optimizer state, which replaces tensors)."""
    failure = None
    for linear_algebra in (capturable_linear_algebra, contextlib.nullcontext):
        try:
            with linear_algebra():
                runner = GraphedStep(
                    step_fn, optimizer, params, tensor_learning_rates(optimizer, first_batch.device), first_batch
                )
                if before_capture is not None:
                    before_capture(runner)
                runner.capture()
            return runner
        except TrainingError:
            raise
        except Exception as error:  # noqa: BLE001 - capture refused by some operation: retry, then no graph
            if log.isEnabledFor(logging.INFO):  # as text: a record holding the traceback would keep it alive
                log.info("a CUDA-graph capture attempt failed:\n%s", "".join(traceback.format_exception(error)))
            failure = _summary(error)
            _forget(error, params)
            if not torch.cuda.is_available():
                break
    log.warning("CUDA-graph capture failed (%s); %s without it", _describe(failure, step_fn, first_batch, params), what)
    return None


def _summary(failure: BaseException) -> str:
    """The failure's first line and the errors that started it (a capture that an operation broke ends with a
    generic "previous error during capture")."""
    causes = [failure]
    while causes[-1].__context__ is not None and len(causes) < 4:
        causes.append(causes[-1].__context__)
    return " <- ".join(str(c).strip().splitlines()[0][:160] for c in causes if str(c).strip())


def _forget(error: BaseException, params: list[torch.Tensor]) -> None:
    """Drop everything a failed attempt left alive, before a retry or the eager steps that follow.

    Its traceback frames hold (1) tensors whose autograd graph keeps the parameters' gradient accumulators
    bound to the failed capture's stream, and (2) on torch < 2.13, any activation checkpoint the error
    interrupted: that checkpoint's generator stays suspended with its saved-tensor hooks still installed,
    so later forwards save into it and the backward stops with "a different number of tensors was saved"
    (what the W4A8KV8 row hit on the H100 after a refused capture)."""
    seen, pending = set(), [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        pending += [e.__context__, e.__cause__]
    for p in params:
        p.grad = None
    gc.collect()  # frames, tracebacks and generators form cycles: closes the interrupted checkpoints now
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _describe(text: str, step_fn, batch: torch.Tensor, params: list[torch.Tensor]) -> str:
    """``text`` and, on CUDA, the first operation of an eager step that synchronises with the host, named by
    the innermost frame outside torch that called it."""
    if not torch.cuda.is_available() or batch.device.type != "cuda":
        return text
    previous = torch.cuda.get_sync_debug_mode()
    torch_dir = os.path.dirname(torch.__file__)
    try:
        torch.cuda.set_sync_debug_mode("error")
        step_fn(batch)
    except RuntimeError as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)]
        last = frames[-1] if frames else None
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.line})" if last else ""
        text += f"; an eager step synchronises{where}: {str(error).splitlines()[0][:120]}"
        _forget(error, params)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
        for p in params:
            p.grad = None
    return text
