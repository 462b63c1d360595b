"""Resolve a ``--model`` reference (alias, Hugging Face directory or ``.gguf`` file) and load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from . import zoo
from .registry import get_adapter

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    """Where weights and tokenizer come from: a directory, plus the GGUF file name inside it if any."""

    reference: str
    directory: Path
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ModelLoadError(f"unsupported dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve(reference: str) -> ModelSource:
    """Turn a user's model reference into a :class:`ModelSource`, with a clear error if it is unusable."""
    path = Path(reference).expanduser()
    if not path.exists():
        if reference in zoo.ALIASES:
            gguf = zoo.fetch(reference)
            return ModelSource(reference, gguf.parent, gguf.name)
        looks_like_path = "/" in reference or reference.endswith(".gguf") or reference.startswith(".")
        if looks_like_path:
            raise ModelLoadError(f"model path not found: {reference}")
        raise ModelLoadError(
            f"unknown model {reference!r}: not a built-in alias ({', '.join(zoo.ALIASES)}) "
            "and no such local directory or .gguf file"
        )
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes {magic!r})")
        return ModelSource(reference, path.parent.resolve(), path.name)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    return ModelSource(reference, path.resolve())


def load_model(
    reference: str = zoo.DEFAULT_MODEL, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer; the architecture must have a registered adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    source = resolve(reference)
    kwargs = source.from_pretrained_kwargs()
    quiet = logging.getLogger("transformers.modeling_gguf_pytorch_utils")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.directory, dtype=torch_dtype, attn_implementation="sdpa", **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except Exception as e:  # a corrupt file can fail in any parser (struct, numpy, ...): report it as one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {reference}: {first}") from None
    finally:
        quiet.setLevel(previous)
    get_adapter(model)  # fail early and clearly on an unsupported architecture
    model.eval()
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"cannot move the model to device {device!r}: {e}") from None
    model.fptquant_source = source.reference
    return model, tokenizer
