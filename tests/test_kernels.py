"""Kernels against their references: bit-exact on the integer codes, and against float64 / fake quant."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fptquant.errors import ConfigError  # noqa: E402
from fptquant.kernels import backend_for, quantize_per_token, quantize_per_token_reference  # noqa: E402
from fptquant.math.quantization import Axis, dynamic_fake_quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Odd sizes on purpose: SmolLM2's hidden 576 (= 9 heads of 64: two power-of-two pieces) and MLP 1536, 70B's
# 28672, 4672 = 4096 + 512 + 64 (three pieces), K that is no sum of three powers of two (one padded tile),
# and 40000 (two passes).
SHAPES = [(7, 576), (5, 1536), (3, 64 * 9), (3, 4672), (2, 5000), (2, 20000), (2, 28672), (2, 40000)]


def rows(m: int, k: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g).add(0.1) * 3
    x[:, :: max(1, k // 7)] *= 8  # outlier channels
    return x.to(DEVICE, dtype)


@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_bit_exact_against_reference(m, k, dtype):
    x = rows(m, k, dtype)
    assert x.abs().amax() > 0
    for kwargs in ({}, {"clip_ratio": 0.9}, {"static_scale": 0.37}):
        q, s = quantize_per_token(x, backend="triton", **kwargs)
        qr, sr = quantize_per_token_reference(x, **kwargs)
        assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (m, 1)
        assert torch.equal(q, qr), kwargs
        assert torch.equal(s, sr), kwargs
        assert int(q.min()) >= -8 and int(q.max()) <= 7


def test_quantize_rounds_half_to_even():
    x = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -6.5, 100.0]], device=DEVICE)
    q, s = quantize_per_token(x, backend="triton", static_scale=1.0)  # 7 / amax = 1: codes are rint(x)
    assert q.tolist() == [[7, 0, 2, 2, 0, -2, -2, 3, -6, 7]]
    assert torch.equal(q, quantize_per_token_reference(x, static_scale=1.0)[0])


def test_quantize_e4m3_codes_match_the_reference_byte_for_byte():
    """e4m3 codes as bytes: -0.4 rounds to zero, written as +0 (0x00) by both, never as e4m3's -0 (0x80)."""
    x = torch.tensor([[7.0, -0.4, 0.4, -0.5, -2.5, -8.6, 3.5, 0.0]], device=DEVICE)
    q, _ = quantize_per_token(x, backend="triton", static_scale=1.0, codes_dtype=torch.float8_e4m3fn)
    qr, _ = quantize_per_token_reference(x, static_scale=1.0, codes_dtype=torch.float8_e4m3fn)
    assert q.float().tolist() == [[7, 0, 0, 0, -2, -8, 4, 0]]
    assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and int((q.view(torch.uint8) == 0x80).sum()) == 0


@pytest.mark.parametrize("m,k", SHAPES)
def test_quantize_against_float64_and_fake_quant(m, k):
    """Codes within ±1 of exact float64 rounding on at most 0.1% of entries; dequantized ≈ fake quant."""
    x = rows(m, k, seed=3)
    q, s = quantize_per_token(x, backend="triton")
    x64 = x.double()
    amax = x64.abs().amax(1, keepdim=True)
    exact = torch.clamp(torch.round(x64 / (amax / 7)), -8, 7)
    diff = (q.double() - exact).abs()
    assert diff.max() <= 1 and (diff > 0).double().mean() <= 1e-3
    torch.testing.assert_close(s.double(), amax / 7, rtol=1e-6, atol=0)
    fake = dynamic_fake_quantize(x, 4, True, Axis.ROW)
    mismatch = ((q.float() * s) - fake).abs() > 1e-6 * x.abs().amax()
    assert mismatch.double().mean() <= 1e-3


def test_backend_switch(monkeypatch):
    x = torch.ones(2, 8)
    assert backend_for(x, "torch") == "torch"
    with pytest.raises(ConfigError, match="kernel backend must be one of"):
        backend_for(x, "cutlass")
    monkeypatch.setenv("FPTQUANT_KERNELS", "torch")
    assert backend_for(x) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not x.is_cuda:
        with pytest.raises(ConfigError, match="needs triton and a CUDA tensor"):
            backend_for(x, "triton")


def close_codes(q: torch.Tensor, ref: torch.Tensor, fraction: float = 1e-3) -> None:
    diff = (q.float() - ref.float()).abs()
    assert int(diff.max()) <= 1 and (diff > 0).double().mean() <= fraction


