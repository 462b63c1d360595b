"""Bits specs and recipes."""

from __future__ import annotations

import pytest

from fptquant import Recipe, parse_bits
from fptquant.errors import ConfigError
from fptquant.math.quantization import Axis


@pytest.mark.parametrize(
    "text,expected",
    [
        ("w4a4kv4", (4, 4, 4)),
        ("W4A8KV4", (4, 8, 4)),
        ("w4a8kv8", (4, 8, 8)),
        ("w4a16", (4, 16, 16)),
        ("w8a8", (8, 8, 16)),
        ("w2a16kv2", (2, 16, 2)),
        ("w16a16kv16", (16, 16, 16)),
    ],
)
def test_parse_bits(text, expected):
    b = parse_bits(text)
    assert (b.weights, b.activations, b.kv_cache) == expected
    assert parse_bits(str(b)) == b


@pytest.mark.parametrize("text", ["", "w4", "a4w4", "w4a4kv", "w9a4", "w4a1", "w4a4kv12", "int4", "w4a4kv4x"])
def test_bad_bits_are_rejected(text):
    with pytest.raises(ConfigError, match="bad bits spec"):
        parse_bits(text)


def test_recipe_specs_and_round_trip(tmp_path):
    r = Recipe(bits="w4a8kv4", act_static=True, kv_clip_ratio=0.95, weight_group_size=32)
    assert r.weight_spec().axis is Axis.GROUP and r.weight_spec().group_size == 32
    assert not r.activation_spec().dynamic and r.activation_spec().bits == 8
    kv = r.kv_spec(64)
    assert (kv.bits, kv.symmetric, kv.group_size, kv.clip_ratio) == (4, False, 64, 0.95)
    r.save(tmp_path / "r.json")
    assert Recipe.load(tmp_path / "r.json") == r


def test_recipe_rejects_unknown_keys_and_future_versions():
    with pytest.raises(ConfigError, match="unknown recipe keys: colour"):
        Recipe.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="newer"):
        Recipe(version=99)


def test_recipe_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        Recipe.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"method": ')
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        Recipe.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a JSON list, not an object"):
        Recipe.load(tmp_path / "list.json")
