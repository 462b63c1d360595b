"""FPTQuant: exact transforms (each alone and all together), RoPE commutation, S_n, merge, training, reload."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import fptquant
from fptquant.errors import ConfigError, TrainingError
from fptquant.math.prerope import pair_transform, rope_rotation
from fptquant.math.quantizer import Quantizer, QuantSpec
from fptquant.methods.fptquant import FPTQuant
from fptquant.methods.fptquant.live import attach, detach, merge
from fptquant.methods.fptquant.options import FPTQuantOptions
from fptquant.models import get_adapter
from fptquant.pipelines.distill import distillation_loss
from fptquant.pipelines.static_ranges import init_static_ranges_lp

GQA = dict(num_attention_heads=6, num_key_value_heads=2, head_dim=12)  # 3 query heads per KV head, odd sizes
ALL_OFF = dict(
    residual=False, prerope=False, values=False, up_scale=False, residual_scaling=False, down_rotation="none"
)
FAST = dict(local_steps=3, e2e_steps=2, batch_size=2, range_windows=2, resume=False)


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def built(model, bits="w16a16", act_static=False, **args):
    """Transforms built on ``model`` with random, non-trivial parameters (not attached yet)."""
    method = FPTQuant(fptquant.Recipe(method="fptquant", bits=bits, act_static=act_static, method_args=args))
    adapter = get_adapter(model)
    transforms = method._build(model, adapter, method.recipe)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in transforms.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g).to(p))  # CPU noise: the same on any device
    return adapter, transforms


@pytest.mark.parametrize("position", [0, 1, 17, 2047])
def test_prerope_transform_commutes_with_rope_and_keeps_scores(position):
    g = torch.Generator().manual_seed(position)
    d, pairs = 64, 32
    scale, angle = (
        torch.rand(pairs, generator=g, dtype=torch.float64) + 0.5,
        torch.randn(pairs, generator=g, dtype=torch.float64),
    )
    t_k, t_q = pair_transform(scale, angle, d), pair_transform(scale, angle, d, inverse_transpose=True)
    rope = rope_rotation(torch.tensor([position]), 1e5, d, d)[0]
    torch.testing.assert_close(rope @ t_k, t_k @ rope, rtol=0, atol=1e-12)
    torch.testing.assert_close(t_q, torch.linalg.inv(t_k).t(), rtol=0, atol=1e-12)
    # HF's own RoPE (rotate-half pairing), then the score between a query at `position` and a key at 5
    q, k = (
        torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64),
        torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64),
    )

    def hf_rope(x, pos):
        inv = 1.0 / 1e5 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        emb = torch.cat([pos * inv, pos * inv])[None, None, :]
        return apply_rotary_pos_emb(x, x, emb.cos(), emb.sin(), unsqueeze_dim=1)[0]

    plain = (hf_rope(q, position) * hf_rope(k, 5)).sum()
    moved = (hf_rope(q @ t_q.t(), position) * hf_rope(k @ t_k.t(), 5)).sum()
    torch.testing.assert_close(moved, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hf_rope(k @ t_k.t(), position), hf_rope(k, position) @ t_k.t(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "only", ["residual", "prerope", "values", "up_scale", "residual_scaling", "down_rotation", "o_rotation", "all"]
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_transform_alone_and_all_together_is_exact(arch, only, tokens):
    model = make_tiny_model(arch, **GQA)
    reference = logits(model, tokens)
    value = {"down_rotation": "block", "o_rotation": "full"}.get(only, True)
    args = {"o_rotation": "full"} if only == "all" else {**ALL_OFF, only: value}
    if only == "all":
        args["residual_scaling"] = True
    adapter, transforms = built(model, **args)
    attach(adapter, transforms)
    live = logits(model, tokens)
    scale = reference.abs().max()
    torch.testing.assert_close(live, reference, rtol=0, atol=1e-4 * scale)
    detach(adapter)
    merge(adapter, transforms)  # the deploy model equals the live one (and the original)
    torch.testing.assert_close(logits(model, tokens), live, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("where", [True, "all", "down"])
def test_residual_scaling_on_off_equal_and_detach_restores_bits(where, tokens):
    model = make_tiny_model("llama", **GQA)
    on, off = copy.deepcopy(model), copy.deepcopy(model)
    built(on, **{**ALL_OFF, "residual_scaling": where})
    built(off, **ALL_OFF)
    wrapped = {block.linear_name for layer in on.model.layers for block in layer.fptquant_residual_scaling}
    assert wrapped == ({"down"} if where == "down" else {"o", "down"})
    torch.testing.assert_close(logits(on, tokens), logits(off, tokens), rtol=0, atol=1e-5)
    adapter, transforms = built(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attach(adapter, transforms)
    detach(adapter)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_merged_equals_live_with_quantization_on(tokens):
    """Float64 model, quantizers on: the merged deploy model reproduces the live transformed one."""
    model = make_tiny_model("llama", **GQA).double()
    adapter, transforms = built(model, bits="w16a4kv4", o_rotation="full")
    transforms.double()
    attach(adapter, transforms)
    live = logits(model, tokens)
    detach(adapter)
    merge(adapter, transforms)
    torch.testing.assert_close(logits(model, tokens), live, rtol=0, atol=1e-8)


def test_residual_scaling_choices():
    options = FPTQuantOptions.from_method_args
    assert options({"residual_scaling": True}).residual_scaling == "all"
    assert options({"residual_scaling": False}).residual_scaling == "none"
    assert options({}).residual_scaling == "none"
    with pytest.raises(ConfigError, match="residual_scaling must be one of"):
        options({"residual_scaling": "up"})


def test_prerope_refused_with_qk_norm_and_off_by_default():
    model = make_tiny_model("qwen3", **GQA)
    with pytest.raises(ConfigError, match="pre-RoPE"):
        built(model, prerope=True)
    _, transforms = built(make_tiny_model("qwen3", **GQA))
    assert transforms.layers[0].key_angle is None


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("weights", ["rtn", "gptq", "gptq-learned", "rtn-options"])
def test_quantize_save_reload_gives_identical_logits(static, weights, tmp_path, tokens):
    """``rtn-options``: with the non-paper options (online o_proj Hadamard, log-space static scales)."""
    model = make_tiny_model("llama", **GQA)
    reference = logits(model, tokens)
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    extra = {"gptq-learned": {"gptq_scales": "learned"}, "rtn-options": {"o_rotation": "full", "scale_space": "log"}}
    args = {**FAST, **extra.get(weights, {})}
    recipe = fptquant.Recipe(
        method="fptquant", bits="w4a4kv4", act_static=static, weight_quantizer=weights.split("-")[0], method_args=args
    )
    fptquant.quantize(model, recipe, calibration_data=calibration)
    quantized = logits(model, tokens)
    assert 0 < (quantized - reference).abs().max() < reference.abs().max()
    fptquant.save_quantized(model, tmp_path / "q")
    fresh = make_tiny_model("llama", **GQA)
    from safetensors.torch import load_file

    from fptquant.methods import get_method

    saved = fptquant.Recipe.load(tmp_path / "q" / "recipe.json")
    get_method("fptquant")(saved).restore(
        fresh, get_adapter(fresh), load_file(tmp_path / "q" / "fptquant_state.safetensors")
    )
    torch.testing.assert_close(logits(fresh, tokens), quantized, rtol=0, atol=0)


def test_gptq_on_learned_clips_trains_at_w4_and_keeps_each_rows_learned_grid(monkeypatch):
    """``gptq_scales=learned``: the transforms train with learned-clip RTN weights, then GPTQ quantizes each
    row on the grid those clips give (every weight a multiple of its row's learned scale)."""
    from fptquant.pipelines import weights as weight_pipeline

    grids = {}
    real = weight_pipeline.learned_row_qparams

    def recording(linear):
        grids[id(linear)] = real(linear)
        return grids[id(linear)]

    monkeypatch.setattr(weight_pipeline, "learned_row_qparams", recording)
    model = make_tiny_model("llama", **GQA)
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, weight_quantizer="gptq",
                             method_args={**FAST, "gptq_scales": "learned"})  # fmt: skip
    method = fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method
    assert method._training_recipe().bit_spec.weights == 4
    linears = [m for m in model.modules() if hasattr(m, "weight_quantizer") and m.weight.dim() == 2]
    assert linears and all(grids.get(id(m)) is not None for m in linears)
    for m in linears:
        scale, _ = grids[id(m)]
        steps = m.weight.double() / scale.double()
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 8


