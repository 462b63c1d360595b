"""Turn a quantized fake-quant model into its deploy form, in memory: every ``QuantLinear`` becomes a
``QuantizedLinear`` on packed codes. The rest of the module tree (norms, embeddings, KV quantizers,
online q/k transforms) is kept, so the deploy model runs the same function with real integer codes."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..fakequant.linear import QuantLinear
from ..fakequant.residual_scaling import disable_residual_scaling, enable_residual_scaling, residual_scaling_roles
from ..math.grid import recover_symmetric_grid
from ..math.packing import pack_int4
from ..math.quantization import Axis
from .mlp import fuse_swiglu
from .modules import QuantizedLinear, describe_transform, link_shared_inputs
from .norm import fuse_norms
from .siblings import link_sibling_gemms

SHARED_INPUT_ROLES = (("q", "k", "v"), ("gate", "up"))


def link_siblings(model: nn.Module) -> int:
    """Linears of one layer that read the same activation quantize it once (see ``SharedInput``), and q/k/v run
    one GEMM over their stacked weights (see ``SiblingGemm``; gate/up have theirs in ``FusedSwiGLU``)."""
    from ..models import get_adapter

    adapter = get_adapter(model)
    groups = {roles: [[adapter.linear(layer, role) for role in roles] for layer in adapter.layers()]
              for roles in SHARED_INPUT_ROLES}  # fmt: skip
    linked = link_shared_inputs([group for per_layer in groups.values() for group in per_layer])
    link_sibling_gemms(groups[("q", "k", "v")])
    return linked


def _check_exportable(model: nn.Module) -> None:
    recipe = getattr(model, "fptquant_recipe", None)
    if recipe is None:
        raise ConfigError("this model was not quantized by fptquant.quantize; nothing to export")
    wspec = recipe.weight_spec()
    if wspec.bits != 4 or not wspec.symmetric or wspec.axis is not Axis.ROW:
        kind = f"{wspec.bits}-bit {'symmetric' if wspec.symmetric else 'asymmetric'} per {wspec.axis.value}"
        raise ConfigError(f"export packs symmetric per-channel 4-bit weights; this recipe's weights are {kind}")


@torch.no_grad()
def quantized_linear_from(name: str, linear: QuantLinear) -> QuantizedLinear:
    aspec = linear.input_quantizer.spec
    if aspec.enabled and not aspec.dynamic and aspec.axis is not Axis.TENSOR:
        raise ConfigError(f"{name}: static activation scales must be per tensor to export, not {aspec.axis.value}")
    codes, scales = recover_symmetric_grid(linear.weight, 4, name)
    out = QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None, aspec)
    out.qweight.copy_(pack_int4(codes))
    out.weight_scale.copy_(scales)
    if linear.bias is not None:
        out.bias.copy_(linear.bias.float())
    out.input_quantizer.load_state_dict(linear.input_quantizer.state_dict())
    out.input_transform = linear.input_transform
    describe_transform(out.input_transform)  # refuse what cannot be saved before anything is replaced
    return out.to(linear.weight.device)


def to_deploy(model: nn.Module, fused_norms: bool = True) -> dict[str, dict]:
    """Replace every ``QuantLinear`` of ``model`` in place; return the per-module manifest. ``fused_norms=False``
    keeps the norms in front of q/k/v and gate/up as they are (:mod:`.norm`: fused, they quantize for their
    readers instead of writing their output), e.g. to compare the two."""
    _check_exportable(model)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not targets:
        raise ConfigError("the model has no quantized linear layers to export")
    built = {name: quantized_linear_from(name, lin) for name, lin in targets}  # all checks before any change
    from ..models import get_adapter

    adapter = get_adapter(model)
    scaled = residual_scaling_roles(adapter)  # S_n's hooks sit on the linears being replaced: move them over
    disable_residual_scaling(adapter)
    manifest, owners = {}, {}
    for name, q in built.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q)
        transform = describe_transform(q.input_transform)
        if q.input_transform is not None:  # one module shared by q/k/v (or gate/up) is stored once
            owner = owners.setdefault(id(q.input_transform), name)
            if owner != name:
                transform = {"shared_with": owner}
        manifest[name] = {
            "in_features": q.in_features,
            "out_features": q.out_features,
            "bias": q.bias is not None,
            "activation": q.input_quantizer.spec.to_dict(),
            "transform": transform,
        }
    model.fptquant_deploy_manifest = manifest
    if scaled:
        enable_residual_scaling(adapter, scaled)
    link_siblings(model)
    fuse_swiglu(adapter)
    if fused_norms:
        fuse_norms(adapter)
    return manifest


def tied_output_key(model: nn.Module) -> str | None:
    """State-dict key of the output embedding when it is the input embedding's very tensor (not stored)."""
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or out_emb.weight is not in_emb.weight:
        return None
    return next(f"{n}.weight" for n, m in model.named_modules() if m is out_emb)


def shared_transform_prefixes(manifest: dict[str, dict]) -> list[str]:
    """State-dict prefixes of transforms that alias another module's (not stored, not expected)."""
    return [f"{name}.input_transform." for name, e in manifest.items() if (e["transform"] or {}).get("shared_with")]


def attention_manifest(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, module in model.named_modules():
        kv = getattr(module, "fptquant_kv", None)
        if kv is not None:
            out[name] = {
                "k": kv.k_quantizer.spec.to_dict(),
                "v": kv.v_quantizer.spec.to_dict(),
                "features": kv.k_quantizer.features,
                "qk_transform": describe_transform(kv.qk_transform),
            }
    return out
