"""Hadamard construction, and exactness of every QuaRot rotation with quantization off."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES, make_tiny_model

import fptquant
from fptquant.fakequant.wrap import quantize_model_structure
from fptquant.math.hadamard import block_fwht, fwht, hadamard, hadamard_exists, random_hadamard, random_orthogonal
from fptquant.math.online import HeadMixing, OnlineHadamard, QKHadamard
from fptquant.math.rotation import merge_input_transform
from fptquant.methods.quarot import apply_rotations
from fptquant.models import get_adapter
from fptquant.pipelines.residual import fold_norms, rotate_residual, transform_values


@pytest.mark.parametrize("n", [12, 20, 28, 36, 52, 64, 576, 1536, 2048, 4096])
def test_hadamard_is_orthogonal_with_entries_of_equal_magnitude(n):
    H = hadamard(n)
    torch.testing.assert_close(H @ H.t(), torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-6)
    assert torch.allclose(H.abs(), torch.full_like(H, n**-0.5))


@pytest.mark.parametrize("n", [11008, 14336])
def test_large_hadamard_rows_are_orthonormal(n):
    """Orders of LLaMA-2-7B (11008 = 344·32 via GF(7³)) and LLaMA-3-8B (14336 = 28·512); sampled rows."""
    H = hadamard(n)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:24]
    torch.testing.assert_close(H[rows] @ H.t(), torch.eye(n, dtype=torch.float64)[rows], rtol=0, atol=1e-6)
    assert torch.allclose(H[rows].abs(), torch.full((24, n), n**-0.5, dtype=torch.float64))


@pytest.mark.parametrize("n", [24, 64, 576, 1536, 2048])
def test_fast_transform_equals_dense_product(n):
    x = torch.randn(5, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ hadamard(n), rtol=0, atol=1e-10)


@pytest.mark.parametrize("n,block", [(1536, 512), (96, 32), (576, 64)])
def test_block_fast_transform_equals_block_diagonal_product(n, block):
    x = torch.randn(3, n, dtype=torch.float64)
    dense = torch.block_diag(*[hadamard(block)] * (n // block))
    torch.testing.assert_close(block_fwht(x, block), x @ dense, rtol=0, atol=1e-10)
    torch.testing.assert_close(OnlineHadamard(n, block).matrix(), dense, rtol=0, atol=0)


@pytest.mark.parametrize("n,block", [(1536, 512), (576, 576), (96, 12)])
def test_online_hadamard_dense_and_fast_paths_agree(n, block):
    """The GPU's one-matmul path and the fast transform: the same float32 map (also under bf16 autocast)."""
    x = torch.randn(2, 7, n, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16)
    online = OnlineHadamard(n, block)
    reference = x.double() @ online.matrix()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = online.apply_to(x, dense=True)
    fast = online.apply_to(x, dense=False)
    assert dense.dtype == fast.dtype == torch.bfloat16
    for y in (dense, fast):  # one bf16 rounding of the float32 result
        torch.testing.assert_close(y.double(), reference, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(
        online.apply_to(x.float(), True), online.apply_to(x.float(), False), rtol=1e-5, atol=1e-5
    )


def test_no_hadamard_of_order_9_and_random_fallbacks_are_orthogonal():
    assert not hadamard_exists(9) and not hadamard_exists(172) and hadamard_exists(344)
    g = torch.Generator().manual_seed(3)
    for q in (random_orthogonal(9, g), random_hadamard(64, g)):
        torch.testing.assert_close(q @ q.t(), torch.eye(len(q), dtype=torch.float64), rtol=0, atol=1e-12)
    a, b = random_hadamard(64, torch.Generator().manual_seed(1)), random_hadamard(64, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def unquantized(arch: str, **overrides):
    model = make_tiny_model(arch, **overrides)
    adapter = get_adapter(model)
    quantize_model_structure(model, adapter, fptquant.Recipe(bits="w16a16kv16"))
    return model, adapter


def r1(adapter):
    fold_norms(adapter)
    rotate_residual(adapter, random_hadamard(adapter.hidden_size, torch.Generator().manual_seed(0)))


def r2(adapter):
    for layer in adapter.layers():
        transform_values(adapter, layer, [hadamard(adapter.head_dim)] * adapter.num_kv_heads)


def head_mixing(adapter):
    for layer in adapter.layers():
        o = adapter.linear(layer, "o")
        o.input_transform = HeadMixing(random_orthogonal(adapter.num_heads), adapter.head_dim)
        merge_input_transform(o.weight, o.input_transform.matrix())


def r3(adapter):
    for layer in adapter.layers():
        adapter.attention(layer).fptquant_kv.qk_transform = QKHadamard()


def r4(adapter):
    for layer in adapter.layers():
        down = adapter.linear(layer, "down")
        down.input_transform = OnlineHadamard(adapter.intermediate_size, block=32)
        merge_input_transform(down.weight, down.input_transform.matrix())


ROTATIONS = {"fold+R1": r1, "R2": r2, "head mixing": head_mixing, "R3": r3, "R4": r4}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("name", [*ROTATIONS, "all"])
def test_rotation_preserves_logits(arch, name, tokens):
    model, adapter = unquantized(arch, intermediate_size=96)
    reference = logits(copy.deepcopy(model), tokens)
    for step in ROTATIONS.values() if name == "all" else [ROTATIONS[name]]:
        step(adapter)
    assert (logits(model, tokens) - reference).abs().max() <= 1e-4


def test_quarot_rotations_are_not_trivial(tokens):
    """The rotations really change what the quantizers see (otherwise the test above proves nothing)."""
    model, adapter = unquantized("llama", intermediate_size=96)
    before = adapter.linear(adapter.layers()[0], "down").weight.clone()
    apply_rotations(model, adapter, seed=0, rotate_qk=True)
    after = adapter.linear(adapter.layers()[0], "down").weight
    assert (after - before).abs().max() > 1e-2


@pytest.mark.parametrize("weights", ["rtn", "gptq"])
def test_quarot_save_and_reload_reproduce_logits(weights, tmp_path, tokens):
    model = make_tiny_model("qwen2")
    recipe = fptquant.Recipe(method="quarot", bits="w4a4kv4", weight_quantizer=weights, model="x")
    fptquant.quantize(model, recipe, torch.randint(0, 128, (4, 24)))
    fptquant.save_quantized(model, tmp_path / "q")
    from safetensors.torch import load_file

    fresh = make_tiny_model("qwen2")
    saved = fptquant.Recipe.load(tmp_path / "q" / "recipe.json")
    assert saved.act_clip_ratio == 0.9 and saved.kv_clip_ratio == 0.95 and saved.weight_clip_search
    method = fptquant.methods.get_method("quarot")(saved)
    method.restore(fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors"))
    torch.testing.assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)


def test_batched_cayley_matrices_and_gradients_equal_one_solve_each():
    """``cached_all(batched=True)`` (one solve per size) gives each rotation's own matrix and gradient."""
    from fptquant.math.cayley import CayleyRotation, cached_all
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(0)
    rotations = [CayleyRotation(random_orthogonal(n, g)) for n in (24, 32, 24, 48, 32)]
    with torch.no_grad():
        for r in rotations:
            r.weight.add_(0.2 * torch.randn(r.weight.shape, generator=g, dtype=r.weight.dtype))
    targets = [torch.randn(r.base.shape, generator=g, dtype=r.base.dtype) for r in rotations]
    results = []
    for batched in (False, True):
        for r in rotations:
            r.weight.grad = None
        with cached_all(rotations, batched=batched):
            matrices = [r() for r in rotations]
            sum((m * t).sum() for m, t in zip(matrices, targets, strict=True)).backward()
        results.append(([m.detach() for m in matrices], [r.weight.grad.clone() for r in rotations]))
    for one, many in zip(*[m for m, _ in results], strict=True):
        torch.testing.assert_close(many, one, rtol=0, atol=1e-12)
        torch.testing.assert_close(many @ many.t(), torch.eye(one.shape[0], dtype=one.dtype), rtol=0, atol=1e-12)
    for one, many in zip(*[grads for _, grads in results], strict=True):
        torch.testing.assert_close(many, one, rtol=0, atol=1e-10)
