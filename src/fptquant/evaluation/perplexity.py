"""WikiText-2 perplexity by the papers' convention.

Tokenize the whole text once, cut non-overlapping windows of 2048 tokens (tail dropped), take each
window's mean next-token NLL over its 2047 targets, and report exp of the mean over windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.text import DEFAULT_EVAL_TEXT, eval_windows, read_text, tokenize
from ..errors import DataError
from ..models.base import model_device


@dataclass
class PerplexityResult:
    perplexity: float
    window_nll: list[float]
    seqlen: int

    @property
    def windows(self) -> int:
        return len(self.window_nll)


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, desc: str = "perplexity") -> list[float]:
    """Mean next-token negative log-likelihood of each window, computed in float32."""
    device = model_device(model)
    nlls: list[float] = []
    bar = tqdm(total=len(windows), desc=desc, unit="win", leave=False)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none").view(
            len(batch), -1
        )
        per_window = loss.mean(dim=1).double().cpu().tolist()
        if not all(math.isfinite(v) for v in per_window):
            raise FloatingPointError(f"non-finite loss in windows {start}..{start + len(batch) - 1}")
        nlls.extend(per_window)
        bar.update(len(batch))
        bar.set_postfix(ppl=f"{math.exp(sum(nlls) / len(nlls)):.2f}")
    bar.close()
    return nlls


def perplexity(
    model: nn.Module,
    tokenizer,
    text: str | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on ``text`` (default: the bundled WikiText-2 test split)."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    ids = tokenize(tokenizer, text if text is not None else read_text(DEFAULT_EVAL_TEXT))
    windows = eval_windows(ids, seqlen, max_windows)
    nlls = window_nll(model, windows, batch_size, desc)
    return PerplexityResult(math.exp(sum(nlls) / len(nlls)), nlls, seqlen)
