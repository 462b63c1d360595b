"""Issue 9 acceptance on one model and method: fake-quant vs packed (saved, reloaded, real kernels).

    python3 scripts/deploy_check.py --model M --method rtn --out DIR --json FILE [--batch-size 8]

Quantizes, measures WikiText-2 perplexity (all windows) and greedy 64-token generations of the fake-quant
model, writes the packed checkpoint, reloads it from disk and measures the same through the real
kernels; reports the checkpoint size and the bytes per linear-layer parameter.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fptquant
from fptquant.data.text import read_text
from fptquant.deploy import load, save_packed
from fptquant.deploy.generate import GenerationOptions, new_token_ids
from fptquant.deploy.modules import QuantizedLinear

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in one sentence what a neural network is.",
]


def ppl(model, tok, text, args) -> float:
    return fptquant.perplexity(model, tok, text, args.seqlen, args.max_windows, args.batch_size, desc="ppl").perplexity


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="rtn")
    p.add_argument("--bits", default="w4a4kv4")
    p.add_argument("--out", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None, help="smoke tests only: the figures use all windows")
    a = p.parse_args()
    text = read_text("wikitext2-test")
    model, tok = fptquant.load_model(a.model, dtype="float32", device=a.device)
    start = time.time()
    fptquant.quantize(model, fptquant.Recipe(method=a.method, bits=a.bits, model=a.model), None, tok)
    report = {"method": a.method, "bits": a.bits, "quantize_seconds": time.time() - start}
    greedy = GenerationOptions(max_new_tokens=64)
    report["fake_perplexity"] = ppl(model, tok, text, a)
    fake_ids = new_token_ids(model, tok, PROMPTS, greedy)
    save_packed(model, tok, a.out, overwrite=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    packed, tok2 = load(a.out, device=a.device, dtype="float32")
    report["packed_perplexity"] = ppl(packed, tok2, text, a)
    packed_ids = new_token_ids(packed, tok2, PROMPTS, greedy)
    report["relative_ppl_difference"] = report["packed_perplexity"] / report["fake_perplexity"] - 1
    agree = []
    for f, q in zip(fake_ids, packed_ids, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(f, q, strict=False)) if x != y), min(len(f), len(q)))
        agree.append(n)
    report["generation_common_prefix_tokens"] = agree
    report["generations"] = [{"prompt": pr, "fake": tok.decode(f), "packed": tok2.decode(q)}
                             for pr, f, q in zip(PROMPTS, fake_ids, packed_ids, strict=True)]  # fmt: skip
    files = sorted(Path(a.out).glob("*.safetensors"))
    report["checkpoint_bytes"] = sum(f.stat().st_size for f in files)
    lin = [m for m in packed.modules() if isinstance(m, QuantizedLinear)]
    params = sum(m.in_features * m.out_features for m in lin)
    report["linear_bytes_per_param"] = sum(m.qweight.numel() + 4 * m.weight_scale.numel() for m in lin) / params
    report["device"] = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    Path(a.json).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "generations"}, indent=1))


if __name__ == "__main__":
    main()
