"""WikiText-2 perplexity of a packed checkpoint with the gate+up epilogue on and off (FPTQUANT_SWIGLU_EPILOGUE), and
how many MLPs took it in one forward.

    python3 scripts/epilogue_ppl.py --packed DIR --json FILE [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import fptquant
import fptquant.deploy.mlp as deploy_mlp
from fptquant.data.text import read_text
from fptquant.deploy import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--packed", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    model, tok = load(a.packed, device="cuda", dtype="float32")
    text = read_text("wikitext2-test")
    calls = []
    real = deploy_mlp.w4a4_swiglu_quantize
    deploy_mlp.w4a4_swiglu_quantize = lambda *args, **kw: calls.append(1) or real(*args, **kw)
    report = {}
    for on in ("1", "0"):
        os.environ["FPTQUANT_SWIGLU_EPILOGUE"] = on
        calls.clear()
        with torch.no_grad():
            model(torch.randint(0, 1000, (1, 2048), device="cuda"))
        report[f"epilogue_{on}_calls_in_one_forward"] = len(calls)
        report[f"epilogue_{on}_perplexity"] = fptquant.perplexity(model, tok, text, 2048, None, a.batch_size).perplexity
        print(on, report, flush=True)
    report["layers"] = len(model.model.layers)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
