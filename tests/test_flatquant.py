"""FlatQuant: exact transforms (the maintainers' debugging recipe), calibration, save/reload, divergence, resume."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import make_tiny_model

import fptquant
from fptquant.errors import ConfigError, TrainingError
from fptquant.fakequant.wrap import clip_parameters, quantize_model_structure, quantizers_bypassed
from fptquant.math.kronecker import InverseFactor, SVDFactor
from fptquant.methods.flatquant import FlatQuantLayers, FlatQuantOptions
from fptquant.methods.flatquant.transforms import attach_live, detach_live
from fptquant.models import get_adapter

FAST = {"epochs": 2, "batch_size": 2, "resume": False}


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every transform and clip parameter away from its init (as calibration would)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith(("sigma", "diag")):
            p.copy_(torch.empty(p.shape).uniform_(0.5, 2.0, generator=g))
        elif name.endswith("logit"):
            p.copy_(torch.empty(p.shape).uniform_(0.5, 3.0, generator=g))
        else:
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


def built_layers(model, bits="w4a4kv4", **args):
    adapter = get_adapter(model)
    recipe = fptquant.Recipe(method="flatquant", bits=bits, method_args=args)
    quantize_model_structure(model, adapter, recipe)
    layers = FlatQuantLayers(adapter, recipe, FlatQuantOptions.from_method_args(args))
    for i, layer in enumerate(adapter.layers()):
        layers.build(i, layer)
        randomize(layers.transforms[i], seed=i)
        with torch.no_grad():
            for p in clip_parameters(layer):
                p.uniform_(0.5, 3.0)
    return adapter, layers


@pytest.mark.parametrize("factor", ["svd", "inverse"])
def test_factor_inverse_transpose_matches_linalg_inv(factor):
    f = (SVDFactor if factor == "svd" else InverseFactor)(24, torch.Generator().manual_seed(0))
    randomize(f)
    reference = torch.linalg.inv(f.matrix64()).t()
    torch.testing.assert_close(f.matrix64(inverse_transpose=True), reference, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(f(inverse_transpose=True).double(), reference, rtol=0, atol=1e-6)
    assert (f.matrix64() - torch.eye(24, dtype=torch.float64)).abs().max() > 0.1


def bf16_tolerance(online_bf16: bool, reference: torch.Tensor) -> float:
    """Logit tolerance of a transformed model with quantization off: float32 rounding, or with the bfloat16
    online numerics (``P1ᵀX`` rounded to bfloat16 in every transform) 1% of the largest logit."""
    return 1e-2 * float(reference.abs().max()) if online_bf16 else 1e-4


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("factor,online_bf16", [("svd", False), ("inverse", False), ("svd", True)])
def test_live_transforms_with_quantization_off_keep_the_logits(arch, factor, online_bf16, tokens):
    """Exact to float32 rounding; with the bfloat16 online numerics to bf16 rounding (the randomized transforms'
    condition numbers amplify it to 0.2–0.4% of the largest logit here; the factor rounding itself is exactly
    inverted: tests/test_kronecker.py)."""
    reference = make_tiny_model(arch)
    model = copy.deepcopy(reference)
    adapter, layers = built_layers(model, factor=factor, online_bf16=online_bf16)
    for i, layer in enumerate(adapter.layers()):
        attach_live(adapter, layer, layers.transforms[i])
    with quantizers_bypassed(model):
        out = logits(model, tokens)
    expected = logits(reference, tokens)
    assert (out - expected).abs().max() <= bf16_tolerance(online_bf16, expected)
    with torch.no_grad():  # the transforms really act: the first q_proj sees a different input
        t = layers.transforms[0].attn_in
        x = torch.randn(3, adapter.hidden_size)
        assert (t(x) - x).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("online_bf16", [False, True])
def test_deploy_form_equals_live_form(arch, online_bf16, tokens):
    """Quantization off: equal to float32 rounding (the bf16 online numerics: to bfloat16 rounding, which
    float32 differences between the forms may tip); on (float64): equal, weights baked by RTN with the LWC."""
    reference = make_tiny_model(arch)
    expected = logits(reference, tokens)
    for quantized, dtype, tol in ((False, torch.float32, 1e-4), (True, torch.float64, 1e-8)):
        tol = tol if quantized or not online_bf16 else 2e-3 * float(expected.abs().max())
        live = copy.deepcopy(reference).to(dtype)
        adapter, layers = built_layers(live, online_bf16=online_bf16)
        deployed = copy.deepcopy(live)
        dep_adapter = get_adapter(deployed)
        for i, layer in enumerate(adapter.layers()):
            attach_live(adapter, layer, layers.transforms[i])
        dep_layers = FlatQuantLayers(dep_adapter, layers.recipe, layers.options)
        for i, layer in enumerate(dep_adapter.layers()):
            dep_layers.transforms[i] = copy.deepcopy(layers.transforms[i])
            dep_layers.deploy(i, layer)
        if quantized:
            method = fptquant.methods.get_method("flatquant")(layers.recipe)
            method._quantize_weights(deployed, dep_adapter, None)
            a, b = logits(live, tokens), logits(deployed, tokens)
            assert (a - logits(reference.to(dtype), tokens)).abs().max() > 1e-3  # quantization is on
        else:
            with quantizers_bypassed(live), quantizers_bypassed(deployed):
                a, b = logits(live, tokens), logits(deployed, tokens)
            assert (a - expected).abs().max() <= bf16_tolerance(online_bf16, expected)
        assert (a - b).abs().max() <= tol, (quantized, (a - b).abs().max())
        for layer in adapter.layers():
            detach_live(adapter, layer)
        with quantizers_bypassed(live):  # detaching restores the original weights exactly
            torch.testing.assert_close(logits(live, tokens), logits(reference.to(dtype), tokens), rtol=0, atol=0)


def test_calibration_learns_and_the_saved_result_reloads_exactly(tmp_path, tokens):
    model = make_tiny_model("qwen2")
    calibration = torch.randint(0, 128, (6, 32), generator=torch.Generator().manual_seed(3))
    recipe = fptquant.Recipe(method="flatquant", model="tiny", method_args={**FAST, "epochs": 4})
    fptquant.quantize(model, recipe, calibration)
    method = model.fptquant_method
    assert len(method.losses) == 2 and all(torch.isfinite(torch.tensor(method.losses)))
    moved = method.learned["flatquant.layers.0.t.attn_in.p1.u.weight"]
    assert moved.abs().max() > 1e-4  # training moved the Cayley parameters away from zero
    fptquant.save_quantized(model, tmp_path / "q")
    fresh = make_tiny_model("qwen2")
    from safetensors.torch import load_file

    restored = fptquant.methods.get_method("flatquant")(fptquant.Recipe.load(tmp_path / "q" / "recipe.json"))
    restored.restore(fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors"))
    torch.testing.assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)


def test_calibration_reduces_the_layer_error_against_its_initialisation():
    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
    errors = {}
    for epochs in (0, 6):
        model = make_tiny_model("llama")
        recipe = fptquant.Recipe(method="flatquant", bits="w4a4kv4", method_args={**FAST, "epochs": epochs})
        reference = make_tiny_model("llama")
        fptquant.quantize(model, recipe, calibration)
        errors[epochs] = (logits(model, calibration) - logits(reference, calibration)).pow(2).mean().item()
    assert errors[6] < errors[0]


def test_gptq_variant_runs_and_reloads(tmp_path, tokens):
    model = make_tiny_model("llama")
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(5))
    recipe = fptquant.Recipe(method="flatquant", weight_quantizer="gptq", model="tiny", method_args=FAST)
    fptquant.quantize(model, recipe, calibration)
    fptquant.save_quantized(model, tmp_path / "q")
    fresh = make_tiny_model("llama")
    from safetensors.torch import load_file

    restored = fptquant.methods.get_method("flatquant")(fptquant.Recipe.load(tmp_path / "q" / "recipe.json"))
    restored.restore(fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors"))
    torch.testing.assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)


def test_gptq_weights_lie_on_the_grid_training_learned(monkeypatch):
    """GPTQ must quantize each row onto the grid of its learned clip (LWC), applied once: clamping the
    weights to the clip first and then deriving the grid from the clip again shrinks it twice."""
    from fptquant.methods.flatquant import method as flatquant_method
    from fptquant.pipelines.weights import learned_row_qparams

    grids, real = {}, flatquant_method.FlatQuant._quantize_weights

    def recording(self, model, adapter, calibration):  # the grids as trained, before any weight quantization
        for name, linear in fptquant.fakequant.wrap.quant_linears(model):
            grids[name] = learned_row_qparams(linear)
        return real(self, model, adapter, calibration)

    monkeypatch.setattr(flatquant_method.FlatQuant, "_quantize_weights", recording)
    model = make_tiny_model("llama")
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(5))
    recipe = fptquant.Recipe(method="flatquant", weight_quantizer="gptq", method_args=FAST)
    fptquant.quantize(model, recipe, calibration)
    for name, linear in fptquant.fakequant.wrap.quant_linears(model):
        scale, zero = grids[name]
        codes = linear.weight.float() / scale.reshape(-1, 1) + zero.reshape(-1, 1)
        assert (codes - codes.round()).abs().max() < 1e-3, name
        assert codes.round().min() >= -8 and codes.round().max() <= 7, name


def test_nan_stops_calibration_naming_the_layer_and_a_rerun_resumes(tmp_path, caplog):
    calibration = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(6))
    args = {"epochs": 1, "batch_size": 2, "checkpoint_dir": str(tmp_path / "ckpt")}
    recipe = fptquant.Recipe(method="flatquant", method_args=args)
    model = make_tiny_model("llama")
    adapter = get_adapter(model)

    def nan_while_training(module, args, out):  # the layer, not a linear: quantize() replaces the linears
        if not torch.is_grad_enabled():
            return out
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    poison = adapter.layers()[1].register_forward_hook(nan_while_training)
    with pytest.raises(TrainingError, match="layer 1 at step 1"):
        fptquant.quantize(model, recipe, calibration)
    poison.remove()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("layer_*")) == ["layer_000.safetensors"]
    fresh = make_tiny_model("llama")
    with caplog.at_level("WARNING"):
        fptquant.quantize(fresh, recipe, calibration)
    assert "1 calibrated layer(s) found" in caplog.text
    assert len(fresh.fptquant_method.losses) == 1  # only layer 1 was trained again
    assert len(list((tmp_path / "ckpt").glob("layer_*"))) == 2


def test_options_are_validated():
    with pytest.raises(ConfigError, match="unknown flatquant option"):
        FlatQuantOptions.from_method_args({"epoch": 3})
    with pytest.raises(ConfigError, match="factor"):
        FlatQuantOptions.from_method_args({"factor": "qr"})
    with pytest.raises(ConfigError, match="true or false"):
        FlatQuantOptions.from_method_args({"clip": "maybe"})
    with pytest.raises(ConfigError, match="dynamic"):
        fptquant.methods.get_method("flatquant")(fptquant.Recipe(method="flatquant", act_static=True))


def test_compiled_step_is_one_graph_for_every_layer_and_matches_eager(tokens):
    """The CUDA path compiles the training step; every layer must reuse that one graph (no per-layer
    recompilation, which would cost more than it saves) and give the eager step's gradients."""
    from fptquant.pipelines.layerwise import _compiled_step_loss, _step_loss, layer_outputs
    from fptquant.pipelines.sequential import capture_first_layer_inputs

    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model = make_tiny_model("qwen2", num_hidden_layers=3)
    adapter, layers = built_layers(model)
    captured = capture_first_layer_inputs(model, adapter, tokens)
    x = torch.cat(captured.hidden).float()
    compiled = _compiled_step_loss("aot_eager")  # tracing and autograd as on the GPU, without codegen
    for i, layer in enumerate(adapter.layers()):
        y = layer_outputs(layer, x, captured.kwargs) * 1.01  # a loss with a real gradient
        layers.attach(i, layer)
        params = [p for g in layers.param_groups(i, layer) for p in g["params"]]
        compiled(layer, x, y, captured.kwargs).backward()
        got = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        with layers.step_context(i):
            _step_loss(layer, x, y, captured.kwargs).backward()
        for p, g in zip(params, got, strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7 * p.grad.abs().max().item())
            p.grad = None
        assert any(g.abs().max() > 0 for g in got)
        layers.detach(i, layer)
        layers.deploy(i, layer)
        x = layer_outputs(layer, x, captured.kwargs)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 1