@pytest.mark.parametrize("k,n1,n2", [(576, 24, 24), (1536, 32, 48), (4096, 64, 64)])
def test_kronecker_transform_quantize(k, n1, n2):
    """FlatQuant's online ``P1ᵀ X P2`` + quantize (24×24 and 32×48 are SmolLM2's and Qwen's sizes):
    against the reference of the same bf16-pair numerics, and against float32 transforms."""
    from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
    from fptquant.math.hadamard import random_orthogonal
    from fptquant.math.kronecker import kron_apply

    g = torch.Generator().manual_seed(k)
    p1 = (random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)).float().to(DEVICE)
    p2 = random_orthogonal(n2, g).float().to(DEVICE)
    x = rows(37, k, torch.bfloat16, seed=k)
    for kwargs in ({}, {"clip_ratio": 0.9}, {"static_scale": 0.2}):
        for codes_dtype in (torch.int8, torch.float8_e4m3fn):
            q, s = transform_quantize(x, p1, p2, backend="triton", codes_dtype=codes_dtype, **kwargs)
            qr, sr = transform_quantize_reference(x, p1, p2, codes_dtype=codes_dtype, **kwargs)
            assert q.dtype == codes_dtype
            close_codes(q, qr)
            torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)
        q32, s32 = quantize_per_token_reference(kron_apply(x.float(), p1, p2), **kwargs)
        close_codes(q, q32, fraction=2e-3)  # bf16 pairs vs float32: about 15 bits
        torch.testing.assert_close(s, s32, rtol=1e-4, atol=0)


@pytest.mark.parametrize("m,n1,n2,nb", [(256, 64, 64, 1), (37, 24, 24, 1), (9, 16, 32, 3)])
def test_transform_quantize_writes_every_output(m, n1, n2, nb):
    """Outputs prefilled with a sentinel: every code and scale is overwritten, and equals the reference
    (a GPU run once left codes unwritten that a reused buffer happened to hold)."""
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(m)
    p1, p2 = random_orthogonal(n1, g).float().to(DEVICE), random_orthogonal(n2, g).float().to(DEVICE)
    x = rows(m, nb * n1 * n2, torch.bfloat16, seed=m)
    codes = torch.full((m, x.shape[1]), 99, dtype=torch.int8, device=DEVICE)
    scales = torch.full((m,), -1.0, device=DEVICE)
    kron_quantize_rows(x, p1, p2, nb, 1.0, None, out=(codes, scales))
    assert int((codes == 99).sum()) == 0 and bool((scales > 0).all())
    qr, sr = transform_quantize_reference(x, p1, p2)
    close_codes(codes, qr)


@pytest.mark.parametrize(
    "n1,n2,nb,tokens,programs",
    [
        (24, 24, 1, 4, 3),  # three programs over four-token tiles
        (32, 48, 1, 2, 1),  # one program loops over every token group
        (16, 32, 3, 4, 2),  # three blocks, two programs: the two-pass dynamic path
        (64, 64, 1, 1, None),  # one tile per token
    ],
)
@pytest.mark.parametrize("static_scale,clip", [(None, 0.95), (None, (0.7, 0.95)), (0.3, 1.0)])
def test_transform_quantize_tuning_knobs_keep_the_numerics(n1, n2, nb, tokens, programs, static_scale, clip):
    """Every tiling the benchmark may pick (tokens per tile, persistent programs) gives
    the reference's codes, with one clip ratio or a learned two-sided (lo, hi) clip; 13 tokens is not a
    multiple of any tile."""
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(n1 * n2 + nb)
    p1 = (random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)).float().to(DEVICE)
    p2 = random_orthogonal(n2, g).float().to(DEVICE)
    x = rows(13, nb * n1 * n2, torch.bfloat16, seed=nb)
    x[3, : n1 * n2] *= 1e-3  # a block far below the rest of its row
    codes = torch.full(x.shape, 99, dtype=torch.int8, device=DEVICE)
    scales = torch.full((13,), -1.0, device=DEVICE)
    kron_quantize_rows(x, p1, p2, nb, clip, static_scale, tokens=tokens, programs=programs,
                       out=(codes, scales))  # fmt: skip
    qr, sr = transform_quantize_reference(x, p1, p2, clip_ratio=clip, static_scale=static_scale)
    if isinstance(clip, tuple):  # the two ends really differ here: the pair is not one ratio in disguise
        one = transform_quantize_reference(x, p1, p2, clip_ratio=clip[1])[1]
        assert not torch.equal(one, sr)
    close_codes(codes, qr)
    torch.testing.assert_close(scales[:, None], sr, rtol=1e-5, atol=0)


