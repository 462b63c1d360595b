"""Two GPU questions in one call.
1. Fused transform+quantize: does the fp32-dot (UPCAST) form match the reference where the fp16
   tensor-core form does not? (tensor-core numerics vs a layout/store bug)
2. Decode: where do 65 ms per step go for a BF16 8B-shaped 2-layer model in the eager HF loop?
"""

from __future__ import annotations

import torch

from fptquant.kernels.transform_quantize import transform_quantize_reference
from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
from fptquant.math.hadamard import random_orthogonal

g = torch.Generator().manual_seed(0)
p1, p2 = random_orthogonal(64, g).float().cuda(), random_orthogonal(64, g).float().cuda()
x = torch.randn(256, 4096, device="cuda").to(torch.bfloat16)
qr, sr = transform_quantize_reference(x, p1, p2)
for upcast in (False, True):
    q, s = kron_quantize_rows(x, p1, p2, 1, 1.0, None, upcast=upcast)
    d = (q.int() - qr.int()).abs()
    print(
        f"upcast={upcast}: codes differing {int((d > 0).sum())} of {d.numel()}, max {int(d.max())}, "
        f"scales equal {bool(torch.equal(s, sr))}"
    )

import sys  # noqa: E402

sys.path.insert(0, "benchmarks")
import bench_model  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

with torch.device("cuda"):
    model = LlamaForCausalLM(LlamaConfig(**bench_model.EIGHT_B, num_hidden_layers=2)).to(torch.bfloat16).eval()
model.config._attn_implementation = "sdpa"
ids = torch.randint(0, 1000, (1, 2048), device="cuda")
with torch.no_grad():
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(3):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=50))
