"""One pass over rows of several transform blocks with dynamic scales (a block Hadamard's ``T_d``: 28 blocks of
16×32 a LLaMA-3-8B down_proj row), for :mod:`.triton_transform_quantize`.

That kernel tiles ``T`` tokens × one block, so a row of ``nb`` blocks with a per-token scale takes two passes:
the row's range over all its blocks, then the codes, transforming every block twice (55–57% of copy bandwidth on
the H100, against 94% for the one-pass static scale). Here a program takes one token's whole row at once, its
blocks as the batch of 3-D dots (``W = P1ᵀ·X`` and ``Y = W·P2`` per block, no block-diagonal padding), keeps
``Y`` in registers for the range, and writes the codes from it. ``nb`` is taken as up to three power-of-two
pieces of blocks (28 = 16 + 8 + 4), so no batch slot is padding. The numerics are :func:`._tile`'s, product for
product: the same ``hi``/``lo`` dots, ``ROUND_MID``, ``GAIN`` and ``GATED``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..errors import ConfigError
from .backend import stages_that_fit
from .triton_pdl import release_dependents, wait_for_inputs
from .triton_quantize import _int4_codes, _swiglu, _upper_half
from .triton_transform_quantize import MAX_TILE, _clipped_amax, _resident_programs, _transform


@triton.jit
def _blocks(
    x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, FIRST: tl.constexpr, B: tl.constexpr, n1: tl.constexpr,
    n2: tl.constexpr, stride_x, stride_u, N1: tl.constexpr, N2: tl.constexpr, X_SPLIT: tl.constexpr,
    P1_LO: tl.constexpr, P2_LO: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr, GATED: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y`` of blocks ``FIRST .. FIRST+B-1`` of token ``tok``, float32 ``(B, N1, N2)``."""
    col = _columns(FIRST, B, n1, n2, N1, N2)
    mask = _real(N1, N2, n1, n2)
    x = tl.load(x_ptr + tl.cast(tok, tl.int64) * stride_x + col, mask=mask, other=0.0)
    if GATED:  # masked lanes: silu(0) · 0 = 0
        x = _swiglu(x, tl.load(u_ptr + tl.cast(tok, tl.int64) * stride_u + col, mask=mask, other=0.0))
        if not X_SPLIT:
            x = _upper_half(x)
    p1h, p1l = tl.broadcast_to(p1h[None], (B, N1, N1)), tl.broadcast_to(p1l[None], (B, N1, N1))
    p2h, p2l = tl.broadcast_to(p2h[None], (B, N2, N2)), tl.broadcast_to(p2l[None], (B, N2, N2))
    return _transform(x, p1h, p1l, p2h, p2l, gain, X_SPLIT, P1_LO, P2_LO, GAIN, ROUND_MID, UPCAST)


@triton.jit
def _columns(FIRST: tl.constexpr, B: tl.constexpr, n1: tl.constexpr, n2: tl.constexpr, N1: tl.constexpr,
             N2: tl.constexpr):  # fmt: skip
    blk = FIRST + tl.arange(0, B)[:, None, None]
    return blk * (n1 * n2) + tl.arange(0, N1)[None, :, None] * n2 + tl.arange(0, N2)[None, None, :]


@triton.jit
def _real(N1: tl.constexpr, N2: tl.constexpr, n1: tl.constexpr, n2: tl.constexpr):
    """The lanes of a block that hold values (the factors are padded to powers of two)."""
    return (tl.arange(0, N1)[None, :, None] < n1) & (tl.arange(0, N2)[None, None, :] < n2)


@triton.jit
def _range(y, SYMMETRIC: tl.constexpr):
    """``(max, min)`` of all of ``y`` (``(max|y|, -max|y|)`` with SYMMETRIC). Padded lanes hold zeros, which
    never change the clipped range ``max(-min·lo, max·hi)``."""
    if SYMMETRIC:
        top = tl.max(tl.abs(y))
        return top, -top
    return tl.max(y), tl.min(y)


@triton.jit
def _store_blocks(q_ptr, y, inv, tok, FIRST: tl.constexpr, B: tl.constexpr, n1: tl.constexpr, n2: tl.constexpr,
                  stride_q, N1: tl.constexpr, N2: tl.constexpr):  # fmt: skip
    q = _int4_codes(y * inv, q_ptr.dtype.element_ty)
    col = _columns(FIRST, B, n1, n2, N1, N2)
    tl.store(q_ptr + tl.cast(tok, tl.int64) * stride_q + col, q, mask=_real(N1, N2, n1, n2))


