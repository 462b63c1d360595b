"""Where the host time of a packed model's batch-1 prefill goes (GPU machine).

    python3 scripts/profile_prefill_host.py [--layers 4] [--tokens 2048] [--top 35]

The 8B-shaped packed model's batch-1 prefill takes about twice its GPU time (docs/RESULTS.md, session 13):
the host, not the GPU, sets its pace. This builds the model like benchmarks/bench_model.py, warms the
prefill up, then runs it under cProfile and prints the functions with the most own time and the most
cumulative time, per layer and prefill.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0] + "/benchmarks")
from bench_model import build  # noqa: E402

import fptquant  # noqa: E402
from fptquant.deploy import to_deploy  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--top", type=int, default=35)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.enable_cudnn_sdp(False)
    bf16 = build(argparse.Namespace(model=None, layers=a.layers))
    packed = copy.deepcopy(bf16)
    fptquant.quantize(packed, fptquant.Recipe(method="rtn", bits="w4a4kv4", model="bench"))
    to_deploy(packed)
    ids = torch.randint(0, bf16.config.vocab_size, (1, a.tokens), device="cuda")
    runs = 5
    with torch.no_grad():
        for name, model in (("bf16", bf16), ("packed", packed)):
            for _ in range(3):
                model.model(input_ids=ids)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(runs):
                model.model(input_ids=ids)
            host = (time.perf_counter() - start) / runs * 1e3
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / runs * 1e3
            print(f"{name}: host {host:.1f} ms a prefill (queueing), wall {wall:.1f} ms, {a.layers} layers")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(runs):
            packed.model(input_ids=ids)
        profiler.disable()
        torch.cuda.synchronize()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(a.top)
        print(f"--- packed prefill, {runs} runs, sorted by {key}")
        print("\n".join(line[:200] for line in out.getvalue().splitlines()[6:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
