"""Bundled data, window cutting, calibration sampling and the perplexity convention."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model, make_tokenizer

from fptquant.data.text import calibration_windows, eval_windows, read_text, tokenize
from fptquant.errors import DataError
from fptquant.evaluation.perplexity import perplexity


def test_bundled_wikitext_is_the_standard_test_split():
    text = read_text("wikitext2-test")
    assert hashlib.md5(text.encode("utf-8")).hexdigest() == "7646de4fa2ddef8d6781e2e1fbcbfb47"
    assert "<unk>" in read_text("wikitext2-valid")


def test_eval_windows_are_non_overlapping_and_drop_the_tail():
    ids = torch.arange(10_000)
    w = eval_windows(ids, 2048)
    assert w.shape == (4, 2048) and torch.equal(w.flatten(), ids[: 4 * 2048])
    assert eval_windows(ids, 2048, max_windows=2).shape == (2, 2048)
    with pytest.raises(DataError, match="at least 1"):
        eval_windows(ids, 2048, max_windows=0)
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(ids[:100], 2048)


def test_calibration_windows_are_seeded_and_in_bounds():
    ids = torch.arange(5000)
    a, b, c = (calibration_windows(ids, 8, 512, seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 512)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(8, 511, dtype=a.dtype))  # contiguous slices
    with pytest.raises(DataError):
        calibration_windows(ids[:100], 4, 512)


def test_perplexity_is_exp_of_mean_window_nll():
    model, tok = make_tiny_model("llama"), make_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 20
    result = perplexity(model, tok, text, seqlen=64, max_windows=5, batch_size=2)
    ids = tokenize(tok, text)
    nlls = []
    for i in range(5):
        window = ids[i * 64 : (i + 1) * 64]
        logits = model(input_ids=window[None]).logits[0]
        nlls.append(F.cross_entropy(logits[:-1], window[1:]).item())
    assert result.windows == 5
    assert result.perplexity == pytest.approx(math.exp(sum(nlls) / 5), rel=1e-5)
    single = perplexity(model, tok, text, seqlen=64, max_windows=5, batch_size=1)
    assert single.perplexity == pytest.approx(result.perplexity, rel=1e-5)


def test_missing_and_empty_text_are_rejected(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nothing.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        read_text(tmp_path / "blank.txt")
