"""The gate+up W4A4 linear whose epilogue writes down_proj's static-scale codes, against the unfused chain in float64:
two W4A4 linears on the separate (not interleaved) weights, silu(gate)·up in their dtype, then the quantizer."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fptquant.errors import ConfigError  # noqa: E402
from fptquant.kernels.quantize import gated_product, quantize_per_token_reference  # noqa: E402
from fptquant.kernels.triton_w4a4_matmul import GemmConfig, swiglu_config  # noqa: E402
from fptquant.kernels.w4a4_matmul import w4a4_matmul_reference  # noqa: E402
from fptquant.kernels.w4a4_swiglu import (  # noqa: E402
    interleave_gate_up,
    static_scales,
    w4a4_swiglu_quantize,
    w4a4_swiglu_quantize_reference,
)
from fptquant.math.packing import pack_int4  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def mlp_problem(m: int, k: int, inter: int, seed: int, bias: bool, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    weights = [torch.randint(-8, 8, (inter, k), generator=g, dtype=torch.int8) for _ in range(2)]
    act_scale = torch.rand(m, 1, generator=g) * 0.02 + 0.005
    scales = [torch.rand(inter, generator=g) * 0.01 + 0.002 for _ in range(2)]
    biases = [torch.randn(inter, generator=g) if bias else None for _ in range(2)]
    packed = [pack_int4(w) for w in weights]
    # the unfused chain: gate and up as two linears return them, their product, its codes
    gate, up = (
        w4a4_matmul_reference(codes, act_scale, p, s, b, dtype) for p, s, b in zip(packed, scales, biases, strict=True)
    )
    product = gated_product(gate, up)
    static = float(product.float().abs().quantile(0.9)) / 7  # codes over the whole range, a tenth clipped
    expected = quantize_per_token_reference(product, static_scale=static)
    fused = [interleave_gate_up(*packed), act_scale, interleave_gate_up(*scales)]
    fused_bias = interleave_gate_up(*biases) if bias else None
    to = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    return [to(codes), *(to(t) for t in fused)], static, to(fused_bias), [to(t) for t in expected]


def assert_codes_match(codes: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-exact but where silu's approximate exp and division moved a bfloat16 product (rare, by one code)."""
    assert codes.dtype == torch.int8 and codes.shape == expected.shape
    diff = (codes.int() - expected.int()).abs()
    assert int(diff.max()) <= 1 and float(diff.bool().double().mean()) <= 2e-3
    assert int(expected.min()) == -8 and int(expected.max()) == 7  # the test reaches both clipped ends


def test_interleaved_reference_is_the_unfused_chain():
    (codes, packed, sa, sw), static, bias, (expected, scales) = mlp_problem(7, 96, 40, seed=1, bias=True)
    out, out_scales = w4a4_swiglu_quantize_reference(codes, sa, packed, sw, static, bias)
    assert torch.equal(out, expected) and torch.equal(out_scales, scales)


# 1–4 tokens: the dp4a kernel, 5–16 the sliced one; more: the pointer GEMM (a Hopper GPU from FPTQUANT_TMA_MIN_TOKENS:
# Gluon).
# K 576 = 9 × 64 and 1536 (SmolLM2), 256; intermediate 1536 (SmolLM2) and 100 (the tiny models: a ragged tile).
CASES = [(1, 576, 1536, False), (16, 576, 100, True), (5, 1536, 48, True), (37, 576, 100, False),
         (70, 256, 96, True)]  # fmt: skip


@pytest.mark.parametrize("m,k,inter,bias", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_codes_match_the_unfused_chain(m, k, inter, bias, dtype):
    (codes, packed, sa, sw), static, b, (expected, scales) = mlp_problem(m, k, inter, m + k + inter, bias, dtype)
    out, out_scales = w4a4_swiglu_quantize(codes, sa, packed, sw, static, b, dtype, backend="triton")
    assert_codes_match(out, expected)
    assert torch.equal(out_scales, scales)


@pytest.mark.parametrize("kernel", ["dp4a", "sliced"])
@pytest.mark.parametrize("m,k,inter", [(1, 576, 100), (3, 1536, 48), (16, 256, 96)])
def test_each_few_token_kernel_takes_the_epilogue(monkeypatch, kernel, m, k, inter):
    """Both few-token kernels, at any of 1–16 tokens, with a ragged last tile (100 gate/up pairs) and a bias; the
    kernel named ran."""
    from fptquant.kernels import triton_w4a4_dp4a, triton_w4a4_sliced

    module, name = {"dp4a": (triton_w4a4_dp4a, "dp4a_matmul"), "sliced": (triton_w4a4_sliced, "sliced_matmul")}[kernel]
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(kw["swiglu_inv"]) or real(*a, **kw))
    monkeypatch.setenv("FPTQUANT_SMALL_M_KERNEL", kernel)
    (codes, packed, sa, sw), static, b, (expected, scales) = mlp_problem(m, k, inter, seed=3 * m + k, bias=True)
    out, out_scales = w4a4_swiglu_quantize(codes, sa, packed, sw, static, b, backend="triton")
    assert_codes_match(out, expected)
    assert torch.equal(out_scales, scales) and len(calls) == 1