@triton.jit
def _blocks_quantize_kernel(
    x_ptr, u_ptr, p1_ptr, p2_ptr, q_ptr, s_ptr, M, stride_x, stride_u, stride_q, clip_lo, clip_hi, eps_amax, gain,
    n1: tl.constexpr, n2: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr,
    SYMMETRIC: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, X_SPLIT: tl.constexpr, P1_LO: tl.constexpr,
    P2_LO: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
    STAGES: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    release_dependents(PDL)  # as in the tiled kernel (.triton_pdl)
    wait_for_inputs(PDL)
    i, c = tl.arange(0, N1), tl.arange(0, N2)
    p1h = tl.load(p1_ptr + i[:, None] * N1 + i[None, :])  # P1ᵀ, padded: the hi half, then the lo half
    p1l = p1h  # unused unless P1_LO
    if P1_LO:
        p1l = tl.load(p1_ptr + N1 * N1 + i[:, None] * N1 + i[None, :])
    p2h = tl.load(p2_ptr + c[:, None] * N2 + c[None, :])
    p2l = p2h
    if P2_LO:
        p2l = tl.load(p2_ptr + N2 * N2 + c[:, None] * N2 + c[None, :])
    for tok in tl.range(tl.program_id(0), M, tl.num_programs(0), num_stages=STAGES):
        y0 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, 0, B0, n1, n2, stride_x, stride_u, N1, N2,
                     X_SPLIT, P1_LO, P2_LO, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
        top, bottom = _range(y0, SYMMETRIC)
        if B1 > 0:
            y1 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, B0, B1, n1, n2, stride_x, stride_u, N1, N2,
                         X_SPLIT, P1_LO, P2_LO, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
            top1, bottom1 = _range(y1, SYMMETRIC)
            top, bottom = tl.maximum(top, top1), tl.minimum(bottom, bottom1)
        if B2 > 0:
            y2 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, tok, B0 + B1, B2, n1, n2, stride_x, stride_u,
                         N1, N2, X_SPLIT, P1_LO, P2_LO, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
            top2, bottom2 = _range(y2, SYMMETRIC)
            top, bottom = tl.maximum(top, top2), tl.minimum(bottom, bottom2)
        amax = _clipped_amax(top, bottom, clip_lo, clip_hi, eps_amax)
        inv = tl.math.div_rn(7.0 + tl.zeros_like(amax), amax)
        tl.store(s_ptr + tok, tl.math.div_rn(amax, 7.0 + tl.zeros_like(amax)))
        _store_blocks(q_ptr, y0, inv, tok, 0, B0, n1, n2, stride_q, N1, N2)
        if B1 > 0:
            _store_blocks(q_ptr, y1, inv, tok, B0, B1, n1, n2, stride_q, N1, N2)
        if B2 > 0:
            _store_blocks(q_ptr, y2, inv, tok, B0 + B1, B2, n1, n2, stride_q, N1, N2)


def block_pieces(nb: int) -> tuple[int, int, int] | None:
    """``nb`` blocks as at most three power-of-two counts, largest first, zeros for absent ones (28 → 16, 8, 4);
    None where it takes more."""
    counts = [1 << b for b in range(nb.bit_length() - 1, -1, -1) if nb >> b & 1]
    return tuple(counts + [0] * (3 - len(counts))) if len(counts) <= 3 else None


def fits_one_pass(nb: int, n1p: int, n2p: int) -> bool:
    """Whether a row of ``nb`` padded ``n1p×n2p`` blocks takes the one-pass kernel."""
    return nb > 1 and block_pieces(nb) is not None and nb * n1p * n2p <= MAX_TILE


def launch_one_pass(args: tuple, constants: dict, nb: int, programs: int | None) -> None:
    """Launch the kernel on the tiled kernel's arguments and constants (``T = 1``: its ``I_T ⊗ P1ᵀ`` is ``P1ᵀ``);
    ``programs`` None: as many as the GPU holds at once, at most one a token."""
    pieces = block_pieces(nb)
    if pieces is None or constants["T"] != 1:
        raise ConfigError(f"{nb} blocks a row do not fit the one-pass kernel (at most three powers of two)")
    x, u, p1s, p2s, codes, scales, m, _, sx, su, sq, lo, hi, _, eps, gain = args
    keep = ("n1", "n2", "SYMMETRIC", "N1", "N2", "X_SPLIT", "P1_LO", "P2_LO", "GAIN", "ROUND_MID", "GATED", "UPCAST",
            "STAGES", "PDL", "launch_pdl", "num_warps")  # fmt: skip
    args = (x, u, p1s, p2s, codes, scales, m, sx, su, sq, lo, hi, eps, gain)
    constants = {key: constants[key] for key in keep} | {"B0": pieces[0], "B1": pieces[1], "B2": pieces[2]}
    if programs is None:
        held = _resident_programs(_blocks_quantize_kernel, x.device.index or 0, args, constants) if x.is_cuda else m
        programs = min(m, held)
    _blocks_quantize_kernel[(max(1, programs),)](*args, **constants)


def one_pass_knobs(
    nb: int, n1p: int, n2p: int, num_warps: int | None, stages: int | None, x_bytes: int = 2, gated: bool = False
) -> dict:
    """Four warps; three rows of ``x`` in flight up to 32 KB a row, else two (fewer where they do not fit in shared
    memory). The H100 sweeps of session 22 at 28 blocks of 16×32, M = 8192: 92.5% of copy bandwidth with three
    rows, against 80% with two and 55% with one (eight warps: 64%, 46%, 35%; 160 registers a thread leave one
    program an SM); the gated form (gate and up, 56 KB a row) 62% with two, against 42% with three and 51% with
    one."""
    row = nb * n1p * n2p * x_bytes * (2 if gated else 1)
    return {"num_warps": num_warps or 4, "STAGES": stages or stages_that_fit(3 if row <= 32768 else 2, row, 16384) or 1}