def test_end_to_end_training_brings_the_student_closer_to_the_teacher():
    """KL to the full-precision model on the calibration windows, with and without the e2e stage (the per-step
    losses of a tiny model are too noisy a signal: each step sees another random batch)."""
    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    divergence = []
    for steps in (0, 16):
        model = make_tiny_model("llama", initializer_range=0.05, **GQA)  # peaked outputs: quantization matters
        teacher = copy.deepcopy(model)
        args = {**FAST, "e2e_steps": steps}
        recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
        student = fptquant.quantize(model, recipe, calibration_data=calibration)
        with torch.no_grad():
            p = torch.log_softmax(teacher(calibration).logits.float(), -1)
            q = torch.log_softmax(student(calibration).logits.float(), -1)
        divergence.append(torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean").item())
        assert len(student.fptquant_method.stats.get("e2e_losses", [])) == steps
    assert divergence[1] < 0.98 * divergence[0], divergence


def test_divergence_stops_with_clear_error_and_resume_from_checkpoint(tmp_path, monkeypatch):
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    args = {
        **FAST,
        "e2e_steps": 4,
        "micro_batch": 2,
        "checkpoint_every": 1,
        "resume": True,
        "checkpoint_dir": str(tmp_path / "ck"),
    }
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", method_args=args)
    import fptquant.pipelines.distill as distill

    real = distill.distillation_loss
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(distill, "distillation_loss", failing)
    with pytest.raises(TrainingError, match="step 3.*last good checkpoint"):
        fptquant.quantize(make_tiny_model("llama", **GQA), recipe, calibration_data=calibration)
    assert (tmp_path / "ck" / "e2e.pt").is_file() and (tmp_path / "ck" / "local.safetensors").is_file()
    monkeypatch.setattr(distill, "distillation_loss", real)
    method = fptquant.quantize(make_tiny_model("llama", **GQA), recipe, calibration_data=calibration).fptquant_method
    assert "local_losses" not in method.stats  # loaded, not retrained
    assert len(method.stats["e2e_losses"]) == 4  # 2 from the checkpoint, 2 new


def test_exploding_value_condition_number_stops_training():
    calibration = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    args = {**FAST, "max_condition": 1.0 + 1e-9, "local_steps": 5}
    with pytest.raises(TrainingError, match="condition number"):
        fptquant.quantize(
            make_tiny_model("llama", **GQA),
            fptquant.Recipe(method="fptquant", bits="w4a4kv4", method_args=args),
            calibration_data=calibration,
        )


def test_local_stage_lowers_the_weight_norm_and_stops_on_nan_naming_the_step():
    from fptquant.methods.fptquant.local import SYNC_EVERY, optimize_local

    model = make_tiny_model("llama", **GQA)
    adapter, transforms = built(model)
    attach(adapter, transforms)
    try:
        losses = optimize_local(adapter, transforms, SYNC_EVERY + 5, lr=1e-2)
        assert len(losses) == SYNC_EVERY + 5 and losses[-1] < losses[0]
        poison = transforms.layers[1].up_log_scale
        with torch.no_grad():
            poison[3] = float("nan")
        with pytest.raises(TrainingError, match="local stage diverged at step 1: the loss became nan"):
            optimize_local(adapter, transforms, 3, lr=1e-2)
    finally:
        detach(adapter)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_local_stage_matches_eager(caplog):
    caplog.set_level("WARNING")
    from fptquant.methods.fptquant.local import optimize_local

    losses = {}
    for graph in (False, True):
        model = make_tiny_model("llama", **GQA).cuda()
        adapter, transforms = built(model)
        attach(adapter, transforms)
        try:
            losses[graph] = optimize_local(adapter, transforms, 25, lr=1e-2, cuda_graph=graph)
        finally:
            detach(adapter)
    assert "capture failed" not in caplog.text  # a refused capture falls back to eager and would also match
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-7)


