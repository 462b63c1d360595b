"""Adapters on tiny Llama/Mistral/Qwen2/Qwen3 models, and the fake-quantized model built from them."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES, make_tiny_model
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import fptquant
from fptquant.errors import ConfigError, UnsupportedArchitectureError
from fptquant.fakequant import attention as kv_attention
from fptquant.fakequant.linear import QuantLinear
from fptquant.math.quantization import Axis, dynamic_fake_quantize
from fptquant.models import LINEAR_ROLES, get_adapter


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def test_adapter_finds_every_module(tiny_model):
    a = get_adapter(tiny_model)
    layers = a.layers()
    assert len(layers) == tiny_model.config.num_hidden_layers
    assert (a.num_heads, a.num_kv_heads, a.head_dim, a.hidden_size) == (3, 1, 24, 72)
    expected_out = {"q": 72, "k": 24, "v": 24, "o": 72, "gate": 100, "up": 100, "down": 72}
    for layer in layers:
        for role, linear in a.linears(layer).items():
            assert isinstance(linear, nn.Linear) and linear.out_features == expected_out[role]
        assert a.input_norm(layer).weight.shape == (72,)
        assert a.post_attention_norm(layer).weight.shape == (72,)
        assert a.attention(layer) is layer.self_attn and a.mlp(layer) is layer.mlp
    assert a.embeddings().weight.shape == (128, 72) and a.lm_head().weight.shape == (128, 72)
    assert a.final_norm().weight.shape == (72,)
    has_bias = a.linear(layers[0], "q").bias is not None
    assert has_bias == (a.name == "qwen2")
    assert (a.qk_norms(layers[0]) is not None) == (a.name == "qwen3")
    rope = a.rope()
    assert rope.head_dim == 24 and rope.rotary_dim == 24 and rope.theta > 0


def test_untie_embeddings_keeps_function_and_separates_weights(tokens):
    model = make_tiny_model("llama")
    a = get_adapter(model)
    assert a.embeddings_tied()
    before = logits(model, tokens)
    a.untie_embeddings()
    assert not a.embeddings_tied() and not model.config.tie_word_embeddings
    torch.testing.assert_close(logits(model, tokens), before, rtol=0, atol=0)
    with torch.no_grad():
        a.lm_head().weight.mul_(2)
    assert not torch.equal(a.lm_head().weight, a.embeddings().weight)


def test_unknown_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama.*qwen3"):
        get_adapter(model)


def test_16_bit_fake_quant_reproduces_logits(tiny_model, tokens):
    reference = copy.deepcopy(tiny_model)
    fptquant.quantize(tiny_model, fptquant.Recipe(bits="w16a16kv16"))
    assert tiny_model.config._attn_implementation == "fptquant"
    a = get_adapter(tiny_model)
    assert all(isinstance(a.linear(layer, r), QuantLinear) for layer in a.layers() for r in LINEAR_ROLES)
    assert not isinstance(a.lm_head(), QuantLinear)
    diff = (logits(tiny_model, tokens) - logits(reference, tokens)).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("bits", ["w4a16", "w16a4", "w16a16kv2"])
def test_each_quantizer_changes_the_output(bits, tokens):
    model = make_tiny_model("llama")
    reference = logits(model, tokens)
    fptquant.quantize(model, fptquant.Recipe(bits=bits))
    assert (logits(model, tokens) - reference).abs().max() > 1e-3


def test_attention_quantizes_post_rope_keys_and_values(monkeypatch, tokens):
    """What reaches the attention kernel is exactly Q(RoPE(k)) and Q(v), per (token, head), asymmetric."""
    model = make_tiny_model("qwen2")
    fptquant.quantize(model, fptquant.Recipe(bits="w16a16kv2"))
    seen = {}
    base = kv_attention.AttentionInterface._global_mapping[kv_attention.BASE_IMPLEMENTATION]

    def spy(module, q, k, v, mask, **kw):
        seen.setdefault(module.layer_idx, (k, v))
        return base(module, q, k, v, mask, **kw)

    monkeypatch.setitem(kv_attention.AttentionInterface._global_mapping, kv_attention.BASE_IMPLEMENTATION, spy)
    hidden = {}
    layer0 = model.model.layers[0]
    handle = layer0.self_attn.register_forward_pre_hook(
        lambda m, a, kw: hidden.update(x=kw["hidden_states"], pe=kw["position_embeddings"]), with_kwargs=True
    )
    logits(model, tokens)
    handle.remove()
    attn = layer0.self_attn
    b, s, _ = hidden["x"].shape
    k = attn.k_proj(hidden["x"]).view(b, s, -1, 24).transpose(1, 2)
    v = attn.v_proj(hidden["x"]).view(b, s, -1, 24).transpose(1, 2)
    cos, sin = hidden["pe"]
    _, k_rot = apply_rotary_pos_emb(k, k, cos, sin)
    k_seen, v_seen = seen[0]
    want_k = dynamic_fake_quantize(k_rot, 2, False, Axis.ROW)  # last dim is d_h: one scale per (token, head)
    want_v = dynamic_fake_quantize(v, 2, False, Axis.ROW)
    torch.testing.assert_close(k_seen, want_k, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_seen, want_v, rtol=0, atol=1e-6)
    assert not torch.allclose(k_seen, dynamic_fake_quantize(k, 2, False, Axis.ROW), atol=1e-3)  # not pre-RoPE
    assert max(len(torch.unique(row)) for row in k_seen.reshape(-1, 24)) <= 4


def test_generation_with_cache_matches_full_forward():
    """Quantizing the whole K/V at each decode step equals quantizing at cache-write time."""
    model = make_tiny_model("llama")
    fptquant.quantize(model, fptquant.Recipe(bits="w4a4kv4"))
    prompt = torch.randint(0, 128, (1, 7))
    out = model.generate(prompt, max_new_tokens=5, do_sample=False)
    full = logits(model, out[:, :-1])
    assert torch.equal(full[0, 6:].argmax(-1), out[0, 7:])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("static", [False, True])
def test_save_and_reload_reproduce_logits(arch, static, tmp_path, tokens):
    model = make_tiny_model(arch)
    recipe = fptquant.Recipe(bits="w4a8kv4", act_static=static, model="unused", calib_samples=4, calib_seqlen=16)
    calibration = torch.randint(0, 128, (4, 16))
    fptquant.quantize(model, recipe, calibration)
    fptquant.save_quantized(model, tmp_path / "q")
    fresh = make_tiny_model(arch)
    method = fptquant.methods.get_method(recipe.method)(recipe)
    from safetensors.torch import load_file

    method.restore(fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors"))
    torch.testing.assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)
    with pytest.raises(fptquant.FptquantError, match="not empty"):
        fptquant.save_quantized(model, tmp_path / "q")
    fptquant.save_quantized(model, tmp_path / "q", overwrite=True)


def test_static_activations_need_calibration_data():
    model = make_tiny_model("llama")
    with pytest.raises(fptquant.FptquantError, match="tokenizer|calibration"):
        fptquant.quantize(model, fptquant.Recipe(bits="w4a4", act_static=True))


def test_unknown_method_is_rejected():
    with pytest.raises(ConfigError, match="unknown method 'nope'.*rtn"):
        fptquant.quantize(make_tiny_model("llama"), fptquant.Recipe(method="nope"))