def test_a_failing_compiler_falls_back_to_the_eager_step(monkeypatch, caplog, tokens):
    from fptquant.pipelines import layerwise

    def broken(backend):
        def fail(*args):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(layerwise, "_compiled_step_loss", broken)
    monkeypatch.setattr(layerwise._StepLoss, "compile_failed", False)
    model = make_tiny_model("llama")
    adapter, layers = built_layers(model)
    layer = adapter.layers()[0]
    captured = layerwise.capture_first_layer_inputs(model, adapter, tokens)
    x = torch.cat(captured.hidden).float()
    y = layerwise.layer_outputs(layer, x, captured.kwargs) * 1.01
    layers.attach(0, layer)
    step = layerwise._StepLoss(layers, 0, compiled=True, backend="inductor", autocast=contextlib.nullcontext)
    with caplog.at_level("WARNING"):
        loss = step(layer, x, y, captured.kwargs)  # forward and backward, eagerly
    torch.testing.assert_close(loss, layerwise._step_loss(layer, x, y, captured.kwargs).detach())
    assert "no compiler here" in caplog.text and layerwise._StepLoss.compile_failed
    grads = [p.grad for g in layers.param_groups(0, layer) for p in g["params"]]
    assert all(g is not None for g in grads) and any(g.abs().max() > 0 for g in grads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled (inductor) step is the GPU default")
def test_compiled_and_graphed_calibration_train_like_eager_on_the_gpu(tokens, caplog):
    caplog.set_level("WARNING")
    from fptquant.pipelines.layerwise import LayerwiseSettings, layer_outputs, train_layer
    from fptquant.pipelines.sequential import capture_first_layer_inputs

    class Bar:
        def set_postfix(self, **kw):
            pass

    results = {}
    for compiled, graphed in ((False, False), (True, False), (False, True), (True, True)):
        model = make_tiny_model("qwen2").cuda()
        adapter, layers = built_layers(model)
        captured = capture_first_layer_inputs(model, adapter, tokens.cuda())
        x = torch.cat(captured.hidden).float()
        layer = adapter.layers()[0]
        y = layer_outputs(layer, x, captured.kwargs)
        layers.attach(0, layer)
        s = LayerwiseSettings(epochs=3, batch_size=1, amp=False, compile=compiled, cuda_graph=graphed)
        results[compiled, graphed] = train_layer(layers, 0, layer, x, y, captured.kwargs, s, Bar())
    assert "capture failed" not in caplog.text  # a refused capture falls back to eager and would also match
    for key, loss in results.items():
        assert loss == pytest.approx(results[False, False], rel=1e-3), key


def test_closed_form_cosine_schedule_is_torchs():
    from fptquant.pipelines.layerwise import cosine_learning_rates

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=5e-6)
    expected = []
    for _ in range(40):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert cosine_learning_rates(5e-3, 5e-6, 40) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("transforms", "diag", "clip"), [(False, False, False), (False, True, False), (True, False, True)]
)
def test_ablation_switches_remove_their_parameters_and_still_calibrate(transforms, diag, clip):
    model = make_tiny_model("llama")
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))
    switches = {"transforms": transforms, "diag": diag, "clip": clip}
    recipe = fptquant.Recipe(method="flatquant", model="tiny", method_args={**FAST, **switches})
    fptquant.quantize(model, recipe, calibration)
    names = list(model.fptquant_method.learned)
    assert any(".p1." in n for n in names) == transforms
    assert any("diag" in n for n in names) == diag
    assert any("clip" in n for n in names) == clip
    assert all(torch.isfinite(logits(model, torch.randint(0, 128, (1, 16)))).flatten())
