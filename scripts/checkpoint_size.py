"""Packed checkpoint size of a random model with LLaMA-3-8B layer shapes (issue 9, acceptance 2), on the CPU.

PYTHONPATH=src python3 scripts/checkpoint_size.py LAYERS [OUT_DIR]
"""

import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import bench_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import fptquant  # noqa: E402
from fptquant.deploy import save_packed  # noqa: E402
from fptquant.deploy.modules import QuantizedLinear  # noqa: E402

layers = int(sys.argv[1])
t = time.time()
torch.manual_seed(0)
config = LlamaConfig(**bench_model.EIGHT_B, num_hidden_layers=layers, dtype=torch.bfloat16)
model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
fptquant.quantize(model, fptquant.Recipe(method="rtn", bits="w4a4kv4", model="8b-shaped"))
out = save_packed(model, None, sys.argv[2] if len(sys.argv) > 2 else f"/tmp/ckpt8b_{layers}", overwrite=True)
files = sorted(out.glob("*.safetensors"))
total = sum(f.stat().st_size for f in files)
lin = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
params = sum(m.in_features * m.out_features for m in lin)
lin_bytes = sum(m.qweight.numel() + 4 * m.weight_scale.numel() for m in lin)
print(
    json.dumps(
        {
            "layers": layers,
            "checkpoint_bytes": total,
            "files": len(files),
            "linear_params": params,
            "linear_bytes": lin_bytes,
            "linear_bytes_per_param": lin_bytes / params,
            "bf16_linear_bytes": 2 * params,
            "seconds": time.time() - t,
        }
    )
)
