"""Where do a packed model and its fake-quant twin part on the GPU? Logits at the last prompt token and
greedy continuations, with the Triton kernels and with the PyTorch reference backend (same process).

    python3 scripts/deploy_diag.py --model M [--method quarot] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from deploy_check import common_prefixes  # scripts/ is on the path when a script here runs

import fptquant
from fptquant.deploy import to_deploy
from fptquant.deploy.generate import GenerationOptions, format_prompt, new_token_ids

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea."]


def first_divergence(fake, real, tok, device) -> None:
    """Hooks on every module: the first (in call order) whose output differs between the two models,
    with whether its input already differed."""
    records = {"fake": [], "real": []}

    def hook(tag):
        def fn(module, args, out):
            x = args[0] if args and torch.is_tensor(args[0]) else None
            y = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(y):
                records[tag].append(
                    (module._diag_name, x.detach().clone() if x is not None else None, y.detach().clone())
                )

        return fn

    handles = []
    for tag, model in (("fake", fake), ("real", real)):
        for name, module in model.named_modules():
            module._diag_name = name
            handles.append(module.register_forward_hook(hook(tag)))
    ids = tok(format_prompt(tok, PROMPTS[0], True), return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    with torch.no_grad():
        fake(ids)
        real(ids)
    for h in handles:
        h.remove()
    real_calls: dict[str, list] = {}
    for name, x, y in records["real"]:
        real_calls.setdefault(name, []).append((x, y))
    shown = 0
    for name, xf, yf in records["fake"]:
        if not real_calls.get(name):
            continue
        xr, yr = real_calls[name].pop(0)
        if yf.shape != yr.shape:
            continue
        dy = (yf.float() - yr.float()).abs().max().item() / max(yf.float().abs().max().item(), 1e-9)
        dx = None if xf is None or xr is None or xf.shape != xr.shape else (xf - xr).abs().max().item()
        if dy > 1e-3:
            print(f"diverges at {name}: rel out diff {dy:.3e}, input diff {dx}")
            shown += 1
            if shown >= 8:
                break
    print(f"first-divergence scan done ({len(records['fake'])} fake calls)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="quarot")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    torch.manual_seed(0)
    fake, tok = fptquant.load_model(a.model, dtype="float32", device=a.device)
    fptquant.quantize(fake, fptquant.Recipe(method=a.method, bits="w4a4kv4", model=a.model), None, tok)
    real = copy.deepcopy(fake)
    real.fptquant_recipe = fake.fptquant_recipe
    to_deploy(real)
    opts = GenerationOptions(max_new_tokens=32)
    fake_ids = new_token_ids(fake, tok, PROMPTS, opts)
    for backend in ("triton", "torch"):
        os.environ["FPTQUANT_KERNELS"] = backend
        for prompt in PROMPTS:
            ids = tok(format_prompt(tok, prompt, True), return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                f = fake(ids.to(a.device)).logits[0, -1]
                r = real(ids.to(a.device)).logits[0, -1]
            print(f"{backend}: argmax fake {f.argmax().item()} real {r.argmax().item()}, "
                  f"max |diff| {(f - r).abs().max().item():.3e} of {f.abs().max().item():.1f}")  # fmt: skip
        real_ids = new_token_ids(real, tok, PROMPTS, opts)
        print(f"{backend}: common greedy prefix {common_prefixes(fake_ids, real_ids)}")
    first_divergence(fake, real, tok, a.device)
    x = torch.randn(7, 576, device=a.device)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        lf, lr = fake.get_submodule(name), real.get_submodule(name)
        xin = torch.randn(7, lf.in_features, device=a.device)
        for backend in ("triton", "torch"):
            os.environ["FPTQUANT_KERNELS"] = backend
            with torch.no_grad():
                print(f"{name} {backend}: max |fake - real| {(lf(xin) - lr(xin)).abs().max().item():.3e}")
    del x


if __name__ == "__main__":
    main()
