"""Programmatic dependent launch (kernels/triton_pdl.py): a decode GEMM starts while the quantize before it runs,
and a quantize while the GEMM before it runs, so each must still read what the kernel before it wrote, and
never overwrite what that kernel still reads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from fptquant.kernels import quantize_per_token  # noqa: E402
from fptquant.kernels.triton_pdl import DECODE_MAX_TOKENS, programmatic_launch  # noqa: E402
from fptquant.kernels.w4a4_matmul import default_config, w4a4_matmul, w4a4_matmul_reference  # noqa: E402
from fptquant.math.packing import pack_int4  # noqa: E402


def test_launch_mode_is_off_where_it_cannot_run(monkeypatch):
    assert not programmatic_launch(torch.device("cpu"))
    if torch.cuda.is_available():
        monkeypatch.setenv("FPTQUANT_PDL", "0")
        assert not programmatic_launch(torch.device("cuda"))


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.skipif(not _hopper(), reason="programmatic dependent launch needs a Hopper GPU")
def test_launch_mode_is_for_decode_sized_calls_that_say_their_tokens():
    cuda = torch.device("cuda")
    assert programmatic_launch(cuda) and programmatic_launch(cuda, tokens=DECODE_MAX_TOKENS)
    assert not programmatic_launch(cuda, tokens=DECODE_MAX_TOKENS + 1)


@pytest.mark.skipif(not _hopper(), reason="programmatic dependent launch needs a Hopper GPU")
@pytest.mark.parametrize("m,preload", [(1, None), (4, None), (16, None), (16, 0), (16, 2)])
@pytest.mark.parametrize("k", [4096, 14336])
@pytest.mark.parametrize("gated", [False, True])
def test_gemm_launched_early_reads_the_codes_of_the_quantize_before_it(m, preload, k, gated):
    """Ten back-to-back linears on different inputs, eagerly and as one CUDA graph: each output equals the
    reference of its own input. K = 14336 keeps the quantize (one program a row) long enough for a GEMM that
    read too early to see the previous call's codes; at 16 tokens K = 4096 is the sliced kernel launched early,
    with the default's steps of weights read before its wait, none or two (``preload``)."""
    assert programmatic_launch(torch.device("cuda"))
    n, calls = 4096, 10
    g = torch.Generator(device="cuda").manual_seed(m)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g) * (1 + i) for i in range(calls)]
    ups = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(calls)]
    packed = pack_int4(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8, generator=g))
    sw = torch.rand(n, device="cuda", generator=g) * 0.01 + 0.001

    def linear(i: int) -> torch.Tensor:
        q, s = quantize_per_token(xs[i], up=ups[i] if gated else None, backend="triton")
        cfg = default_config(q, packed)
        cfg = cfg if preload is None else replace(cfg, preload=preload)
        return w4a4_matmul(q, s, packed, sw, None, torch.float32, backend="triton", config=cfg)

    refs = []
    for i in range(calls):  # the same kernel's codes, finished before anything reads them
        q, s = quantize_per_token(xs[i], up=ups[i] if gated else None, backend="triton")
        torch.cuda.synchronize()
        refs.append(w4a4_matmul_reference(q, s, packed, sw, None, torch.float32))
    eager = [linear(i) for i in range(calls)]
    linear(0)  # compiled outside the capture
    graph, captured = torch.cuda.CUDAGraph(), []
    with torch.cuda.graph(graph):
        captured = [linear(i) for i in range(calls)]
    graph.replay()
    torch.cuda.synchronize()
    for i in range(calls):
        torch.testing.assert_close(eager[i], refs[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(captured[i], refs[i], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _hopper(), reason="programmatic dependent launch needs a Hopper GPU")
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("release", ["after_loop", "start"])
def test_quantize_launched_early_reads_the_output_of_the_gemm_before_it(m, release):
    """Ten linears in a chain, each quantizing the previous one's bf16 output, eagerly and as one CUDA graph:
    bit for bit what the same kernels give with the device synchronized after every launch (a quantize that
    read too early would see an older output in the same memory; one that wrote too early would overwrite codes
    the GEMM before it still reads)."""
    n = k = 4096
    g = torch.Generator(device="cuda").manual_seed(7 + m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    packed = pack_int4(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8, generator=g))
    sw = torch.rand(n, device="cuda", generator=g) * 0.01 + 0.001

    def chain(sync: bool) -> list[torch.Tensor]:
        outs, y = [], x
        for _ in range(10):
            q, s = quantize_per_token(y, backend="triton")
            if sync:
                torch.cuda.synchronize()
            cfg = replace(default_config(q, packed), release=release)
            y = w4a4_matmul(q, s, packed, sw, None, torch.bfloat16, backend="triton", config=cfg)
            if sync:
                torch.cuda.synchronize()
            outs.append(y)
        return outs

    refs = chain(sync=True)
    eager = chain(sync=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain(sync=False)
    graph.replay()
    torch.cuda.synchronize()
    assert refs[-1].abs().max() > refs[0].abs().max() > 0  # the chain carries the signal through
    for i in range(10):
        assert torch.equal(eager[i], refs[i]) and torch.equal(captured[i], refs[i]), f"linear {i} of the chain"