def test_lp_range_init_beats_minmax_on_heavy_tails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4096, generator=g)
    x[0, 0] = 40.0  # one outlier: min-max wastes the grid, the L2-optimal range clips it

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Quantizer(QuantSpec(bits=4, dynamic=False, axis="tensor"), 4096)

        def forward(self, input_ids, use_cache=False):
            return self.q(input_ids)

    m = Holder()
    init_static_ranges_lp(m, x[None])
    lp_err = (m.q(x) - x).pow(2).sum()
    m.q.set_range(x.min(), x.max())
    minmax_err = (m.q(x) - x).pow(2).sum()
    assert lp_err < 0.5 * minmax_err


def test_distillation_losses():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    assert distillation_loss(a, a, "jsd") < 1e-7 and distillation_loss(a, a, "kl") < 1e-7
    torch.testing.assert_close(distillation_loss(a, b, "jsd"), distillation_loss(b, a, "jsd"))
    assert 0 < distillation_loss(a, b, "jsd") <= math.log(2)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="unknown fptquant option"):
        FPTQuant(fptquant.Recipe(method="fptquant", method_args={"lr_typo": 1}))
    with pytest.raises(ConfigError, match="loss"):
        FPTQuant(fptquant.Recipe(method="fptquant", method_args={"loss": "mse"}))


def test_rtn_weights_use_a_clip_per_row_learned_end_to_end():
    from fptquant.math.grid import recover_symmetric_grid

    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))

    def run(clip: str):
        model = make_tiny_model("llama", **GQA)
        args = {**FAST, "e2e_steps": 6, "clip_lr": 5e-2, "weight_clip": clip}
        recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
        return model, fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method

    model, method = run("learned")
    logits_ = method.weight_clip
    assert logits_ and all(torch.isfinite(v).all() for v in logits_.values())
    ratios = torch.sigmoid(torch.cat([v.flatten() for v in logits_.values()]))
    assert ratios.min() < 0.95 and ratios.max() <= 1  # rows really clipped, as the MSE search and training chose
    assert len(set(ratios.tolist())) > 10  # one clip per row, not one shared value
    down = model.model.layers[0].mlp.down_proj.weight
    recover_symmetric_grid(down)  # the exported weights sit on a 4-bit grid per row
    _, plain = run("minmax")
    assert plain.weight_clip == {}


