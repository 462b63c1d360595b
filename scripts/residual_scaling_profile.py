"""Why S_n can hurt static 4-bit activations: per-token residual RMS and the static quantization error with and
without S_n, on the full-precision model (no learned transforms; the online Hadamards of the default recipe).

Usage: PYTHONPATH=src python3 scripts/residual_scaling_profile.py [--windows 1] [--model smollm2-135m]

For the inputs of o_proj (after the 576 Hadamard) and down_proj (after the block-512 Hadamard) of every layer, on
validation windows: the residual RMS ``r`` that S_n divides by (median, max, and how many tokens exceed 10× the
median), and the relative error ``|Q(x) - x| / |x|`` of a per-tensor symmetric 4-bit quantizer at its L2-optimal
scale (grid search), without S_n (``Q(x)``) and with it (``Q(x / r) · r``), over all tokens and over the
high-RMS tokens only. Prints one JSON line per input and a summary.
"""

from __future__ import annotations

import argparse
import json

import torch

import fptquant
from fptquant.data.text import calibration_windows, read_text, tokenize
from fptquant.fakequant.residual_scaling import token_rms
from fptquant.math.online import online_hadamard
from fptquant.models import get_adapter


def best_error(x: torch.Tensor, r: torch.Tensor | None, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token squared error of the best per-tensor scale (L2 over all tokens), and the per-token energy."""
    y = x if r is None else x / r
    qmax = 2 ** (bits - 1) - 1
    top = y.abs().max()
    best = None
    for ratio in torch.linspace(0.05, 1.0, 40):
        scale = top * ratio / qmax
        q = (y / scale).round().clamp(-qmax - 1, qmax) * scale
        q = q if r is None else q * r
        err = (q - x).pow(2).sum(-1)
        if best is None or err.sum() < best.sum():
            best = err
    return best, x.pow(2).sum(-1)


def relative(error: torch.Tensor, energy: torch.Tensor) -> float:
    return round((error.sum() / energy.sum()).sqrt().item(), 4)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--windows", type=int, default=1)
    a = p.parse_args()
    model, tok = fptquant.load_model(a.model)
    adapter = get_adapter(model)
    tokens = calibration_windows(tokenize(tok, read_text("wikitext2-valid")), a.windows)
    rotations = {"o": online_hadamard("full", adapter.num_heads * adapter.head_dim),
                 "down": online_hadamard("block", adapter.intermediate_size)}  # fmt: skip
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(adapter.layers()):
        for role, norm in (("o", adapter.input_norm(layer)), ("down", adapter.post_attention_norm(layer))):
            store = seen.setdefault((i, role), [None, None])
            hooks.append(norm.register_forward_pre_hook(lambda m, args, s=store: s.__setitem__(0, args[0])))
            record_input = adapter.linear(layer, role).register_forward_pre_hook
            hooks.append(record_input(lambda m, args, s=store: s.__setitem__(1, args[0])))
    summary = {"o": [], "down": []}
    with torch.no_grad():
        for window in tokens:
            model(window[None])
            for (i, role), (residual, x) in seen.items():
                r = token_rms(residual, 1e-5)[0]
                x = rotations[role](x.float())[0] if rotations[role] is not None else x.float()[0]
                med = r.median()
                high = (r > 10 * med).squeeze(-1)
                plain, energy = best_error(x, None)
                scaled, _ = best_error(x, r)
                row = {"layer": i, "input": role, "rms_median": round(med.item(), 3)}
                row["rms_max"], row["high_tokens"] = round(r.max().item(), 2), int(high.sum())
                row["rel_err_plain"], row["rel_err_sn"] = relative(plain, energy), relative(scaled, energy)
                if high.any():
                    row["rel_err_high_plain"] = relative(plain[high], energy[high])
                    row["rel_err_high_sn"] = relative(scaled[high], energy[high])
                summary[role].append(row["rel_err_sn"] / row["rel_err_plain"])
                print(json.dumps(row))
    for h in hooks:
        h.remove()
    for role, ratios in summary.items():
        median = round(float(torch.tensor(ratios).median()), 3)
        worse = sum(x > 1 for x in ratios)
        print(json.dumps({"input": role, "layers_where_sn_is_worse": worse, "of": len(ratios), "median_ratio": median}))


if __name__ == "__main__":
    main()