def test_few_token_configs_that_split_tiles_are_refused():
    from fptquant.kernels.triton_w4a4_dp4a import Dp4aConfig
    from fptquant.kernels.triton_w4a4_sliced import SlicedConfig

    (codes, packed, sa, sw), static, _, _ = mlp_problem(2, 2048, 64, seed=4, bias=False)
    for config in (Dp4aConfig(16, 16, split_k=2), SlicedConfig(split_k=2)):
        with pytest.raises(ConfigError, match="whole output tiles"):
            w4a4_swiglu_quantize(codes, sa, packed, sw, static, backend="triton", config=config)


def test_static_scales_are_filled_once_per_scale():
    """The fused codes' scales: the first rows of one column per static scale, grown when more rows come."""
    four = static_scales(4, 0.5, "cpu")
    two = static_scales(2, 0.5, "cpu")
    assert two.data_ptr() == four.data_ptr() and torch.equal(two, torch.full((2, 1), 0.5))
    eight = static_scales(8, 0.5, "cpu")
    assert eight.shape == (8, 1) and static_scales(3, 0.5, "cpu").data_ptr() == eight.data_ptr()
    assert torch.equal(static_scales(8, 0.25, "cpu"), torch.full((8, 1), 0.25))
    assert torch.equal(static_scales(8, 0.5, "cpu"), torch.full((8, 1), 0.5))


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


GLUON_TILES = {  # the prefill pick (two wgmma instructions across N), a tall tile, a small one
    "128x256": GemmConfig(128, 256, 128, num_warps=8, num_stages=4, unpack_first=True, tma=True, gluon=True),
    "256x128": GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    "64x64": GemmConfig(64, 64, 64, num_warps=4, num_stages=4, unpack_first=True, tma=True, gluon=True),
}


def test_prefill_pick_is_a_gluon_tile_the_epilogue_takes():
    assert swiglu_config(8192, 28672, 4096) == GLUON_TILES["128x256"]
    assert not swiglu_config(40, 28672, 4096).swap  # pick_config's swapped decode tile is replaced


@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel runs on Hopper GPUs only (no interpreter)")
@pytest.mark.parametrize("tile", GLUON_TILES)
@pytest.mark.parametrize("m,k,inter", [(1000, 576, 1536), (300, 14336, 144)])
def test_gluon_swiglu_epilogue_is_taken_over_many_tiles(monkeypatch, tile, m, k, inter):
    """More tiles than SMs and ragged edges (144 gate/up pairs: the last tile part full, the codes rows a multiple of
    16 bytes as the TMA store needs; narrower ones take the pointer GEMM); the Gluon kernel ran."""
    import fptquant.kernels.gluon_w4a4_tma as glu

    calls = []
    real = glu.gluon_matmul
    monkeypatch.setattr(glu, "gluon_matmul", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    (codes, packed, sa, sw), static, b, (expected, scales) = mlp_problem(m, k, inter, seed=m, bias=True)
    out, out_scales = w4a4_swiglu_quantize(codes, sa, packed, sw, static, b, backend="triton", config=GLUON_TILES[tile])
    assert_codes_match(out, expected)
    assert torch.equal(out_scales, scales) and len(calls) == 1


def test_bad_input_is_refused_by_name():
    (codes, packed, sa, sw), static, bias, _ = mlp_problem(4, 64, 8, seed=2, bias=True)
    with pytest.raises(ConfigError, match="even row count"):
        w4a4_swiglu_quantize(codes, sa, packed[:-1], sw[:-1], static, backend="triton")
    with pytest.raises(ConfigError, match="positive"):
        w4a4_swiglu_quantize(codes, sa, packed, sw, 0.0, backend="triton")
    with pytest.raises(ConfigError, match="int8 codes"):
        w4a4_swiglu_quantize(codes.float().to(torch.float8_e4m3fn), sa, packed, sw, static, backend="triton")
    with pytest.raises(ConfigError, match="bias"):
        w4a4_swiglu_quantize(codes, sa, packed, sw, static, bias[:-2], backend="triton")
    with pytest.raises(ConfigError, match="gate and up must match"):
        interleave_gate_up(packed[:4], packed[:3])