def test_dynamic_activation_and_kv_clips_are_learned():
    from fptquant.fakequant.wrap import clip_parameters

    model = make_tiny_model("llama", **GQA)
    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    args = {**FAST, "e2e_steps": 6, "clip_lr": 5e-2}
    fptquant.quantize(model, fptquant.Recipe(method="fptquant", bits="w4a4kv4", method_args=args), calibration)
    layer = model.model.layers[0]
    act = layer.self_attn.q_proj.input_quantizer.clip_max_logit
    key = layer.self_attn.fptquant_kv.k_quantizer.clip_max_logit
    assert act.numel() == 1 and key.numel() == 1  # one pair per quantizer (LAC)
    assert (act - 4.0).abs().item() > 1e-3 and (key - 4.0).abs().item() > 1e-3  # trained, not left at init
    assert all(p.shape[0] == 1 for p in clip_parameters(model))  # the weights' per-row clips were applied and dropped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize(
    "stage,args",
    [("e2e_losses", {"e2e_steps": 6}), ("blockwise_losses", {"e2e_steps": 0, "blockwise_epochs": 3})],
    ids=["end_to_end", "blockwise"],
)
def test_cuda_graph_training_matches_eager_training(stage, args, caplog):
    """The graphed steps (the GPU default) must train like eager ones, step by step: the end-to-end stage,
    and the block-wise stage (FlatQuant's layer-wise loop)."""
    caplog.set_level("WARNING")
    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0)).cuda()
    losses = {}
    for graph in (False, True):
        model = make_tiny_model("llama", **GQA).cuda()
        method_args = {**FAST, **args, "cuda_graph": graph, "amp": False}
        recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=method_args)
        method = fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method
        losses[graph] = method.stats[stage]
    assert "capture failed" not in caplog.text  # a refused capture falls back to eager and would also match
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-3, atol=1e-6)


def test_blockwise_stage_lowers_each_layers_error_and_resumes(tmp_path):
    """The optional block-wise stage trains each layer's own parameters (not T_r) against its
    full-precision output; its result is checkpointed and loaded by a rerun."""
    calibration = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    args = {**FAST, "e2e_steps": 0, "blockwise_epochs": 3, "blockwise_lr": 1e-2, "resume": True,
            "checkpoint_dir": str(tmp_path / "ck")}  # fmt: skip
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    first = fptquant.quantize(make_tiny_model("llama", **GQA), recipe, calibration).fptquant_method
    losses = first.stats["blockwise_losses"]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    from safetensors.torch import load_file

    after_local = load_file(tmp_path / "ck" / "local.safetensors")["residual.weight"]
    assert torch.equal(first.transforms.residual.weight.cpu(), after_local)  # T_r untouched by the block-wise stage
    assert (tmp_path / "ck" / "blockwise.safetensors").is_file()
    model = make_tiny_model("llama", **GQA)
    again = fptquant.quantize(model, recipe, calibration).fptquant_method
    assert "blockwise_losses" not in again.stats  # loaded, not retrained
    assert torch.equal(again.transforms.layers[0].up_log_scale, first.transforms.layers[0].up_log_scale)
    assert first.transforms.layers[0].up_log_scale.abs().max() > 0  # trained away from the identity


def test_eager_training_resumes_from_a_cuda_graph_runs_state():
    """A CUDA-graph run saves tensor learning rates; resuming it eagerly (CPU, or after a refused capture)
    must turn them back into floats, which the eager foreach AdamW requires."""
    from fptquant.pipelines.distill import DistillSettings, _load_eager, _optimizer

    w = torch.nn.Parameter(torch.ones(3))
    s = DistillSettings(steps=10)
    optimizer, scheduler = _optimizer([{"params": [w], "lr": 0.1}], s, None)
    w.grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    for group in saved["optimizer"]["param_groups"]:
        group["lr"], group["initial_lr"] = torch.tensor(group["lr"]), torch.tensor(group["initial_lr"])
    fresh, fresh_scheduler = _optimizer([{"params": [w], "lr": 0.1}], s, None)
    _load_eager(fresh, fresh_scheduler, saved)
    assert isinstance(fresh.param_groups[0]["lr"], float)
    fresh.step()  # would raise on a tensor lr with foreach and capturable=False
    fresh_scheduler.step()
    assert fresh.param_groups[0]["lr"] < 0.1
