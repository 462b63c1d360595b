"""The real INT4 KV cache in generation: prompt logits equal the fake-quant model's exactly, decode steps
match it to float tolerance (the INT4 attention kernel reads the codes directly), greedy generation too."""

from __future__ import annotations

import pytest
import torch
from test_deploy import quantized

from fptquant.deploy.kv_cache import Int4KVLayer, int4_kv_cache
from fptquant.errors import ConfigError


def stepwise_logits(model, tokens, cache, prompt: int):
    """Logits of a prompt of ``prompt`` tokens, then of each later token fed one at a time."""
    with torch.no_grad():
        out = [model(tokens[:, :prompt], past_key_values=cache, use_cache=True).logits]
        for t in range(prompt, tokens.shape[1]):
            out.append(model(tokens[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("arch,method", [("llama", "rtn"), ("qwen2", "quarot"), ("llama", "flatquant")])
def test_int4_cache_reproduces_the_fake_quant_model(arch, method, tokens, monkeypatch):
    import fptquant.deploy.kv_cache as kv_cache

    kernel_calls = []
    real_kernel = kv_cache.int4_kv_decode_attention
    monkeypatch.setattr(
        kv_cache, "int4_kv_decode_attention", lambda *a, **k: kernel_calls.append(1) or real_kernel(*a, **k)
    )
    model = quantized(arch, method)  # fake-quant model: K/V quantized per (token, head), 4-bit
    with torch.no_grad():
        reference = model(tokens, use_cache=False).logits
        prompt_reference = model(tokens[:, :11], use_cache=False).logits
    cache = int4_kv_cache(model, capacity=tokens.shape[1] + 4)
    got = stepwise_logits(model, tokens, cache, prompt=11)
    assert torch.equal(got[:, :11], prompt_reference)  # prefill attends to the dequantized cache: exact
    assert (got - reference).abs().max() <= 1e-4 * reference.abs().max()  # decode: the INT4 kernel
    assert len(kernel_calls) == model.config.num_hidden_layers * (tokens.shape[1] - 11)
    layer = cache.layers[0]
    assert isinstance(layer, Int4KVLayer) and layer.get_seq_length() == tokens.shape[1]
    k, v = layer.packed
    assert k.codes.dtype == torch.uint8 and k.codes.shape[-1] == model.config.head_dim // 2


def test_greedy_generation_with_the_int4_cache_matches_the_fake_quant_model(tokens):
    model = quantized("llama", "rtn")
    prompt = tokens[:1, :8]
    with torch.no_grad():
        fake = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        real = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0,
                              past_key_values=int4_kv_cache(model, capacity=20))  # fmt: skip
    assert torch.equal(real, fake)


def test_int4_cache_refuses_what_it_cannot_hold(tokens):
    with pytest.raises(ConfigError, match="4-bit dynamic quantizers"):
        int4_kv_cache(quantized("llama", "rtn", bits="w4a4kv8"), capacity=32)
    with pytest.raises(ConfigError, match="no fptquant KV quantizers"):
        int4_kv_cache(torch.nn.Linear(2, 2), capacity=32)
    model = quantized("llama", "rtn")
    cache = int4_kv_cache(model, capacity=8)
    with pytest.raises(ConfigError, match="holds 8 positions"), torch.no_grad():
        model(tokens[:, :12], past_key_values=cache, use_cache=True)


def test_batched_generation_with_padding_uses_the_cache_and_matches(monkeypatch):
    from conftest import make_tokenizer

    from fptquant.deploy import generate as generation

    model, tok = quantized("llama", "rtn"), make_tokenizer()
    prompts, options = ["a b c d e f", "b c"], generation.GenerationOptions(max_new_tokens=6, chat=False)
    real = generation.generate(model, tok, prompts, options)
    used = []
    monkeypatch.setattr(generation, "kv_cache_for", lambda m, n: used.append(n))  # transformers' cache instead
    assert generation.generate(model, tok, prompts, options) == real and used


def test_device_position_counter_follows_the_host_length(tokens):
    model = quantized("llama", "rtn")
    cache = int4_kv_cache(model, capacity=tokens.shape[1])
    stepwise_logits(model, tokens, cache, prompt=7)
    for layer in cache.layers:
        assert int(layer.cumulative_length) == layer.length == tokens.shape[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_matches_eager_decode(tokens):
    """A captured one-token step (what bench_model times) replays the eager steps' logits."""
    from fptquant.deploy.graphed_decode import GraphedDecoder

    model = quantized("llama", "rtn").cuda()
    ids = tokens[:, :8].cuda()
    eager = GraphedDecoder(model, int4_kv_cache(model, capacity=32, unpadded=True), ids)
    eager_logits = []
    for _ in range(6):
        eager()
        eager_logits.append(eager.logits.clone())
    graphed = GraphedDecoder(model, int4_kv_cache(model, capacity=32, unpadded=True), ids)
    graphed.capture(warmup=1)  # the warm-up is the first step
    graphed_logits = [graphed.logits.clone()]
    for _ in range(5):
        graphed()
        graphed_logits.append(graphed.logits.clone())
    torch.testing.assert_close(torch.cat(graphed_logits), torch.cat(eager_logits), rtol=1e-4, atol=1e-4)


def test_graphed_decoder_steps_eagerly_like_generate(tokens):
    """Its step (explicit device positions, INT4 cache written at a device counter) is greedy decoding."""
    from fptquant.deploy.graphed_decode import GraphedDecoder

    model = quantized("llama", "rtn")
    ids = tokens[:, :8]
    decoder = GraphedDecoder(model, int4_kv_cache(model, capacity=20, unpadded=True), ids)
    steps = [decoder.tokens.clone()] + [decoder().clone() for _ in range(5)]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                  past_key_values=int4_kv_cache(model, capacity=20))  # fmt: skip
    assert torch.equal(torch.cat(steps, dim=1), expected[:, 8:])


def test_new_token_ids_with_the_int4_cache_or_the_fake_attention_path(monkeypatch):
    """deploy_check's two packed paths: the INT4 cache runs the decode kernel, ``int4_cache=False`` never
    does (transformers' cache, fake-quantized K/V); on a tiny model both give the same greedy tokens."""
    from conftest import make_tokenizer

    import fptquant.deploy.kv_cache as kv_cache
    from fptquant.deploy.generate import GenerationOptions, new_token_ids

    calls = []
    real_kernel = kv_cache.int4_kv_decode_attention
    monkeypatch.setattr(kv_cache, "int4_kv_decode_attention", lambda *a, **k: calls.append(1) or real_kernel(*a, **k))
    model, tok = quantized("llama", "rtn"), make_tokenizer()
    options = GenerationOptions(max_new_tokens=6, chat=False)
    with_cache = new_token_ids(model, tok, ["hello there"], options)
    assert calls
    calls.clear()
    dense = new_token_ids(model, tok, ["hello there"], options, int4_cache=False)
    assert not calls and len(dense[0]) == 6 and dense == with_cache
