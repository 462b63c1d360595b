"""SpinQuant: learned rotations stay orthogonal, are exact with quantization off, and reload exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file

import fptquant
from fptquant.math.cayley import CayleyRotation
from fptquant.math.hadamard import random_hadamard
from fptquant.models import get_adapter

SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
ARGS = {"steps": 6, "batch_size": 2, "lr": 0.5}


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def test_cayley_rotation_starts_at_init_and_stays_orthogonal():
    init = random_hadamard(16, torch.Generator().manual_seed(0))
    rot = CayleyRotation(init)
    torch.testing.assert_close(rot.matrix64(), init, rtol=0, atol=1e-12)
    with torch.no_grad():
        rot.weight.normal_()
    r = rot.matrix64()
    torch.testing.assert_close(r @ r.t(), torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-10)
    assert (r - init).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_learned_rotations_are_exact_without_quantization(arch, tokens):
    reference = make_tiny_model(arch, **SHAPE)
    trained = copy.deepcopy(reference)
    recipe = fptquant.Recipe(method="spinquant", bits="w4a4kv4", method_args=ARGS)
    fptquant.quantize(trained, recipe, torch.randint(0, 128, (8, 24)))
    learned = {k: v for k, v in trained.fptquant_method.saved_state(trained).items() if k.startswith("spinquant.")}
    init = random_hadamard(64, torch.Generator().manual_seed(0))
    assert (learned["spinquant.r1"] - init).abs().max() > 1e-4  # training really moved R1
    fresh = copy.deepcopy(reference)
    off = fptquant.methods.get_method("spinquant")(fptquant.Recipe(method="spinquant", bits="w16a16kv16"))
    off.restore(fresh, get_adapter(fresh), dict(learned))
    assert (logits(fresh, tokens) - logits(reference, tokens)).abs().max() <= 1e-4


def test_spinquant_gptq_save_and_reload_reproduce_logits(tmp_path, tokens):
    model = make_tiny_model("mistral", **SHAPE)
    recipe = fptquant.Recipe(method="spinquant", bits="w4a4kv4", weight_quantizer="gptq", method_args=ARGS, model="x")
    fptquant.quantize(model, recipe, torch.randint(0, 128, (8, 24)))
    fptquant.save_quantized(model, tmp_path / "q")
    fresh = make_tiny_model("mistral", **SHAPE)
    method = fptquant.methods.get_method("spinquant")(fptquant.Recipe.load(tmp_path / "q" / "recipe.json"))
    method.restore(fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors"))
    torch.testing.assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)