class Spy:
    """Records each launch's compile-time arguments; the rest (warmup, ...) is the real kernel's."""

    def __init__(self, real, launched: list):
        self.real, self.launched = real, launched

    def __getitem__(self, grid):
        return lambda *a, **kw: self.launched.append(kw) or self.real[grid](*a, **kw)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("block,nb,m", [(512, 3, 37), (64, 9, 20), (256, 4, 5)])
@pytest.mark.parametrize("static_scale", [None, 0.05])
def test_block_hadamard_on_exact_factors_with_a_gain(monkeypatch, block, nb, m, static_scale):
    """A block Hadamard passed as ±2^-j factors (exact in bfloat16) and the rest of its normalisation as a gain
    (1/√2 for 512 = 16·32, 1/2 for 64 = 8·8, none for 256 = 16·16): the kernel skips both lo dots (P1_LO =
    P2_LO = False), and its codes match the reference and the float64 normalised Hadamard."""
    import fptquant.kernels.triton_blocks_quantize as tbq
    import fptquant.kernels.triton_transform_quantize as tq
    from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
    from fptquant.math.hadamard import hadamard, hadamard_factors

    p1, p2, gain = hadamard_factors(block)
    assert all(torch.equal(p.bfloat16().float(), p) for p in (p1, p2))
    assert gain == {512: 2**-0.5, 64: 0.5, 256: 1.0}[block]
    torch.testing.assert_close(torch.kron(p1, p2).double() * gain, hadamard(block), rtol=0, atol=1e-12)
    launched = []
    for module, name in ((tq, "_kron_quantize_kernel"), (tbq, "_blocks_quantize_kernel")):
        monkeypatch.setattr(module, name, Spy(getattr(module, name), launched))
    x = rows(m, nb * block, torch.bfloat16, seed=block)
    p1, p2 = p1.to(DEVICE), p2.to(DEVICE)
    q, s = transform_quantize(x, p1, p2, static_scale=static_scale, gain=gain, backend="triton")
    assert len(launched) == 1 and not launched[0]["P1_LO"] and not launched[0]["P2_LO"]
    assert launched[0]["GAIN"] == (gain != 1)
    assert ("B0" in launched[0]) == (static_scale is None)  # dynamic scales: the batched kernel, one pass
    qr, sr = transform_quantize_reference(x, p1, p2, static_scale=static_scale, gain=gain)
    close_codes(q.cpu(), qr.cpu())
    torch.testing.assert_close(s.cpu(), sr.cpu(), rtol=1e-5, atol=0)
    h = x.double().cpu().reshape(m, nb, block) @ hadamard(block)  # the transform in float64
    q64, s64 = quantize_per_token_reference(h.reshape(m, -1).float(), static_scale=static_scale)
    close_codes(q.cpu(), q64, fraction=2e-3)
    torch.testing.assert_close(s.cpu(), s64, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    "n1,n2,nb,m,programs,ahead",
    [(16, 32, 28, 3, None, 0), (16, 32, 7, 9, 2, 0), (8, 8, 9, 5, None, 0), (24, 24, 2, 4, 1, 0), (9, 64, 5, 6, 4, 0),
     (16, 32, 8, 7, 2, 2)],
)  # fmt: skip
@pytest.mark.parametrize("numerics", ["bf16-x", "float32-x", "round-mid", "gated"])
def test_batched_rows_of_blocks_match_the_two_passes(n1, n2, nb, m, programs, ahead, numerics):
    """Rows of several blocks with dynamic scales in one pass (the row in registers, blocks as the batch of 3-D
    dots: 28 = 16 + 8 + 4, 9 = 8 + 1, padded 24×24 and 9×64 blocks, fewer programs than tokens; 8 blocks with the
    next two rows read ahead into registers): the codes and scales of the two-pass kernel and of the reference,
    with one clip ratio and a two-sided one, and a block far below the rest of its row."""
    from fptquant.kernels.quantize import gated_product
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(nb * m)
    p1 = (random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)).float()
    p2 = random_orthogonal(n2, g).float()
    if numerics == "round-mid":  # FlatQuant's online_bf16: factors bfloat16 holds
        p1, p2 = p1.bfloat16().float(), p2.bfloat16().float()
    p1, p2 = p1.to(DEVICE), p2.to(DEVICE)
    x = rows(m, nb * n1 * n2, torch.float32 if numerics == "float32-x" else torch.bfloat16, seed=nb)
    x[1, : n1 * n2] *= 1e-3
    up = rows(m, nb * n1 * n2, torch.bfloat16, seed=nb + 1) if numerics == "gated" else None
    for clip in (0.9, (0.7, 0.95)):
        kwargs = {"round_mid": numerics == "round-mid", "up": up}
        q, s = kron_quantize_rows(x, p1, p2, nb, clip, None, batched=True, programs=programs, ahead=ahead, **kwargs)
        q2, s2 = kron_quantize_rows(x, p1, p2, nb, clip, None, batched=False, **kwargs)
        close_codes(q, q2)
        torch.testing.assert_close(s, s2, rtol=1e-6, atol=0)
        source = gated_product(x, up) if up is not None else x
        qr, sr = transform_quantize_reference(source, p1, p2, clip_ratio=clip, round_mid=kwargs["round_mid"])
        close_codes(q, qr)
        torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "n1,n2,m,tokens,programs,ahead",
    [(24, 24, 37, None, None, None), (9, 64, 21, 4, 2, 0), (32, 48, 13, 2, 1, 0), (64, 64, 6, None, None, 0),
     (8, 8, 5, 8, None, 0), (24, 24, 11, 4, None, 0), (24, 24, 13, None, 3, 2), (9, 64, 21, 4, 2, 1)],
)  # fmt: skip
@pytest.mark.parametrize("numerics", ["bf16-x", "float32-x", "round-mid", "gated"])
@pytest.mark.parametrize("static_scale", [None, 0.2])
def test_batched_one_block_rows_match_the_tiled_kernel(n1, n2, m, tokens, programs, ahead, numerics, static_scale):
    """Rows of one block in the batched kernel (a token a step by default, or several tokens as the batch of 3-D
    dots; padded 24×24 and 9×64 blocks, a last step short of tokens, fewer programs than steps; the next one or
    two steps read ahead into registers): the tiled kernel's codes and scales and the reference's, dynamic or
    static, with one clip ratio and a two-sided one, and a token far below the rest."""
    from fptquant.kernels.quantize import gated_product
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(n1 * m)
    p1 = (random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)).float()
    p2 = random_orthogonal(n2, g).float()
    if numerics == "round-mid":
        p1, p2 = p1.bfloat16().float(), p2.bfloat16().float()
    p1, p2 = p1.to(DEVICE), p2.to(DEVICE)
    x = rows(m, n1 * n2, torch.float32 if numerics == "float32-x" else torch.bfloat16, seed=m)
    x[2] *= 1e-3
    up = rows(m, n1 * n2, torch.bfloat16, seed=m + 1) if numerics == "gated" else None
    for clip in (0.9, (0.7, 0.95)):
        kwargs = {"round_mid": numerics == "round-mid", "up": up}
        codes = torch.full(x.shape, 99, dtype=torch.int8, device=DEVICE)
        scales = torch.full((m,), -1.0, device=DEVICE)
        kron_quantize_rows(x, p1, p2, 1, clip, static_scale, batched=True, tokens=tokens, programs=programs,
                           ahead=ahead, out=(codes, scales), **kwargs)  # fmt: skip
        q2, s2 = kron_quantize_rows(x, p1, p2, 1, clip, static_scale, batched=False, **kwargs)
        close_codes(codes, q2)
        torch.testing.assert_close(scales[:, None], s2, rtol=1e-6, atol=0)
        source = gated_product(x, up) if up is not None else x
        qr, sr = transform_quantize_reference(source, p1, p2, clip_ratio=clip, static_scale=static_scale,
                                              round_mid=kwargs["round_mid"])  # fmt: skip
        close_codes(codes, qr)
        torch.testing.assert_close(scales[:, None], sr, rtol=1e-5, atol=0)


