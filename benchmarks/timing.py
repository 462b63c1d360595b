"""Timing protocol shared by the benchmarks (../shared/docs/kernels.md §4).

CUDA events; ≥ 5 warm-ups; the median, min and max of ≥ 25 samples; each sample repeats the call
until it lasts ≥ 2 ms (graph replay) or ≥ 0.2 ms (eager); the callable receives a rotating buffer
index so caches see ≥ 256 MB of distinct data. Host launch gaps stay out of GPU time either through a
queued ``torch.cuda._sleep`` (enough for calls of tens of µs) or, with ``graph=True``, by replaying the
repeats as one CUDA graph (needed for µs-scale decode calls, whose Python launch cost exceeds their GPU
time).
"""

from __future__ import annotations

import os
import statistics
import subprocess
from collections.abc import Callable

import torch

# the shortest sample of a graph replay, in µs of repeated calls (kernels.md asks for ≥ 200). A replay starts its
# first kernel a few µs late; at 200 µs a 95 µs call ran 2–3 times a sample and read 14 µs (15%) long, at 2 ms it
# agrees with longer runs (session 20). Eager samples stay at 200 µs: past the queued sleep they would time the host.
MIN_SAMPLE_US = float(os.environ.get("FPTQ_MIN_SAMPLE_US", "2000"))
EAGER_SAMPLE_US = 200.0


def gbps(timing: dict, nbytes: int) -> float:
    """GB/s of moving ``nbytes`` in a timing's median."""
    return nbytes / (timing["median_us"] * 1e3)


def rotations(bytes_per_set: int, minimum: int = 256 << 20) -> int:
    return max(1, -(-minimum // max(bytes_per_set, 1)))


def _graph_of(fn: Callable[[int], object], calls: int, buffers: int) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % buffers)
    return graph


def time_graph_us(fn: Callable[[int], object], buffers: int, warmup: int = 5, samples: int = 25) -> dict:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and autotune outside the capture
        for i in range(warmup):
            fn(i % buffers)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe = _graph_of(fn, 1, buffers)
    probe.replay()
    start.record()
    probe.replay()
    end.record()
    torch.cuda.synchronize()
    reps = min(1000, max(1, int(MIN_SAMPLE_US / max(start.elapsed_time(end) * 1e3, 1e-3)) + 1))
    del probe
    graph = _graph_of(fn, reps, buffers)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(samples):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    del graph
    return {"median_us": statistics.median(times), "min_us": min(times), "max_us": max(times), "reps": reps,
            "graph": True}  # fmt: skip


def time_us(fn: Callable[[int], object], buffers: int, warmup: int = 5, samples: int = 25, graph: bool = False) -> dict:
    if graph:
        return time_graph_us(fn, buffers, warmup, samples)
    for i in range(warmup):
        fn(i % buffers)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(0)
    end.record()
    torch.cuda.synchronize()
    reps = max(1, int(EAGER_SAMPLE_US / max(start.elapsed_time(end) * 1e3, 1e-3)) + 1)
    times, call = [], 0
    for _ in range(samples):
        torch.cuda._sleep(20_000)
        start.record()
        for _ in range(reps):
            fn(call % buffers)
            call += 1
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return {"median_us": statistics.median(times), "min_us": min(times), "max_us": max(times), "reps": reps}


def start_report() -> dict | None:
    """The run's environment (printed, and kept for the JSON), or ``None`` with a message on stderr
    when there is no CUDA GPU."""
    import sys

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return None
    import triton

    env = {"gpu": gpu_state(), "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    print(f"{env['gpu']}\ntorch {env['torch']}, triton {env['triton']}, cuda {env['cuda']}")
    return env


def finish_report(report: dict, path: str | None, ok: bool, passed: str = "all checks passed",
                  failed: str = "CHECK FAILED") -> int:  # fmt: skip
    """Write the JSON (if asked), print the verdict, return the exit status."""
    import json

    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    print(passed if ok else failed)
    return 0 if ok else 1


def gpu_state() -> str:
    query = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nvidia-smi unavailable"
