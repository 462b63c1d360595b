"""Where an FPTQuant end-to-end step spends its time: operator launches and CPU/GPU time per step.

Usage: python3 scripts/profile_fptquant_step.py MODEL [--device cuda] [--seqlen 2048] [--batch 4] [--dense-hadamard]

``--dense-hadamard``: the online Hadamard as it runs on a GPU (one matmul per block) also on the CPU, to
count the calls a GPU step makes (the count does not depend on ``--seqlen``).

Runs the whole method twice under torch.profiler, with 0 and with ``--steps`` end-to-end steps (local
stage and range setting cut to the minimum), and reports the difference per step: operator calls,
CPU time, GPU kernel time and the operators that dominate each.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fptquant
from fptquant.data.text import calibration_windows, read_text, tokenize
from fptquant.math.online import OnlineHadamard


def run(model_name: str, device: str, steps: int, seqlen: int, batch: int):
    model, tok = fptquant.load_model(model_name, device=device)
    windows = calibration_windows(tokenize(tok, read_text("wikitext2-valid")), max(batch, 2), seqlen, 0)
    args = {"local_steps": 0, "range_windows": 1, "e2e_steps": steps, "batch_size": batch, "micro_batch": batch,
            "resume": False}  # fmt: skip
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fptquant.quantize(model, recipe, windows.to(device))
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    stats = {e.key: e for e in prof.key_averages()}
    return wall, stats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dense-hadamard", action="store_true")
    a = p.parse_args()
    if a.dense_hadamard:
        OnlineHadamard.forward = lambda self, x: self.apply_to(x, dense=True)
    base_wall, base = run(a.model, a.device, 0, a.seqlen, a.batch)
    wall, full = run(a.model, a.device, a.steps, a.seqlen, a.batch)
    rows = []
    for key, e in full.items():
        b = base.get(key)
        calls = (e.count - (b.count if b else 0)) / a.steps
        cpu = (e.self_cpu_time_total - (b.self_cpu_time_total if b else 0)) / a.steps / 1e3
        gpu = getattr(e, "self_device_time_total", 0) - (getattr(b, "self_device_time_total", 0) if b else 0)
        rows.append((key, calls, cpu, gpu / a.steps / 1e3))
    print(f"wall per end-to-end step: {(wall - base_wall) / a.steps:.3f} s (batch {a.batch} x {a.seqlen} tokens)")
    print(f"operator calls per step: {sum(r[1] for r in rows):.0f}; self CPU ms {sum(r[2] for r in rows):.1f}; "
          f"self GPU ms {sum(r[3] for r in rows):.1f}")  # fmt: skip
    for title, index in (("by calls", 1), ("by self CPU ms", 2), ("by self GPU ms", 3)):
        print(f"-- top operators {title}")
        for key, calls, cpu, gpu in sorted(rows, key=lambda r: -r[index])[:12]:
            print(f"{key[:60]:60} calls {calls:8.0f}  cpu {cpu:8.2f} ms  gpu {gpu:8.2f} ms")


if __name__ == "__main__":
    main()
