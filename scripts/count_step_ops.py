"""Operator calls in one FPTQuant end-to-end training step (forward, teacher, backward), on the CPU.

On a GPU an eager step is bound by launching these calls (≈ 20 µs each on the H100), so their number is
what a CUDA graph, or fewer and larger operations, saves. Counted with a TorchDispatchMode around the
first step of a short run on SmolLM2 (16-token windows: the count does not depend on the length).

Usage: PYTHONPATH=src python3 scripts/count_step_ops.py [--dense-hadamard] [--top 15]
  --dense-hadamard: the online Hadamard as the GPU runs it (one matmul per block)
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fptquant
from fptquant.math.online import OnlineHadamard
from fptquant.pipelines import distill


class CountCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense-hadamard", action="store_true")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    if args.dense_hadamard:
        OnlineHadamard.forward = lambda self, x: self.apply_to(x, dense=True)
    counted, step = {}, distill._forward_backward

    def first_step_counted(*a, **k):
        if counted:
            return step(*a, **k)
        with CountCalls() as counter:
            out = step(*a, **k)
        counted.update(counter.calls)
        return out

    distill._forward_backward = first_step_counted
    model, _ = fptquant.load_model("smollm2-135m")
    windows = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    method_args = {"local_steps": 1, "e2e_steps": 1, "batch_size": 1, "micro_batch": 1, "range_windows": 2,
                   "resume": False}  # fmt: skip
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=method_args)
    fptquant.quantize(model, recipe, windows)
    print(f"operator calls in one e2e step: {sum(counted.values())}")
    for name, n in collections.Counter(counted).most_common(args.top):
        print(f"  {n:7d}  {name}")


if __name__ == "__main__":
    main()
