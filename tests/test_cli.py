"""The CLI end to end on a tiny local model, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fptquant.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


SMALL = ["--seqlen", "32", "--max-windows", "3", "--device", "cpu"]


def small_eval(model_dir, text_file):
    return ["--model", model_dir, "--eval-data", text_file, *SMALL]


def test_methods_lists_methods_and_architectures():
    result = run("methods")
    assert result.exit_code == 0
    assert "rtn" in result.output and "qwen3" in result.output and "smollm2-135m" in result.output


def test_quantize_save_and_eval_reproduce_the_same_perplexity(tiny_model_dir, text_file, tmp_path):
    out, report = tmp_path / "rtn", tmp_path / "q.json"
    result = run(
        "quantize",
        *small_eval(tiny_model_dir, text_file),
        "--bits",
        "w4a8kv4",
        "--act-static",
        "--calib-data",
        text_file,
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--out",
        out,
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    assert "full precision" in result.output and "W4A8KV4" in result.output
    saved = json.loads(report.read_text())
    assert saved["perplexity"] != saved["fp_perplexity"]
    reloaded = tmp_path / "eval.json"
    result = run("eval", "--quantized", out, "--data", text_file, *SMALL, "--json", reloaded)
    assert result.exit_code == 0, result.output
    assert json.loads(reloaded.read_text())["perplexity"] == saved["perplexity"]


def test_eval_full_precision_matches_quantize_baseline(tiny_model_dir, text_file, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("eval", "--model", tiny_model_dir, "--data", text_file, *SMALL, "--json", a).exit_code == 0
    assert run("quantize", *small_eval(tiny_model_dir, text_file), "--json", b).exit_code == 0
    assert json.loads(a.read_text())["perplexity"] == json.loads(b.read_text())["fp_perplexity"]


def assert_one_line_error(result, pattern: str):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error" in line.lower() or "invalid value" in line.lower()]
    assert len(errors) == 1 and pattern in errors[0], text


@pytest.fixture
def bad_inputs(tiny_model_dir, text_file, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)).save_pretrained(gpt2)
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"not a gguf at all" * 10)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    nonempty = tmp_path / "taken"
    nonempty.mkdir()
    (nonempty / "precious.txt").write_text("keep me")
    return dict(
        model=tiny_model_dir,
        text=text_file,
        gpt2=gpt2,
        corrupt=corrupt,
        truncated=truncated,
        empty=empty,
        nonempty=nonempty,
    )


CASES = {
    "unknown alias": (["eval", "--model", "llama-9000", "--device", "cpu"], "unknown model 'llama-9000'"),
    "missing path": (["eval", "--model", "./no/such/dir", "--device", "cpu"], "model path not found"),
    "non-GGUF file": (["eval", "--model", "{corrupt}", "--device", "cpu"], "not a GGUF file"),
    "truncated GGUF": (["eval", "--model", "{truncated}", "--device", "cpu"], "could not load"),
    "unsupported architecture": (["eval", "--model", "{gpt2}", "--device", "cpu"], "unsupported architecture 'gpt2'"),
    "bad bits": (["quantize", "--model", "{model}", "--bits", "w3a5kv9", "--device", "cpu"], "bad bits spec"),
    "bad bits word": (["quantize", "--model", "{model}", "--bits", "int4", "--device", "cpu"], "bad bits spec"),
    "non-empty out": (["quantize", "--model", "{model}", "--out", "{nonempty}", "--device", "cpu"], "not empty"),
    "empty calibration": (
        [
            "quantize",
            "--model",
            "{model}",
            "--act-static",
            "--calib-data",
            "{empty}",
            "--eval-data",
            "{text}",
            "--device",
            "cpu",
        ],
        "empty",
    ),
    "zero windows": (["eval", "--model", "{model}", "--max-windows", "0"], "max-windows"),
    "missing eval text": (["eval", "--model", "{model}", "--data", "nope.txt"], "text file not found"),
    "unknown method": (["quantize", "--model", "{model}", "--method", "magic"], "unknown method 'magic'"),
    "missing quantized dir": (["eval", "--quantized", "{nonempty}"], "not an fptquant output directory"),
    "bad clip ratio": (["quantize", "--model", "{model}", "--act-clip", "1.5"], "act_clip_ratio"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_error(case, bad_inputs):
    args, pattern = CASES[case]
    result = run(*[a.format(**bad_inputs) for a in args])
    assert_one_line_error(result, pattern)
    assert (bad_inputs["nonempty"] / "precious.txt").read_text() == "keep me"


def test_load_in_bfloat16_and_quantize(tiny_model_dir):
    import torch

    import fptquant

    model, _ = fptquant.load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    tokens = torch.randint(0, 90, (1, 12))
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        fptquant.quantize(model, fptquant.Recipe(bits="w16a16kv16"))
        assert torch.equal(model(input_ids=tokens).logits, before)
        model, _ = fptquant.load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
        fptquant.quantize(model, fptquant.Recipe(method="quarot", bits="w4a4kv4"))
        after = model(input_ids=tokens).logits
    assert after.dtype == torch.bfloat16 and torch.isfinite(after).all() and not torch.equal(after, before)
