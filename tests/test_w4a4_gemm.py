"""W4A4 GEMM kernel against float64: integer sums bit-exact, scaled bf16 output within tolerance."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from fptquant.errors import ConfigError  # noqa: E402
from fptquant.kernels.triton_w4a4_dp4a import Dp4aConfig, pick_dp4a_config  # noqa: E402
from fptquant.kernels.triton_w4a4_gemv import GemvConfig  # noqa: E402
from fptquant.kernels.triton_w4a4_matmul import GemmConfig, pick_config  # noqa: E402
from fptquant.kernels.triton_w4a4_sliced import SlicedConfig, pick_sliced_config  # noqa: E402
from fptquant.kernels.w4a4_matmul import w4a4_matmul, w4a4_matmul_reference  # noqa: E402
from fptquant.math.packing import pack_int4  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Small tiles keep the interpreter fast; swap + split-K is the decode layout, the others prefill.
CONFIGS = {
    "prefill": GemmConfig(32, 32, 64, num_warps=4),
    "prefill_shift_unpack": GemmConfig(32, 64, 128, num_warps=4, magic_unpack=False),
    "decode_swap_split": GemmConfig(16, 32, 128, split_k=3, swap=True, num_warps=4),
    "decode_default": pick_config(16, 4096, 4096),  # up to 16 tokens
    "unpack_first": GemmConfig(32, 32, 64, num_warps=4, unpack_first=True),
    "tma": GemmConfig(32, 32, 64, num_warps=4, unpack_first=True, tma=True),
    "tma_warp_specialized": GemmConfig(16, 64, 128, num_warps=4, unpack_first=True, tma=True, warp_specialize=True),
    # Gluon (Hopper GPUs only; elsewhere, and for fp8 codes, the call goes to the Triton TMA kernel)
    "gluon": GemmConfig(64, 64, 64, num_warps=4, num_stages=4, unpack_first=True, tma=True, gluon=True),
    "gluon_prefill_tile": GemmConfig(256, 128, 128, num_warps=8, num_stages=3, unpack_first=True, tma=True, gluon=True),
    "prefill_split_nibbles": GemmConfig(32, 32, 64, num_warps=4, split_nibbles=True),
    "decode_swap_split_nibbles": GemmConfig(16, 32, 128, split_k=3, swap=True, num_warps=4, split_nibbles=True),
    "decode_nibbles_shift_unpack": GemmConfig(
        16, 64, 128, swap=True, num_warps=4, split_nibbles=True, magic_unpack=False
    ),
}
# SmolLM2's 576 = 9 heads of 64 and 1536 (neither a multiple of 128), a 3-row decode, a tall thin one.
SHAPES = [(37, 96, 576), (3, 80, 1536), (1, 48, 9 * 64), (70, 40, 256)]


def problem(m, n, k, seed=0, non_negative=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    if non_negative:
        a, w = a.abs().clamp(max=7), w.abs().clamp(max=7)
    assert a.abs().sum() > 0 and w.abs().sum() > 0
    sa = torch.rand(m, 1, generator=g) * 0.1 + 0.01
    sw = torch.rand(n, generator=g) * 0.1 + 0.01
    bias = torch.randn(n, generator=g)
    return [t.to(DEVICE) for t in (a, w, sa, sw, bias)]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("codes_dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_integer_sums_exact_and_scaled_output_close(name, m, n, k, codes_dtype):
    a, w, sa, sw, bias = problem(m, n, k, seed=m + n + k)
    codes, packed, cfg = a.to(codes_dtype), pack_int4(w), CONFIGS[name]
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    acc = w4a4_matmul(codes, ones_m, packed, ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T)
    out = w4a4_matmul(codes, sa, packed, sw, bias, torch.bfloat16, backend="triton", config=cfg)
    exact = (a.double() @ w.double().T) * sa.double() * sw.double() + bias.double()
    # bf16 output: one rounding (2^-8 relative) on top of float32 epilogue / split-K ordering noise
    torch.testing.assert_close(out.double(), exact, rtol=2**-7, atol=1e-5)
    ref = w4a4_matmul_reference(codes, sa, packed, sw, bias, torch.bfloat16)
    torch.testing.assert_close(out.double(), ref.double(), rtol=2**-7, atol=1e-5)


def test_tma_prefill_takes_aligned_shapes_and_leaves_the_rest_to_the_pointer_gemm(monkeypatch):
    """TMA copies need rows of a multiple of 16 bytes: K = 576 goes to the TMA kernel, K = 200 cannot."""
    import fptquant.kernels.triton_w4a4_tma as tma

    calls = []
    real = tma.tma_matmul
    monkeypatch.setattr(tma, "tma_matmul", lambda *a, **kw: calls.append(a[0].shape[1]) or real(*a, **kw))
    for k in (576, 200):
        a, w, sa, sw, bias = problem(40, 48, k, seed=k)
        out = w4a4_matmul(a, sa, pack_int4(w), sw, bias, backend="triton", config=CONFIGS["tma"])
        exact = (a.double() @ w.double().T) * sa.double() * sw.double() + bias.double()
        torch.testing.assert_close(out.double(), exact, rtol=2**-7, atol=1e-5)
    assert calls == [576]


def test_prefill_takes_the_tma_gemms_from_the_token_count_the_switch_names(monkeypatch):
    assert not pick_config(2048, 4096, 4096).tma and pick_config(4096, 4096, 4096).gluon  # default: from 4096
    monkeypatch.setenv("FPTQUANT_TMA_MIN_TOKENS", "2048")
    assert pick_config(2048, 4096, 4096).gluon and not pick_config(2047, 4096, 4096).tma
    monkeypatch.setenv("FPTQUANT_TMA_MIN_TOKENS", "lots")
    with pytest.raises(ConfigError, match="FPTQUANT_TMA_MIN_TOKENS"):
        pick_config(4096, 4096, 4096)


def test_gluon_stage_plan_fits_shared_memory_or_declines():
    """The ring of stages plus the output tile must fit in 227 KB; where not even two stages fit, the plan says 0
    and the call goes to the Triton TMA kernel."""
    from fptquant.kernels.gluon_w4a4_tma import gluon_stages

    assert gluon_stages(256, 128, 128, 3, torch.bfloat16) == 3  # 3 x 48 KB + 64 KB
    assert gluon_stages(128, 128, 128, 5, torch.float32) == 4  # 5 x 32 KB + 64 KB is over, 4 stages fit
    assert gluon_stages(256, 128, 128, 3, torch.float32) == 0  # 128 KB of float32 output leaves room for one stage


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel runs on Hopper GPUs only (no interpreter)")
@pytest.mark.parametrize("m,n,k,non_negative", [(1000, 1032, 1536, False), (300, 264, 14336, True)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_gluon_prefill_gemm_is_taken_and_exact_over_many_tiles(monkeypatch, m, n, k, non_negative, out_dtype):
    """More tiles than SMs (the persistent loop and the slot ring wrap), ragged edges, and the long all-non-negative
    K whose sums reach 64·K; the kernel must be the one that ran."""
    import fptquant.kernels.gluon_w4a4_tma as glu

    calls = []
    real = glu.gluon_matmul
    monkeypatch.setattr(glu, "gluon_matmul", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    a, w, sa, sw, bias = problem(m, n, k, seed=n, non_negative=non_negative)
    cfg = CONFIGS["gluon"]
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    acc = w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T)
    out = w4a4_matmul(a, sa, pack_int4(w), sw, bias, out_dtype, backend="triton", config=cfg)
    ref = w4a4_matmul_reference(a, sa, pack_int4(w), sw, bias, out_dtype)
    torch.testing.assert_close(out.double(), ref.double(), rtol=2**-7, atol=1e-5)
    assert len(calls) == 2


GEMV_CONFIGS = {
    "default": None,  # w4a4_matmul picks the GEMV for one token
    "split": GemvConfig(block_n=16, block_k_bytes=64, split_k=3),
    "wide": GemvConfig(block_n=32, block_k_bytes=128, num_stages=2),
    "narrow": GemvConfig(block_n=8, block_k_bytes=256, num_warps=2),  # the default below N = 2048 (K >= 4096)
    "long_steps": GemvConfig(block_n=16, block_k_bytes=512, num_stages=3),  # the default from N = 2048
}


@pytest.mark.parametrize("name", GEMV_CONFIGS)
@pytest.mark.parametrize("n,k", [(96, 576), (80, 1536), (48, 9 * 64), (40, 2048), (17, 130)])
@pytest.mark.parametrize("codes_dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_one_token_gemv_sums_exact_and_scaled_output_close(name, n, k, codes_dtype):
    a, w, sa, sw, bias = problem(1, n, k, seed=n + k)
    codes, packed, cfg = a.to(codes_dtype), pack_int4(w), GEMV_CONFIGS[name]
    ones_m, ones_n = torch.ones(1, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    acc = w4a4_matmul(codes, ones_m, packed, ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T)
    out = w4a4_matmul(codes, sa, packed, sw, bias, torch.bfloat16, backend="triton", config=cfg)
    ref = w4a4_matmul_reference(codes, sa, packed, sw, bias, torch.bfloat16)
    torch.testing.assert_close(out.double(), ref.double(), rtol=2**-7, atol=1e-5)


DP4A_CONFIGS = {
    "default": Dp4aConfig(),
    "narrow": pick_dp4a_config(4096),
    "narrow_tokens": pick_dp4a_config(4096, 4),
    "wide": pick_dp4a_config(28672),
    "split": Dp4aConfig(block_n=16, block_k_words=8, split_k=3),
    "signed": Dp4aConfig(block_n=16, block_k_words=64, nibbles="signed"),
    "signed_split": Dp4aConfig(block_n=16, block_k_words=8, split_k=3, nibbles="signed"),
    "x16": Dp4aConfig(block_n=16, block_k_words=64, nibbles="x16"),
    "x16_split": Dp4aConfig(block_n=16, block_k_words=8, split_k=3, nibbles="x16"),
}


@pytest.mark.parametrize("nibbles", ["offset", "signed", "x16"])
def test_dp4a_extremes_are_exact_and_bad_shapes_named(nibbles):
    """Every weight −8 and every code −8 or 7: the nibble offset and its correction at their limits; signed, the
    sign extension of every nibble at once (all bytes negative, no carry between them); x16, every byte −128."""
    m, n, k = 4, 24, 4096
    w = torch.full((n, k), -8, dtype=torch.int8, device=DEVICE)
    a = torch.where(torch.arange(k, device=DEVICE) % 3 == 0, 7, -8).to(torch.int8).expand(m, k).contiguous()
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    cfg = Dp4aConfig(nibbles=nibbles)
    acc = w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T) and acc.abs().min() > 2**14
    with pytest.raises(ConfigError, match="at most 16 rows"):
        w4a4_matmul(a.repeat(5, 1), torch.ones(20, 1, device=DEVICE), pack_int4(w), ones_n, None,
                    backend="triton", config=Dp4aConfig())  # fmt: skip
    with pytest.raises(ConfigError, match="nibbles must be one of"):
        w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, backend="triton", config=Dp4aConfig(nibbles="signed8"))


SLICED_CONFIGS = {
    "two_slices": SlicedConfig(block_n=32, block_k=128, slices=2, num_stages=2),
    "wide": pick_sliced_config(28672, 4096),
    "narrow_split": pick_sliced_config(4096, 4096),
    "qkv": pick_sliced_config(6144, 4096),
    "long_k": pick_sliced_config(4096, 14336),
    "split_tail": SlicedConfig(block_n=64, block_k=256, slices=4, split_k=3),
    # weights of the first steps read before the wait: past K for K = 576, inside it otherwise
    "preload_long_k": replace(pick_sliced_config(4096, 14336), preload=2),
    "preload_split": SlicedConfig(block_n=32, block_k=256, slices=2, split_k=2, preload=1),
}


FEW_TOKEN_CONFIGS = {f"dp4a-{k}": v for k, v in DP4A_CONFIGS.items()} | {
    f"sliced-{k}": v for k, v in SLICED_CONFIGS.items()
}


@pytest.mark.parametrize("name", FEW_TOKEN_CONFIGS)
@pytest.mark.parametrize("m,n,k", [(3, 96, 576), (16, 40, 1536), (9, 17, 9 * 64), (1, 48, 2048), (2, 64, 4096)])
def test_few_token_kernels_sum_exactly_and_scale_close(name, m, n, k):
    """dp4a and the sliced tensor-core kernel: K = 576 and 1536 end inside a step (masked tails), N = 17 and 40
    wrap inside a tile, 9 heads of 64."""
    a, w, sa, sw, bias = problem(m, n, k, seed=m + n + k)
    packed, cfg = pack_int4(w), FEW_TOKEN_CONFIGS[name]
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    acc = w4a4_matmul(a, ones_m, packed, ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T)
    out = w4a4_matmul(a, sa, packed, sw, bias, torch.bfloat16, backend="triton", config=cfg)
    ref = w4a4_matmul_reference(a, sa, packed, sw, bias, torch.bfloat16)
    torch.testing.assert_close(out.double(), ref.double(), rtol=2**-7, atol=1e-5)


def test_sliced_extremes_are_exact_and_bad_inputs_named():
    """Every weight −8 (the byte −128 once unpacked as 16·v) and codes −8 or 7, over a long K: the largest
    products (16·|v·a| = 1024) summed in int32, then shifted back by four."""
    m, n, k = 16, 32, 14336
    w = torch.full((n, k), -8, dtype=torch.int8, device=DEVICE)
    a = torch.where(torch.arange(k, device=DEVICE) % 3 == 0, 7, -8).to(torch.int8).expand(m, k).contiguous()
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    cfg = SlicedConfig(block_n=32, block_k=1024, slices=4)
    acc = w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, torch.float32, backend="triton", config=cfg)
    assert torch.equal(acc.double(), a.double() @ w.double().T) and acc.abs().min() > 2**16
    with pytest.raises(ConfigError, match="at most 16 rows"):
        w4a4_matmul(a.repeat(2, 1), torch.ones(2 * m, 1, device=DEVICE), pack_int4(w), ones_n, None,
                    backend="triton", config=cfg)  # fmt: skip
    with pytest.raises(ConfigError, match="int8 codes"):
        w4a4_matmul(a.to(torch.float8_e4m3fn), ones_m, pack_int4(w), ones_n, None, backend="triton", config=cfg)
    with pytest.raises(ConfigError, match="block_k"):
        w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, backend="triton", config=SlicedConfig(32, 128, 4))
    with pytest.raises(ConfigError, match="preload must be"):
        w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, backend="triton", config=SlicedConfig(preload=3))
    with pytest.raises(ConfigError, match="release must be one of"):
        w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, backend="triton", config=SlicedConfig(release="end"))


def test_small_m_kernel_switch(monkeypatch):
    """Default: dp4a up to DP4A_MAX_TOKENS (one token included), the sliced tensor-core kernel up to 16, the GEMM
    above; the environment variable moves all of 1–16 to one kernel, and an unknown name is an error."""
    import fptquant.kernels.triton_w4a4_dp4a as dp4a
    import fptquant.kernels.triton_w4a4_sliced as sliced
    from fptquant.kernels.w4a4_matmul import DP4A_MAX_TOKENS

    calls = []

    def spy(module, name, kind):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **kw: calls.append((kind, a[0].shape[0])) or real(*a, **kw))

    spy(dp4a, "dp4a_matmul", "dp4a")
    spy(sliced, "sliced_matmul", "sliced")
    a, w, sa, sw, bias = problem(20, 40, 576, seed=3)
    packed = pack_int4(w)
    expected = w4a4_matmul_reference(a, sa, packed, sw, bias)
    for tokens in (1, DP4A_MAX_TOKENS, DP4A_MAX_TOKENS + 1, 16, 20):
        out = w4a4_matmul(a[:tokens], sa[:tokens], packed, sw, bias, backend="triton")
        torch.testing.assert_close(out.double(), expected[:tokens].double(), rtol=2**-7, atol=1e-5)
    assert calls == [("dp4a", 1), ("dp4a", DP4A_MAX_TOKENS), ("sliced", DP4A_MAX_TOKENS + 1), ("sliced", 16)]
    for kind in ("dp4a", "sliced"):
        monkeypatch.setenv("FPTQUANT_SMALL_M_KERNEL", kind)
        calls.clear()
        for tokens in (1, 2, 12):
            w4a4_matmul(a[:tokens], sa[:tokens], packed, sw, bias, backend="triton")
        assert calls == [(kind, 1), (kind, 2), (kind, 12)]
    monkeypatch.setenv("FPTQUANT_SMALL_M_KERNEL", "gemm")
    calls.clear()
    w4a4_matmul(a[:5], sa[:5], packed, sw, bias, backend="triton")
    assert calls == []
    monkeypatch.setenv("FPTQUANT_SMALL_M_KERNEL", "cutlass")
    with pytest.raises(ConfigError, match="FPTQUANT_SMALL_M_KERNEL"):
        w4a4_matmul(a[:5], sa[:5], packed, sw, bias, backend="triton")


@pytest.mark.parametrize("config", [GemvConfig(), None], ids=["gemv", "default"])
def test_one_token_long_k_all_non_negative_is_exact(config):
    a, w, *_ = problem(1, 32, 14336, seed=7, non_negative=True)
    ones_m, ones_n = torch.ones(1, 1, device=DEVICE), torch.ones(32, device=DEVICE)
    acc = w4a4_matmul(a, ones_m, pack_int4(w), ones_n, None, torch.float32, backend="triton", config=config)
    exact = a.double() @ w.double().T
    assert exact.min() > 2**16 and torch.equal(acc.double(), exact)


def test_long_k_all_non_negative_is_exact():
    """Sums up to 49·K: where an inexact FP8 accumulator loses low bits (kernels.md §1 B)."""
    m, n, k = 16, 32, 4096
    a, w, *_ = problem(m, n, k, seed=5, non_negative=True)
    ones_m, ones_n = torch.ones(m, 1, device=DEVICE), torch.ones(n, device=DEVICE)
    cfg = GemmConfig(16, 32, 256, num_warps=4)
    acc = w4a4_matmul(a.to(torch.float8_e4m3fn), ones_m, pack_int4(w), ones_n, None, torch.float32,
                      backend="triton", config=cfg)  # fmt: skip
    exact = a.double() @ w.double().T
    assert exact.min() > 2**15
    assert torch.equal(acc.double(), exact)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_unpack_weights_kernel(dtype):
    from fptquant.kernels.triton_w4a4_matmul import unpack_weights
    from fptquant.math.packing import unpack_int4

    _, w, *_ = problem(3, 50, 4100)  # 102500 bytes: a partial last block
    out = unpack_weights(pack_int4(w), dtype)
    assert out.dtype == dtype and torch.equal(out.float(), unpack_int4(pack_int4(w)).float())


def test_torch_backend_is_the_reference():
    a, w, sa, sw, bias = problem(5, 24, 64)
    out = w4a4_matmul(a, sa, pack_int4(w), sw, bias, backend="torch")
    assert torch.equal(out, w4a4_matmul_reference(a, sa, pack_int4(w), sw, bias))


def test_bad_inputs_are_named():
    a, w, sa, sw, _ = problem(4, 8, 32)
    packed = pack_int4(w)
    with pytest.raises(ConfigError, match="K=32 but the packed weights hold K=16"):
        w4a4_matmul(a, sa, packed[:, :8], sw, backend="torch")
    with pytest.raises(ConfigError, match="int8 or float8_e4m3fn"):
        w4a4_matmul(a.float(), sa, packed, sw, backend="torch")
    with pytest.raises(ConfigError, match="packed int4 weights are uint8"):
        w4a4_matmul(a, sa, packed.to(torch.int8), sw, backend="torch")
    with pytest.raises(ConfigError, match="scales must be"):
        w4a4_matmul(a, sa[:2], packed, sw, backend="torch")


@pytest.mark.parametrize("n,k", [(96, 576), (80, 1536), (48, 9 * 64), (17, 130)])
@pytest.mark.parametrize("quantizer", [{"clip_ratio": 1.0}, {"clip_ratio": 0.9}, {"static_scale": 0.07}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "config", [None, GemvConfig(block_n=16, block_k_bytes=64, split_k=3)], ids=["default", "split"]
)
def test_quantizing_gemv_equals_quantize_then_matmul(n, k, quantizer, dtype, config):
    """One launch for quantize + GEMV: the same codes as quantize_per_token (bit for bit), so the integer
    sums are exact and the output matches the two-kernel path and the float64 reference."""
    from fptquant.kernels import quantize_per_token_reference
    from fptquant.kernels.triton_w4a4_gemv import quantize_gemv

    g = torch.Generator().manual_seed(n + k)
    x = (torch.randn(1, k, generator=g) * 3).to(dtype).to(DEVICE)
    x[0, 5] = 40.0  # an outlier: with the static scale it clips at the grid's ends
    _, w, _, sw, bias = problem(1, n, k, seed=k)
    packed = pack_int4(w)
    out = quantize_gemv(x, packed, sw, bias, torch.float32, config=config, **quantizer)
    codes, scales = quantize_per_token_reference(x, **quantizer)
    assert codes.abs().sum() > 0
    two_kernels = w4a4_matmul(codes, scales, packed, sw, bias, torch.float32, backend="triton")
    exact = (codes.double() @ w.double().T) * scales.double() * sw.double() + bias.double()
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)  # float32 epilogue, split-K order
    torch.testing.assert_close(out, two_kernels, rtol=1e-5, atol=1e-5)


def test_quantize_w4a4_matmul_dispatch_matches_the_reference_path():
    from fptquant.kernels.w4a4_matmul import quantize_w4a4_matmul

    _, w, _, sw, bias = problem(3, 40, 256, seed=2)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    for rows in (x[:1], x):  # one token: the fused GEMV; three: quantize, then the GEMM
        fused = quantize_w4a4_matmul(rows, pack_int4(w), sw, bias, torch.float32, clip_ratio=0.95)
        ref = quantize_w4a4_matmul(rows, pack_int4(w), sw, bias, torch.float32, clip_ratio=0.95, backend="torch")
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="do not match"):
        quantize_w4a4_matmul(x[:, :100], pack_int4(w), sw)
