"""Which activation inputs cost FPTQuant most at 4 bits: rerun the recipe with some inputs kept at 8 bits.

Usage: PYTHONPATH=src python3 scripts/fptquant_input_sensitivity.py ROLES [--windows 8] [--method-arg K=V ...]

ROLES: comma-separated linear roles (q,k,v,o,gate,up,down) whose *input* quantizers get 8 bits while every
other quantizer keeps the recipe's (W4A4KV4, static activations); ``none`` keeps all at 4 bits. Defaults to
the CPU-sized ``quick`` preset. Prints one JSON line: the roles, the perplexity on the first ``--windows``
WikiText-2 test windows, the range of the static input scales per role, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time

import fptquant
import fptquant.methods.fptquant.method as fptquant_method
from fptquant.cli import parse_method_args
from fptquant.fakequant import wrap
from fptquant.fakequant.wrap import quant_linears


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("roles")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--method-arg", action="append", default=[])
    a = p.parse_args()
    keep8 = set() if a.roles == "none" else set(a.roles.split(","))
    structure = wrap.quantize_model_structure

    def with_8_bit_inputs(model, adapter, recipe):
        structure(model, adapter, recipe)
        for layer in adapter.layers():
            for role in keep8:
                adapter.linear(layer, role).set_quantizers(recipe.weight_spec(), recipe.activation_spec().with_(bits=8))

    fptquant_method.quantize_model_structure = with_8_bit_inputs  # the method builds its quantizers through it
    model, tok = fptquant.load_model("smollm2-135m")
    args = {"preset": "quick", "resume": False, **parse_method_args(a.method_arg)}
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    start = time.time()
    fptquant.quantize(model, recipe, tokenizer=tok)
    scales: dict[str, list[float]] = {}
    for name, linear in quant_linears(model):
        scale = getattr(linear.input_quantizer, "scale", None)
        if scale is not None:
            scales.setdefault(name.split(".")[-1], []).append(float(scale.detach().abs().max()))
    ppl = fptquant.perplexity(model, tok, max_windows=a.windows).perplexity
    ranges = {role: [round(min(v), 4), round(max(v), 4)] for role, v in scales.items()}
    row = {"keep8": sorted(keep8), "perplexity": ppl, "scale_range": ranges, "seconds": time.time() - start}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
