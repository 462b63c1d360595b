"""Shared fixtures: tiny random-weight models of every supported architecture, built offline."""

from __future__ import annotations

import contextlib
import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in the interpreter on CPU; must be set before they load
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 128
# Odd sizes on purpose: hidden 72, 3 query heads sharing 1 KV head (GQA), head_dim 24, MLP 100.
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=72,
    intermediate_size=100,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    head_dim=24,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
}


def make_tiny_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = ARCHITECTURES[arch]
    config = config_cls(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # random, non-trivial norm gains and biases so transforms are really exercised
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(params=sorted(ARCHITECTURES))
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 19))


@contextlib.contextmanager
def kernel_transform_numerics(model: torch.nn.Module):
    """Run the fake-quant model's online transforms with the numerics of the fused transform+quantize
    kernel (bfloat16 operand pairs, float32 accumulation: kernels/transform_quantize.py) that the deploy model
    uses for them, so fake-quant and real-code logits can be compared tightly in a chaotic W4A4 model."""
    from fptquant.deploy.modules import fused_factors
    from fptquant.kernels.transform_quantize import kron_apply_split

    patched = []
    for module in model.modules():
        factors = fused_factors(module)
        if factors is None:
            continue
        p1, p2, gain, round_mid = factors
        size = p1.shape[0] * p2.shape[0]

        def forward(x, p1=p1, p2=p2, gain=gain, round_mid=round_mid, size=size):
            rows = x.reshape(-1, x.shape[-1])  # as the deploy model calls it: CPU matmuls round by shape
            y = kron_apply_split(rows, p1.to(x.device), p2.to(x.device), x.shape[-1] // size, gain, round_mid)
            return y.reshape(x.shape).to(x.dtype)

        module.forward = forward
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII (ids < VOCAB), made without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}, "</s>": len(chars) + 1}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local Hugging Face model directory (tiny Llama + tokenizer) for end-to-end CLI tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """A few thousand characters of English-like text for calibration/evaluation."""
    import random

    rng = random.Random(0)
    words = "the of and to in is was for on that with as by at from his her it an are were".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(150))
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(text)
    return path
