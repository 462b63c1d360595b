"""Rebuild the deploy model from a checkpoint's config and tensors (no reference model needed)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import ModelLoadError
from ..fakequant.attention import AttentionQuantizers, register
from ..fakequant.residual_scaling import enable_residual_scaling
from ..math.quantizer import QuantSpec
from ..models import get_adapter
from ..models.loading import parse_dtype
from .export import link_siblings, shared_transform_prefixes, tied_output_key
from .mlp import fuse_swiglu
from .modules import QuantizedLinear, build_transform
from .norm import fuse_norms


def _hf_config(config: dict):
    fields = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ModelLoadError("config.json names no model_type")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"config.json: unknown or invalid model_type {model_type!r} ({e})") from None


def build_model(config: dict, state: dict[str, torch.Tensor], dtype=None) -> nn.Module:
    qc = config["quantization_config"]
    hf = _hf_config(config)
    torch_dtype = parse_dtype(dtype) if dtype is not None else parse_dtype(str(hf.dtype or "float32").split(".")[-1])
    model = AutoModelForCausalLM.from_config(hf, dtype=torch_dtype)
    built: dict[str, QuantizedLinear] = {}
    for name, entry in qc["modules"].items():
        spec = QuantSpec(**entry["activation"])
        q = QuantizedLinear(entry["in_features"], entry["out_features"], entry["bias"], spec)
        owner = (entry["transform"] or {}).get("shared_with")
        if owner is not None:  # the same module object as the owner's, as when it was exported
            if owner not in built:
                raise ModelLoadError(f"checkpoint module {name} shares the transform of unknown module {owner}")
            q.input_transform = built[owner].input_transform
        else:
            q.input_transform = build_transform(entry["transform"])
        built[name] = q
        parent, _, child = name.rpartition(".")
        try:
            setattr(model.get_submodule(parent), child, q)
        except AttributeError:
            raise ModelLoadError(f"checkpoint module {name} does not exist in a {hf.model_type} model") from None
    for name, entry in qc["attention"].items():
        kv = AttentionQuantizers(1, entry["features"], QuantSpec(**entry["k"]), QuantSpec(**entry["v"]))
        kv.qk_transform = build_transform(entry["qk_transform"])
        model.get_submodule(name).fptquant_kv = kv
    if qc["attention"]:
        model.set_attn_implementation(register())
    _load_state(model, state, bool(config.get("tie_word_embeddings")), tuple(shared_transform_prefixes(qc["modules"])))
    scaled = tuple(qc.get("residual_scaling", ()))
    if scaled:
        try:
            enable_residual_scaling(get_adapter(model), scaled)
        except ValueError as e:
            raise ModelLoadError(f"checkpoint residual_scaling {list(scaled)}: {e}") from None
    link_siblings(model)
    fuse_swiglu(get_adapter(model))
    fuse_norms(get_adapter(model))
    model.fptquant_deploy_manifest = qc["modules"]
    model.fptquant_quantization_config = qc
    return model


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], tied: bool, aliases: tuple[str, ...]) -> None:
    expected = {k: v for k, v in model.state_dict().items() if not (aliases and k.startswith(aliases))}
    if tied:
        expected.pop(tied_output_key(model) or "", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"checkpoint tensors do not match the model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            want = tuple(expected[key].shape)
            raise ModelLoadError(f"checkpoint tensor {key} has shape {tuple(tensor.shape)}, the model expects {want}")
    model.load_state_dict(state, strict=False)
    if tied:
        model.tie_weights()
