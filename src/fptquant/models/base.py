"""The architecture adapter: names a model family's modules so methods never hard-code attribute paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

ATTENTION_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("gate", "up", "down")
LINEAR_ROLES = ATTENTION_ROLES + MLP_ROLES


@dataclass(frozen=True)
class RopeInfo:
    """What a pre-RoPE transform must know: the base, which dims rotate and how they are paired."""

    theta: float
    head_dim: int
    rotary_dim: int
    pairing: str  # "half": dims i and i + rotary_dim/2 rotate together (HF rotate_half)


class ModelAdapter:
    """Base adapter for decoder-only models with pre-norm blocks, RoPE and a gated MLP.

    Subclasses set the module paths (relative to the causal-LM model or to one decoder layer) and
    the ``model_types`` they cover, then register themselves with ``@register_adapter``.
    """

    name: ClassVar[str] = "base"
    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = "model.layers"
    embed_path: ClassVar[str] = "model.embed_tokens"
    final_norm_path: ClassVar[str] = "model.norm"
    lm_head_path: ClassVar[str] = "lm_head"
    attention_path: ClassVar[str] = "self_attn"
    mlp_path: ClassVar[str] = "mlp"
    input_norm_path: ClassVar[str] = "input_layernorm"
    post_attention_norm_path: ClassVar[str] = "post_attention_layernorm"
    linear_paths: ClassVar[dict[str, str]] = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    # Norms applied to q and k per head *before* RoPE (Qwen3); None when absent.
    q_norm_path: ClassVar[str | None] = None
    k_norm_path: ClassVar[str | None] = None

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- shapes -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def intermediate_size(self) -> int:
        return self.config.intermediate_size

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads

    def rope(self) -> RopeInfo:
        params = getattr(self.config, "rope_parameters", None) or {}
        theta = params.get("rope_theta", getattr(self.config, "rope_theta", 10000.0))
        factor = params.get("partial_rotary_factor", getattr(self.config, "partial_rotary_factor", 1.0))
        return RopeInfo(float(theta), self.head_dim, int(self.head_dim * factor), "half")

    # --- modules ------------------------------------------------------------------------------
    def layers(self) -> list[nn.Module]:
        return list(self.model.get_submodule(self.layers_path))

    def embeddings(self) -> nn.Embedding:
        return self.model.get_submodule(self.embed_path)

    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.final_norm_path)

    def lm_head(self) -> nn.Linear:
        return self.model.get_submodule(self.lm_head_path)

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.attention_path)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.mlp_path)

    def set_mlp(self, layer: nn.Module, module: nn.Module) -> None:
        layer.set_submodule(self.mlp_path, module)

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.input_norm_path)

    def post_attention_norm(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.post_attention_norm_path)

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        if self.q_norm_path is None:
            return None
        return layer.get_submodule(self.q_norm_path), layer.get_submodule(self.k_norm_path)

    def linear(self, layer: nn.Module, role: str) -> nn.Linear:
        return layer.get_submodule(self.linear_paths[role])

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        return {role: self.linear(layer, role) for role in LINEAR_ROLES}

    def set_linear(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        layer.set_submodule(self.linear_paths[role], module)

    # --- embeddings ---------------------------------------------------------------------------
    def embeddings_tied(self) -> bool:
        return self.lm_head().weight is self.embeddings().weight

    def untie_embeddings(self) -> None:
        """Give lm_head its own copy of the embedding matrix, so each can be transformed separately."""
        if not self.embeddings_tied():
            return
        head = self.lm_head()
        head.weight = nn.Parameter(self.embeddings().weight.detach().clone())
        self.config.tie_word_embeddings = False
        # transformers re-ties on save/load when these are set; clear them so untying persists.
        if hasattr(self.model, "_tied_weights_keys"):
            self.model._tied_weights_keys = None
        text_config = getattr(self.config, "get_text_config", lambda: self.config)()
        text_config.tie_word_embeddings = False

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.layers())} layers, hidden {self.hidden_size}, {self.num_heads} heads "
            f"({self.num_kv_heads} KV) x {self.head_dim}, MLP {self.intermediate_size}, "
            f"{'tied' if self.embeddings_tied() else 'untied'} embeddings"
        )


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
