"""The packed checkpoint on disk (docs/FORMAT.md): a Hugging Face-like directory.

``config.json`` is the model's transformers config plus ``quantization_config`` (``quant_method:
"fptquant"``, format version, bits, and the manifest that rebuilds every quantized module);
``model*.safetensors`` (sharded, with ``model.safetensors.index.json`` when more than one) hold the
packed weights, scales, online transform matrices, quantizer parameters and every other tensor;
the tokenizer files sit beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .. import __version__
from ..config.jsonfile import read_json
from ..errors import ConfigError, ModelLoadError

FORMAT_NAME = "fptquant-packed"
BASE_VERSION = 1
# adds S_n (``residual_scaling``), which a version-1 reader would silently drop; other checkpoints stay version 1
RESIDUAL_SCALING_VERSION = 2
FORMAT_VERSION = RESIDUAL_SCALING_VERSION  # the newest this code writes
READABLE_VERSIONS = (BASE_VERSION, RESIDUAL_SCALING_VERSION)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def format_version(residual_scaling: tuple[str, ...]) -> int:
    """The oldest version that holds everything written: readers of older versions refuse what they would drop."""
    return RESIDUAL_SCALING_VERSION if residual_scaling else BASE_VERSION


def quantization_config(method: str, bits: str, modules: dict, attention: dict, residual_scaling=()) -> dict:
    config = {
        "quant_method": "fptquant",
        "format": FORMAT_NAME,
        "format_version": format_version(residual_scaling),
        "fptquant_version": __version__,
        "method": method,
        "bits": bits,
        "weights": {"bits": 4, "symmetric": True, "granularity": "per_channel", "packing": "int4_low_nibble_first"},
        "modules": modules,
        "attention": attention,
    }
    if residual_scaling:  # S_n around these closing linears (o, down) of every layer
        config["residual_scaling"] = list(residual_scaling)
    return config


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU, contiguous, in a storage of its own (safetensors refuses tensors that share one: the row
    slices of q/k/v's stacked weights, .siblings)."""
    t = t.detach().cpu().contiguous()
    return t.clone() if t._base is not None else t


def write_state(
    state: dict[str, torch.Tensor], out: Path, max_shard_size: str | int = "2GB", version: int = 1
) -> list[str]:
    """Shard ``state`` into safetensors files (written to temporary names, then renamed)."""
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)  # fmt: skip
    meta = {"format": FORMAT_NAME, "format_version": str(version)}
    for filename, names in split.filename_to_tensors.items():
        tmp = out / (filename + ".tmp")
        save_file({n: _owned(state[n]) for n in names}, tmp, metadata=meta)
        os.replace(tmp, out / filename)
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values()), **meta},
                 "weight_map": split.tensor_to_filename}  # fmt: skip
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return sorted(split.filename_to_tensors)


def read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise ModelLoadError(f"checkpoint directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} has no config.json: not a packed fptquant checkpoint")
    config = read_json(directory / "config.json", "checkpoint config", ModelLoadError)
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "fptquant" or qc.get("format") != FORMAT_NAME:
        raise ModelLoadError(f"{directory} is not a packed fptquant checkpoint (quantization_config names "
                             f"{qc.get('quant_method')!r}/{qc.get('format')!r})")  # fmt: skip
    version = qc.get("format_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ConfigError(
            f"{directory} has checkpoint format version {version}; this fptquant ({__version__}) reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: {'upgrade fptquant' if newer else 're-export'}"
        )
    return config


def read_state(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint; a missing or truncated shard is named in the error."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "checkpoint index", ModelLoadError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"checkpoint index {index} has no weight_map")
        files = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise ModelLoadError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    state = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"checkpoint shard missing: {path} (listed in {INDEX_FILE})")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"checkpoint shard {path} is unreadable (truncated or corrupt?): {e}") from None
    return state
