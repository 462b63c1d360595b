"""Real W4A4 deployment: export a quantized model to a packed INT4 checkpoint, load it back, run it.

from fptquant.deploy import save_packed, load
save_packed(quantized_model, tokenizer, "out/")      # converts the model in place (to_deploy)
model, tokenizer = load("out/", device="cuda")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..fakequant.residual_scaling import residual_scaling_roles
from ..models import get_adapter
from ..pipelines.quantize import prepare_output_dir
from .checkpoint import format_version, quantization_config, read_config, read_state, write_state
from .export import attention_manifest, shared_transform_prefixes, tied_output_key, to_deploy
from .loading import build_model

__all__ = ["is_packed_checkpoint", "load", "save_packed", "to_deploy"]


def is_packed_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        qc = json.loads(path.read_text()).get("quantization_config") or {}
    except json.JSONDecodeError:
        return False
    return qc.get("quant_method") == "fptquant"


def save_packed(
    model: nn.Module, tokenizer, out_dir: str | Path, overwrite: bool = False, max_shard_size: str | int = "2GB"
) -> Path:
    """Write ``model`` (quantized by :func:`fptquant.quantize`, or already deployed) as a packed checkpoint.

    A fake-quant ``model`` is converted to the deploy form in place (``to_deploy``) first; deep-copy it
    beforehand to keep the fake-quant model.

    Returns the directory. Refuses a non-empty directory unless ``overwrite``.
    """
    manifest = getattr(model, "fptquant_deploy_manifest", None) or to_deploy(model)
    out = prepare_output_dir(out_dir, overwrite)
    tied = tied_output_key(model)
    aliases = tuple(shared_transform_prefixes(manifest))
    state = {k: v for k, v in model.state_dict().items() if k != tied and not (aliases and k.startswith(aliases))}
    recipe = model.fptquant_recipe
    config = model.config.to_dict()
    config["tie_word_embeddings"] = tied is not None
    scaled = residual_scaling_roles(get_adapter(model))  # S_n's hooks, moved onto the packed linears
    qc = quantization_config(recipe.method, recipe.bits, manifest, attention_manifest(model), scaled)
    config["quantization_config"] = qc
    write_state(state, out, max_shard_size, format_version(scaled))
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load(directory: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """``(model, tokenizer)`` from a packed checkpoint; the tokenizer is ``None`` if none was saved."""
    directory = Path(directory)
    config = read_config(directory)
    state = read_state(directory)
    model = build_model(config, state, dtype).to(device).eval()
    tokenizer = None
    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