def test_batched_refuses_rows_it_cannot_hold():
    """``batched=True`` where the kernel does not apply is a clear error, not a silent fallback: more than three
    power-of-two runs of blocks (15 = 8 + 4 + 2 + 1), a row past 16384 values, several tokens of rows of several
    blocks, tokens a step that are not a power of two or exceed 16384 values, steps read ahead of a row of several
    runs of blocks (6 = 4 + 2) or more than two; and steps read ahead in the tiled kernel."""
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows

    p = torch.eye(16, device=DEVICE)
    for nb, tokens, ahead in ((15, None, 0), (128, None, 0), (4, 2, 0), (1, 3, 0), (1, 128, 0), (6, None, 1),
                              (1, None, 3)):  # fmt: skip
        x = torch.randn(2, nb * 256, device=DEVICE, dtype=torch.bfloat16)
        with pytest.raises(ConfigError, match="batched transform quantize cannot"):
            kron_quantize_rows(x, p, p, nb, 1.0, None, batched=True, tokens=tokens, ahead=ahead)
    with pytest.raises(ConfigError, match="ahead is a knob of the batched"):
        kron_quantize_rows(torch.randn(2, 256, device=DEVICE, dtype=torch.bfloat16), p, p, 1, 1.0, None,
                           batched=False, ahead=1)  # fmt: skip


