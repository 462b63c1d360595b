"""The CUDA-graph training step: refused captures fall back, and the Cayley solves of a real model record."""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch

from fptquant.pipelines.graphed_step import capturable_linear_algebra, graphed_or_none


def test_a_refused_capture_warns_and_leaves_the_step_to_run_without_a_graph(caplog):
    """graphed_or_none: any failure while recording (here: no CUDA at all, or an operation capture refuses)
    is a warning and None, with the gradients of the failed attempt cleared."""
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.full((3,), 5.0)
    optimizer = torch.optim.AdamW([w], lr=1e-2)

    attempts = []

    def step_fn(batch):
        attempts.append(torch.backends.cuda.preferred_linalg_library())
        raise RuntimeError("operation not permitted when stream is capturing")

    with caplog.at_level("WARNING"):
        assert graphed_or_none(step_fn, optimizer, [w], torch.zeros(1), "calibrating") is None
    assert caplog.text.count("CUDA-graph capture failed") == 1 and "calibrating without it" in caplog.text
    assert w.grad is None
    if torch.cuda.is_available():  # tried preferring cuSOLVER, then with torch's default linear algebra
        assert [str(a).split(".")[-1] for a in attempts] == ["Cusolver", "Default"]
    else:  # no CUDA stream to record on: one failed attempt, before any step
        assert attempts == []


def test_linear_algebra_preference_is_restored_even_after_an_error():
    before = torch.backends.cuda.preferred_linalg_library()
    with pytest.raises(ValueError), capturable_linear_algebra():
        raise ValueError("inside")
    assert torch.backends.cuda.preferred_linalg_library() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_batched_cayley_solves_of_smollm2_sizes_record_and_replay(caplog):
    """SmolLM2's FPTQuant step solves 180 per-head 64×64 Cayley maps at once (U and V of 90 T_v) and one
    576×576 (T_r); its capture failed on the H100 while tiny models' small batches captured. Under torch's
    default choice such batches go to MAGMA, which a capture cannot record; graphed_or_none therefore
    records preferring cuSOLVER. Either way the step must end up recorded, its first replay equal to eager."""
    caplog.set_level("WARNING")
    g = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter((0.1 * torch.randn(shape, generator=g)).cuda()) for shape in ((180, 64, 64), (1, 576, 576))
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-3, capturable=True)

    def step_fn(batch: torch.Tensor) -> torch.Tensor:
        loss = batch.sum() * 0
        for a in params:
            skew = (a - a.transpose(-1, -2)).double()
            eye = torch.eye(a.shape[-1], dtype=torch.float64, device=a.device).expand_as(skew)
            rotation = torch.linalg.solve_ex(eye - skew / 2, eye + skew / 2)[0]
            loss = loss + rotation.float().pow(4).mean()
        loss.backward()
        return loss.detach()

    batch = torch.ones(1, device="cuda")
    runner = graphed_or_none(step_fn, optimizer, params, batch, "training")
    assert runner is not None, caplog.text
    runner(batch)
    runner.verify(rtol=1e-4, grad_rtol=1e-4)
    assert "capture failed" not in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_fptquant_stages_record_on_a_smollm2_shaped_model(caplog):
    """SmolLM2's shapes (30 layers, hidden 576 = 9 heads of 64, 3 KV heads, MLP 1536) with random weights
    and a small vocabulary: the local and end-to-end stages, whose captures failed on the real model on the
    H100, must run as CUDA graphs (no fallback warning). No model download needed."""
    from conftest import make_tiny_model

    import fptquant

    caplog.set_level("WARNING")
    shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64)  # fmt: skip
    model = make_tiny_model("llama", **shape).cuda()
    calibration = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    args = {"local_steps": 3, "e2e_steps": 2, "batch_size": 2, "range_windows": 2, "resume": False}
    recipe = fptquant.Recipe(method="fptquant", bits="w4a4kv4", act_static=True, method_args=args)
    method = fptquant.quantize(model, recipe, calibration_data=calibration).fptquant_method
    assert "capture failed" not in caplog.text, caplog.text
    assert len(method.stats["e2e_losses"]) == 2


def test_a_failed_attempt_leaves_no_autograd_graph_alive():
    """The tensors of a failed capture attempt live on in its traceback; their autograd graph binds the
    parameters' gradient accumulators to that attempt's stream, so _forget must free them before a retry."""
    import weakref

    from fptquant.pipelines.graphed_step import _forget

    w = torch.nn.Parameter(torch.ones(4))
    seen = []

    def failing_step():
        hidden = (w * 2).exp()  # an intermediate with a grad_fn, referenced only by this frame
        seen.append(weakref.ref(hidden))
        raise RuntimeError("operation not permitted when stream is capturing")

    try:
        failing_step()
    except RuntimeError as error:
        kept = error
    assert seen[0]() is not None  # the traceback keeps the frame, hence the tensor, alive
    w.grad = torch.ones(4)
    _forget(kept, [w])
    assert seen[0]() is None and w.grad is None


def test_a_failed_attempt_inside_an_activation_checkpoint_does_not_break_later_backwards():
    """torch < 2.13 leaves an activation checkpoint that an error interrupted suspended, its saved-tensor
    hooks installed, for as long as the error's traceback lives; the next backward then fails. That
    checkpoint is emulated here (the current torch closes it itself); _forget must close it."""
    import inspect

    import torch.utils.checkpoint as cp

    from fptquant.pipelines.graphed_step import _forget

    gen_fn = getattr(cp, "_checkpoint_without_reentrant_generator", None)
    names = list(inspect.signature(gen_fn).parameters)[:6] if gen_fn else []
    if names != ["fn", "preserve_rng_state", "context_fn", "determinism_check", "debug", "early_stop"]:
        pytest.skip("this torch's checkpoint internals differ from the emulated torch 2.11 ones")

    def old_checkpoint(function, x):  # torch 2.11's non-reentrant checkpoint: no cleanup when function raises
        gen = gen_fn(function, False, cp.noop_context_fn, "default", False, None, x)
        next(gen)
        out = function(x)
        with contextlib.suppress(StopIteration):
            next(gen)
        return out

    linear = torch.nn.Linear(4, 4)
    fail = [True]

    def layer(x):
        y = torch.relu(linear(x))
        if fail[0]:
            raise RuntimeError("operation not permitted when stream is capturing")
        return linear(y).sigmoid()

    x = torch.randn(2, 4, requires_grad=True)

    def attempt():
        try:
            old_checkpoint(layer, x)
        except RuntimeError as error:
            return error

    def later_backward():
        h = old_checkpoint(layer, x)
        (h.exp() * h).sum().backward()  # saves tensors outside any live checkpoint

    fail[0] = True
    kept = attempt()
    fail[0] = False
    with pytest.raises(Exception, match="different number of tensors"):
        later_backward()  # the failure mode: the interrupted checkpoint's hooks still installed
    del kept
    gc.collect()
    fail[0] = True
    kept = attempt()
    fail[0] = False
    _forget(kept, [])
    later_backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
