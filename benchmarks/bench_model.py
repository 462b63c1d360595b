"""Whole-model prefill and decode: packed W4A4KV4 (real kernels) vs the BF16 model, same run (issue 9).

    python3 benchmarks/bench_model.py --shape 8b --layers 2 [--batches 1,8,64] [--json FILE]
    python3 benchmarks/bench_model.py --model PATH_OR_ALIAS [...]          # e.g. SmolLM2's GGUF

Random weights with LLaMA-3-8B layer shapes (``--layers`` decoder layers: the full 32 need more time
than one GPU call) or a real model. Prefill attention is SDPA in both variants (for the quantized
model through fptquant's attention function, over the fake-quantized K/V, as evaluated). Decode: the
BF16 model with transformers' dynamic cache and SDPA; the quantized model with the real INT4 KV cache
and the INT4 decode-attention kernel (``--kv fake``: transformers' cache, K/V fake-quantized each
step). SDPA's cuDNN backend is off (its per-step host cost in decode; see main()).
Prefill: the decoder (without lm_head) on ``batch × 2048`` tokens, CUDA events, median of 5.
Decode: 256 steps of one token per sequence after a 2048-token prefill and 8 warm-up steps, each step
replayed as a CUDA graph (deploy.graphed_decode; BF16 with transformers' StaticCache, the quantized
model with the INT4 cache), or with ``--eager-decode`` the eager Python loop (host launch cost
included, as a user sees it without graphs); timed as a whole with CUDA events.
Peak memory per phase. ``--unfused-norms`` adds the packed model with its RMSNorms unfused from the quantize
of q/k/v and gate/up (deploy/norm.py), same run; ``--unmerged-qkv`` the packed model again with q, k and v as
three GEMMs (``FPTQUANT_MERGE_SIBLINGS=0``, deploy/siblings.py) instead of one over their stacked weights, and
(since the commit after 0bb6bc4) gate and up as two GEMMs where no epilogue takes them (deploy/mlp.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from unittest import mock

import torch
from timing import start_report

import fptquant
from fptquant.deploy import to_deploy
from fptquant.deploy.generate import kv_cache_for
from fptquant.deploy.graphed_decode import GraphedDecoder
from fptquant.deploy.kv_cache import int4_kv_cache

EIGHT_B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)  # fmt: skip


def build(args):
    if args.model:
        model, _ = fptquant.load_model(args.model, dtype="bfloat16", device="cuda")
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**EIGHT_B, num_hidden_layers=args.layers, dtype=torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    return model.eval()


def events(fn, repeats: int = 5) -> float:
    times = []
    for i in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed_decode_ms(model, ids, steps: int, int4_cache: bool) -> float:
    """Per-run ms of ``steps`` one-token steps replayed as a CUDA graph (BF16: transformers' StaticCache;
    quantized: the INT4 cache in unpadded mode), after 8 eager warm-up steps."""
    from transformers import StaticCache

    capacity = ids.shape[1] + steps + 16
    if int4_cache:
        cache = int4_kv_cache(model, capacity, unpadded=True)
    else:
        cache = StaticCache(config=model.config, max_cache_len=capacity)
    decoder = GraphedDecoder(model, cache, ids)
    decoder.capture(warmup=8)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        decoder()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


@torch.no_grad()
def measure(model, batch: int, prompt: int, steps: int, vocab: int, int4_cache: bool = False,
            graph: bool = True) -> dict:  # fmt: skip
    ids = torch.randint(0, vocab, (batch, prompt), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    prefill_ms = events(lambda: model.model(input_ids=ids))
    prefill_peak = torch.cuda.max_memory_allocated() / 2**30

    def decode():
        cache = kv_cache_for(model, prompt + steps + 9) if int4_cache else None
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(8):  # warm-up: kernels for the one-token shapes compile (Triton) or get tuned here
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    torch.cuda.reset_peak_memory_stats()
    mode = "graph" if graph else "eager"
    if graph:
        try:
            decode_ms = graphed_decode_ms(model, ids, steps, int4_cache)
        except Exception as error:  # noqa: BLE001 - report and time the eager loop instead
            print(f"CUDA-graph decode failed ({type(error).__name__}: {str(error)[:200]}); timing the eager loop")
            torch.cuda.synchronize()
            mode, decode_ms = "eager (graph capture failed)", decode()
    else:
        decode_ms = decode()
    return {"batch": batch, "prefill_ms": prefill_ms, "prefill_tokens_per_s": batch * prompt / prefill_ms * 1e3,
            "prefill_peak_gib": prefill_peak, "decode_mode": mode, "decode_ms_per_step": decode_ms / steps,
            "decode_tokens_per_s": batch * steps / decode_ms * 1e3,
            "decode_peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


W4A4_KERNELS = (  # _gemv_kernel also matches _quantize_gemv_kernel
    "_w4a4_kernel", "_tma_kernel", "_dp4a_kernel", "_sliced_kernel", "_unpack_kernel", "_gemv_kernel",
)  # fmt: skip
CATEGORIES = (("gemm (w4a4)", W4A4_KERNELS),
              ("quantize", ("_quantize_rows", "_kron_quantize")),
              ("attention", ("fmha", "flash", "attention", "sdpa", "efficient", "_decode_kernel")),
              ("bf16 gemm (cuBLAS)", ("gemm", "cutlass", "sm90_xmma", "nvjet")))  # fmt: skip


@torch.no_grad()
def breakdown(
    model, batch: int, prompt: int, vocab: int, decode_steps: int = 0, int4_cache: bool = False
) -> tuple[dict, dict]:
    """GPU ms by kernel category (torch.profiler) of one prefill, or with ``decode_steps`` of that many
    decode steps after a prefill (per step); and the 12 costliest kernels of category "other" (ms, calls)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, vocab, (batch, prompt), device="cuda")
    if decode_steps:
        cache = kv_cache_for(model, prompt + 2 * decode_steps + 1) if int4_cache else None
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)

        def run():
            nonlocal out, nxt
            for _ in range(decode_steps):
                out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
    else:

        def run():
            model.model(input_ids=ids)

    run()  # warm-up (and, for decode, the first half of the cache's steps)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    other: dict[str, tuple[float, float]] = {}
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        name = event.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k.lower() in name for k in keys)), "other")
        ms = us / 1e3 / max(decode_steps, 1)
        totals[cat] = totals.get(cat, 0.0) + ms
        if cat == "other" and ms > 0:
            other[event.key[:90]] = (ms, event.count / max(decode_steps, 1))
    top = dict(sorted(other.items(), key=lambda kv: -kv[1][0])[:12])
    return totals, top


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--json", default=None)
    p.add_argument("--kv", choices=("int4", "fake"), default="int4", help="the quantized model's decode KV cache")
    p.add_argument("--eager-decode", action="store_true", help="time the eager decode loop, not CUDA-graph replay")
    p.add_argument("--profile-batch", type=int, default=8, help="batch of the per-part breakdown (0: none)")
    p.add_argument("--unfused-norms", action="store_true",
                   help="also time the packed model with its norms unfused (to_deploy(fused_norms=False))")  # fmt: skip
    p.add_argument("--unmerged-qkv", action="store_true",
                   help="also time the packed model with q/k/v as three GEMMs (FPTQUANT_MERGE_SIBLINGS=0)")  # fmt: skip
    p.add_argument("--unmerged-first", action="store_true",
                   help="time the unmerged variant before the merged one (an order check)")  # fmt: skip
    a = p.parse_args()
    if a.unmerged_first and not a.unmerged_qkv:
        p.error("--unmerged-first orders the variant --unmerged-qkv adds: give both")
    env = start_report()
    if env is None:
        return 2
    # torch 2.11 picks cuDNN attention for SDPA decode on the H100, and rebuilds its plan on the host at
    # every step as the KV length grows: 18 ms of CPU per call, which swamped every decode figure.
    torch.backends.cuda.enable_cudnn_sdp(False)
    bf16 = build(a)
    packed = copy.deepcopy(bf16)
    fptquant.quantize(packed, fptquant.Recipe(method="rtn", bits="w4a4kv4", model="bench"))
    unfused = None
    if a.unfused_norms:
        unfused = copy.deepcopy(packed)
        to_deploy(unfused, fused_norms=False)
    to_deploy(packed)
    weights = {
        "bf16_gib": sum(t.numel() * t.element_size() for t in bf16.state_dict().values()) / 2**30,
        "packed_gib": sum(t.numel() * t.element_size() for t in packed.state_dict().values()) / 2**30,
    }
    print(weights)
    rows = []
    vocab = bf16.config.vocab_size
    for batch in [int(b) for b in a.batches.split(",")]:
        variants = [("bf16", bf16), ("w4a4kv4_packed", packed)]
        variants += [("w4a4kv4_packed_unfused_norms", unfused)] if unfused is not None else []
        if a.unmerged_qkv:
            where = 1 if a.unmerged_first else len(variants)
            variants.insert(where, ("w4a4kv4_packed_unmerged_qkv", packed))
        for name, model in variants:
            # with --unmerged-qkv each variant names the switch; without it, the environment's setting stands
            merged = "0" if name.endswith("unmerged_qkv") else "1"
            switch = {"FPTQUANT_MERGE_SIBLINGS": merged} if a.unmerged_qkv else {}
            try:
                with mock.patch.dict(os.environ, switch):
                    int4 = name != "bf16" and a.kv == "int4"
                    r = measure(model, batch, a.prompt, a.steps, vocab, int4_cache=int4, graph=not a.eager_decode)
            except torch.OutOfMemoryError as e:
                r = {"batch": batch, "error": f"out of memory: {str(e)[:200]}"}
            r["model"] = name
            rows.append(r)
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()
    for batch in {r["batch"] for r in rows}:
        base = next(r for r in rows if r["batch"] == batch and r["model"] == "bf16")
        q = next(r for r in rows if r["batch"] == batch and r["model"] == "w4a4kv4_packed")
        if "error" not in base and "error" not in q:
            print(f"batch {batch}: prefill {base['prefill_ms'] / q['prefill_ms']:.2f}x, "
                  f"decode {base['decode_ms_per_step'] / q['decode_ms_per_step']:.2f}x vs BF16")  # fmt: skip
        for kind, what in (("unfused_norms", "fused norms"), ("unmerged_qkv", "merged q/k/v")):
            u = next((r for r in rows if r["batch"] == batch and r["model"] == f"w4a4kv4_packed_{kind}"), None)
            if u is not None and "error" not in u and "error" not in q:
                print(f"batch {batch}: {what} {u['prefill_ms'] / q['prefill_ms']:.2f}x prefill, "
                      f"{u['decode_ms_per_step'] / q['decode_ms_per_step']:.2f}x decode vs without")  # fmt: skip
    parts = {}
    if a.profile_batch:
        for name, model in (("bf16", bf16), ("w4a4kv4_packed", packed)):
            for phase, steps in (("prefill", 0), ("decode", 8)):
                int4 = name != "bf16" and a.kv == "int4"
                found, top = breakdown(model, a.profile_batch, a.prompt, vocab, steps, int4)
                parts[f"{phase}/{name}"] = found
                parts[f"{phase}/{name}/other kernels (ms, calls)"] = top
                print(f"{phase} batch {a.profile_batch} GPU ms {'per step ' if steps else ''}by part, {name}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(found.items())))  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**env, "args": vars(a), "weights": weights, "rows": rows, "parts": parts}, f,
                      indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