@pytest.mark.parametrize(
    "n1,n2,m,batched", [(9, 64, 21, None), (9, 64, 6, False), (32, 128, 5, None), (4, 16, 9, True)]
)
@pytest.mark.parametrize("round_mid", [False, True])
@pytest.mark.parametrize("static_scale", [None, 0.3])
def test_head_mixing_leaves_out_the_identity_dot(monkeypatch, n1, n2, m, batched, round_mid, static_scale):
    """FlatQuant's head mixing ``M ⊗ I`` before o_proj: the kernels see ``P2 = I`` (P2_EYE) and take ``Y`` as
    the second dot would give it; the codes and scales are the reference's, for the tiled and the batched kernel,
    with float32 and bfloat16 mid products; a ``P2`` one entry off the identity is not taken for it."""
    import fptquant.kernels.triton_blocks_quantize as tbq
    import fptquant.kernels.triton_transform_quantize as tq
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.math.hadamard import random_orthogonal

    launched = []
    for module, name in ((tq, "_kron_quantize_kernel"), (tbq, "_blocks_quantize_kernel")):
        monkeypatch.setattr(module, name, Spy(getattr(module, name), launched))
    g = torch.Generator().manual_seed(n1 * m)
    p1 = random_orthogonal(n1, g).float()
    p1 = (p1.bfloat16().float() if round_mid else p1).to(DEVICE)
    eye = torch.eye(n2, device=DEVICE)
    x = rows(m, n1 * n2, torch.bfloat16, seed=m)
    q, s = tq.kron_quantize_rows(x, p1, eye, 1, 0.9, static_scale, round_mid=round_mid, batched=batched)
    qr, sr = transform_quantize_reference(x, p1, eye, clip_ratio=0.9, static_scale=static_scale, round_mid=round_mid)
    close_codes(q, qr)
    torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)
    near = eye.clone()
    near[1, 0] = 2**-6
    tq.kron_quantize_rows(x, p1, near, 1, 0.9, static_scale, round_mid=round_mid, batched=batched)
    assert [launch["P2_EYE"] for launch in launched] == [True, False]


@pytest.mark.parametrize(
    "n1,n2,nb,m,kind",
    [(24, 24, 1, 37, "kron"), (32, 48, 1, 9, "kron"), (112, 128, 1, 3, "kron"), (16, 32, 3, 13, "kron"),
     (9, 64, 1, 21, "heads")],
)  # fmt: skip
@pytest.mark.parametrize("static_scale", [None, 0.2])
def test_bf16_numerics_round_the_mid_product(n1, n2, nb, m, kind, static_scale):
    """``round_mid`` (FlatQuant's bfloat16 online numerics, factors exact in bfloat16): the kernel rounds
    ``W = P1ᵀX`` to bfloat16 and takes one product per factor; its codes match the reference of the same
    numerics, which really differs from the float32 numerics and stays close to a float64 transform."""
    from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(n1 * n2 + m)
    p1 = (random_orthogonal(n1, g) * torch.rand(n1, generator=g).add(0.5)).bfloat16().float().to(DEVICE)
    p2 = torch.eye(n2) if kind == "heads" else random_orthogonal(n2, g).bfloat16().float()
    p2 = p2.to(DEVICE)
    x = rows(m, nb * n1 * n2, torch.bfloat16, seed=n1)
    q, s = transform_quantize(x, p1, p2, static_scale=static_scale, round_mid=True, backend="triton")
    qr, sr = transform_quantize_reference(x, p1, p2, static_scale=static_scale, round_mid=True)
    close_codes(q.cpu(), qr.cpu())
    torch.testing.assert_close(s.cpu(), sr.cpu(), rtol=1e-5, atol=0)
    q32 = transform_quantize_reference(x, p1, p2, static_scale=static_scale)[0]
    assert not torch.equal(q32.cpu(), qr.cpu())  # the rounding is real
    view = x.double().cpu().reshape(m, nb, n1, n2)
    y64 = (p1.double().cpu().t() @ view @ p2.double().cpu()).reshape(m, -1)
    q64, s64 = quantize_per_token_reference(y64.float(), static_scale=static_scale)
    close_codes(q.cpu(), q64, fraction=0.03)  # bfloat16's 8 bits against INT4's 3: a code moves on a few %
    torch.testing.assert_close(s.cpu(), s64, rtol=1e-2, atol=0)


