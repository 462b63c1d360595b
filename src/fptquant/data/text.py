"""Evaluation and calibration text: bundled WikiText-2 or any local text file, tokenized into windows."""

from __future__ import annotations

import gzip
import random
from importlib import resources
from pathlib import Path

import torch

from ..errors import DataError

BUNDLED = {
    "wikitext2-test": "wiki.test.raw.gz",  # the standard perplexity benchmark
    "wikitext2-valid": "wiki.valid.tokens.gz",  # calibration only: never tune on the test split
}
DEFAULT_EVAL_TEXT = "wikitext2-test"
DEFAULT_CALIB_TEXT = "wikitext2-valid"


def read_text(source: str | Path) -> str:
    """A bundled dataset name (``wikitext2-test``, ``wikitext2-valid``) or a path to a UTF-8 text file."""
    if str(source) in BUNDLED:
        blob = resources.files(__package__).joinpath("wikitext2", BUNDLED[str(source)]).read_bytes()
        return gzip.decompress(blob).decode("utf-8")
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"text file not found: {source} (bundled datasets: {', '.join(BUNDLED)})")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"text file is empty: {source}")
    return text


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D tensor (tokenized once, as the papers do)."""
    if not text.strip():
        raise DataError("the text is empty")
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    return ids.to(torch.long)


def eval_windows(ids: torch.Tensor, seqlen: int = 2048, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens, tail dropped: shape ``(n, seqlen)``."""
    if seqlen < 2:
        raise DataError(f"sequence length must be at least 2, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise DataError(f"max windows must be at least 1, got {max_windows}")
    n = len(ids) // seqlen
    if n == 0:
        raise DataError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def calibration_windows(ids: torch.Tensor, count: int, seqlen: int = 2048, seed: int = 0) -> torch.Tensor:
    """``count`` random windows of ``seqlen`` tokens (start positions drawn with a seeded RNG)."""
    if count < 1:
        raise DataError(f"number of calibration samples must be at least 1, got {count}")
    if len(ids) <= seqlen:
        raise DataError(f"calibration text has {len(ids)} tokens, not more than one window of {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(count)]
    return torch.stack([ids[s : s + seqlen] for s in starts])