def test_transform_quantize_sees_factors_changed_in_place():
    """The padded bf16 factors are kept between calls; changing a factor in place must not reuse them."""
    from fptquant.kernels.transform_quantize import transform_quantize_reference
    from fptquant.kernels.triton_transform_quantize import kron_quantize_rows
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(5)
    p1, p2 = random_orthogonal(16, g).float().to(DEVICE), random_orthogonal(16, g).float().to(DEVICE)
    x = rows(6, 256, seed=5)
    before, _ = kron_quantize_rows(x, p1, p2, 1, 1.0, 1.0)
    p1.mul_(3.0)
    q, _ = kron_quantize_rows(x, p1, p2, 1, 1.0, 1.0)
    close_codes(q, transform_quantize_reference(x, p1, p2, static_scale=1.0)[0])
    assert not torch.equal(q, before)


def test_transform_quantize_rejects_bad_tiles():
    from fptquant.kernels.triton_transform_quantize import tile_shape

    assert tile_shape(24, 24) == (2, 32, 32)  # 64 rows: one warpgroup's wgmma tile
    assert tile_shape(112, 128) == (1, 128, 128)
    assert tile_shape(16, 32) == (4, 16, 32)
    assert tile_shape(16, 512) == (2, 16, 512)  # 4 tokens would exceed MAX_TILE
    with pytest.raises(ConfigError, match="power of two"):
        tile_shape(24, 24, tokens=3)
    with pytest.raises(ConfigError, match="exceeds"):
        tile_shape(128, 128, tokens=2)


def test_transform_quantize_takes_any_float32_range():
    """Activations far beyond fp16's range (1e6) and tiny ones (1e-6), in float32 (split into bf16 pairs
    in the kernel) and in bf16: the tensor-core path stays finite and equal to the reference."""
    from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
    from fptquant.math.hadamard import random_orthogonal

    g = torch.Generator().manual_seed(1)
    p1, p2 = random_orthogonal(16, g).float().to(DEVICE), random_orthogonal(32, g).float().to(DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        x = rows(4, 512, seed=2)
        x[0] *= 1e6
        x[1] *= 1e-6
        x = x.to(dtype)
        q, s = transform_quantize(x, p1, p2, backend="triton")
        qr, sr = transform_quantize_reference(x, p1, p2)
        assert torch.isfinite(s).all() and s[0] > 1e4 and s[1] < 1e-4
        close_codes(q, qr)
        torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)


def test_block_hadamard_quantize_matches_the_online_hadamard():
    """Blocks of H_16 ⊗ H_32 = H_512 reproduce FPTQuant's / QuaRot's online block Hadamard before down_proj
    (3 blocks of 512: a block count that is not a power of two)."""
    from fptquant.kernels.transform_quantize import transform_quantize, transform_quantize_reference
    from fptquant.math.hadamard import hadamard
    from fptquant.math.online import OnlineHadamard

    h16, h32 = hadamard(16).float(), hadamard(32).float()
    torch.testing.assert_close(torch.kron(h16, h32), hadamard(512).float())
    x = rows(4, 1536, seed=9)
    q, s = transform_quantize(x, h16.to(DEVICE), h32.to(DEVICE), backend="triton")
    qr, sr = transform_quantize_reference(x, h16.to(DEVICE), h32.to(DEVICE))
    close_codes(q, qr)
    torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)
    online = OnlineHadamard(1536, 512).to(DEVICE)
    q32, s32 = quantize_per_token_reference(online(x))
    close_codes(q, q32, fraction=2e-2)
    torch.testing.assert_close(s, s32, rtol=2e-3, atol=0)


def test_transform_quantize_rejects_bad_factors():
    from fptquant.kernels.transform_quantize import transform_quantize

    with pytest.raises(ConfigError, match="not a multiple"):
        transform_quantize(torch.ones(2, 100), torch.eye(3), torch.eye(7), backend="torch")
