"""The transform quantize with its blocks as the batch of 3-D dots, for :mod:`.triton_transform_quantize`: a
step is one token's row of several blocks (a block Hadamard's ``T_d``: 28 blocks of 16×32 a LLaMA-3-8B down_proj
row), or the one block of a token's row, or of several (SmolLM2's 24×24 and 9×64).

That kernel tiles ``T`` tokens × one block, so a row of ``nb`` blocks with a per-token scale takes two passes:
the row's range over all its blocks, then the codes, transforming every block twice (55–57% of copy bandwidth on
the H100, against 94% for the one-pass static scale). Here a step holds a token's whole row at once, its blocks
as the batch of dots (``W = P1ᵀ·X`` and ``Y = W·P2`` per block, no block-diagonal padding), keeps ``Y`` in
registers for the range, and writes the codes from it. ``nb`` is taken as up to three power-of-two pieces of
blocks (28 = 16 + 8 + 4), so no batch slot is padding. For small blocks the tiled kernel's ``I_T ⊗ P1ᵀ`` spends
most of its first dot on zeros, and its four warps meet at block-wide barriers around every layout change; here
a one-warp program takes a token a step by default (``tokens`` a step: several tokens as the batch). The
numerics are :func:`._tile`'s, product for product: the same ``hi``/``lo`` dots, ``ROUND_MID``, ``GAIN`` and
``GATED``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .backend import stages_that_fit
from .triton_pdl import release_dependents, wait_for_inputs
from .triton_quantize import _int4_codes, _swiglu, _upper_half
from .triton_transform_quantize import MAX_TILE, _clipped_amax, _load_factors, _resident_programs, _transform


@triton.jit
def _load_blocks(
    x_ptr, u_ptr, step, M, FIRST: tl.constexpr, B: tl.constexpr, TOKENS: tl.constexpr, n1: tl.constexpr,
    n2: tl.constexpr, stride_x, stride_u, N1: tl.constexpr, N2: tl.constexpr, GATED: tl.constexpr,
):  # fmt: skip
    """``x`` (and ``up`` with GATED, else ``x`` again) of the batch ``FIRST .. FIRST+B-1`` of step ``step``
    (:func:`_offsets`), ``(B, N1, N2)``; zeros where the step is past the last one."""
    live = step * TOKENS + 0 * tl.arange(0, B) < M  # a tensor: the interpreter takes no scalar mask term
    mask = _mask(step, M, B, TOKENS, n1, n2, N1, N2) & live[:, None, None]
    x = tl.load(x_ptr + _offsets(step, FIRST, B, TOKENS, n1, n2, N1, N2, stride_x), mask=mask, other=0.0)
    u = x
    if GATED:
        u = tl.load(u_ptr + _offsets(step, FIRST, B, TOKENS, n1, n2, N1, N2, stride_u), mask=mask, other=0.0)
    return x, u


@triton.jit
def _blocks_of(
    x, u, p1h, p1l, p2h, p2l, gain, B: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, X_SPLIT: tl.constexpr,
    P1_LO: tl.constexpr, P2_LO: tl.constexpr, P2_EYE: tl.constexpr, GAIN: tl.constexpr, ROUND_MID: tl.constexpr,
    GATED: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y`` of a batch of loaded blocks (:func:`_load_blocks`), float32 ``(B, N1, N2)``."""
    if GATED:  # masked lanes: silu(0) · 0 = 0
        x = _swiglu(x, u)
        if not X_SPLIT:
            x = _upper_half(x)
    p1h, p1l = tl.broadcast_to(p1h[None], (B, N1, N1)), tl.broadcast_to(p1l[None], (B, N1, N1))
    p2h, p2l = tl.broadcast_to(p2h[None], (B, N2, N2)), tl.broadcast_to(p2l[None], (B, N2, N2))
    return _transform(x, p1h, p1l, p2h, p2l, gain, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, UPCAST)


@triton.jit
def _blocks(
    x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, step, M, FIRST: tl.constexpr, B: tl.constexpr, TOKENS: tl.constexpr,
    n1: tl.constexpr, n2: tl.constexpr, stride_x, stride_u, N1: tl.constexpr, N2: tl.constexpr,
    X_SPLIT: tl.constexpr, P1_LO: tl.constexpr, P2_LO: tl.constexpr, P2_EYE: tl.constexpr, GAIN: tl.constexpr,
    ROUND_MID: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``Y`` of the batch ``FIRST .. FIRST+B-1`` of step ``step`` (:func:`_offsets`), float32 ``(B, N1, N2)``."""
    x, u = _load_blocks(x_ptr, u_ptr, step, M, FIRST, B, TOKENS, n1, n2, stride_x, stride_u, N1, N2, GATED)
    return _blocks_of(x, u, p1h, p1l, p2h, p2l, gain, B, N1, N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID,
                      GATED, UPCAST)  # fmt: skip


@triton.jit
def _offsets(step, FIRST: tl.constexpr, B: tl.constexpr, TOKENS: tl.constexpr, n1: tl.constexpr, n2: tl.constexpr,
             N1: tl.constexpr, N2: tl.constexpr, stride):  # fmt: skip
    """Element offsets ``(B, N1, N2)`` of a batch: blocks ``FIRST + j`` of token ``step`` (TOKENS = 1), or the
    one block of tokens ``step·TOKENS + j``."""
    j = tl.arange(0, B)
    if TOKENS == 1:
        base = tl.cast(step, tl.int64) * stride + (FIRST + j) * (n1 * n2)
    else:
        base = (step * TOKENS + j).to(tl.int64) * stride
    return base[:, None, None] + (tl.arange(0, N1)[None, :, None] * n2 + tl.arange(0, N2)[None, None, :])


@triton.jit
def _mask(step, M, B: tl.constexpr, TOKENS: tl.constexpr, n1: tl.constexpr, n2: tl.constexpr, N1: tl.constexpr,
          N2: tl.constexpr):  # fmt: skip
    """The lanes that hold values: the factors are padded to powers of two, the last step's tokens may run out."""
    real = (tl.arange(0, N1)[None, :, None] < n1) & (tl.arange(0, N2)[None, None, :] < n2)
    if TOKENS > 1:
        real = real & ((step * TOKENS + tl.arange(0, B)) < M)[:, None, None]
    return real


@triton.jit
def _range(y, SYMMETRIC: tl.constexpr, PER_ITEM: tl.constexpr):
    """``(max, min)`` of all of ``y``, or of each batch item with PER_ITEM (``(max|y|, -max|y|)`` with
    SYMMETRIC). Padded lanes hold zeros, which never change the clipped range ``max(-min·lo, max·hi)``."""
    v = tl.abs(y) if SYMMETRIC else y
    if PER_ITEM:  # one return: Triton 3.6 types every return of a function alike, constexpr branches too
        top = tl.max(tl.max(v, axis=2), axis=1)
        bottom = -top if SYMMETRIC else tl.min(tl.min(y, axis=2), axis=1)
    else:
        top = tl.max(v)
        bottom = -top if SYMMETRIC else tl.min(y)
    return top, bottom


@triton.jit
def _store_blocks(q_ptr, y, inv, step, M, FIRST: tl.constexpr, B: tl.constexpr, TOKENS: tl.constexpr,
                  n1: tl.constexpr, n2: tl.constexpr, stride_q, N1: tl.constexpr, N2: tl.constexpr):  # fmt: skip
    if TOKENS > 1:
        q = _int4_codes(y * inv[:, None, None], q_ptr.dtype.element_ty)
    else:
        q = _int4_codes(y * inv, q_ptr.dtype.element_ty)
    offs = _offsets(step, FIRST, B, TOKENS, n1, n2, N1, N2, stride_q)
    tl.store(q_ptr + offs, q, mask=_mask(step, M, B, TOKENS, n1, n2, N1, N2))


@triton.jit
def _blocks_quantize_kernel(
    x_ptr, u_ptr, p1_ptr, p2_ptr, q_ptr, s_ptr, M, stride_x, stride_u, stride_q, clip_lo, clip_hi, static_amax,
    eps_amax, gain, n1: tl.constexpr, n2: tl.constexpr, TOKENS: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr,
    B2: tl.constexpr, STATIC: tl.constexpr, SYMMETRIC: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr,
    X_SPLIT: tl.constexpr, P1_LO: tl.constexpr, P2_LO: tl.constexpr, P2_EYE: tl.constexpr, GAIN: tl.constexpr,
    ROUND_MID: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
    AHEAD: tl.constexpr,
):  # fmt: skip
    """A step is one token's row of ``B0 + B1 + B2`` blocks (TOKENS = 1) or ``TOKENS = B0`` tokens of one block.
    AHEAD > 0 (one batch a step only): the next AHEAD steps are read into registers instead of a pipeline."""
    release_dependents(PDL)  # as in the tiled kernel (.triton_pdl)
    wait_for_inputs(PDL)
    PER_TOKEN: tl.constexpr = TOKENS > 1
    pid, programs, steps = tl.program_id(0), tl.num_programs(0), tl.cdiv(M, TOKENS)
    if AHEAD > 0:  # the first steps' x are read before the factors, so that their reads and the factors' overlap
        xa, ua = _load_blocks(x_ptr, u_ptr, pid, M, 0, B0, TOKENS, n1, n2, stride_x, stride_u, N1, N2, GATED)
        if AHEAD > 1:
            xb, ub = _load_blocks(x_ptr, u_ptr, pid + programs, M, 0, B0, TOKENS, n1, n2, stride_x, stride_u, N1, N2,
                                  GATED)  # fmt: skip
    p1h, p1l, p2h, p2l = _load_factors(p1_ptr, p2_ptr, N1, N2, P1_LO, P2_LO, P2_EYE)  # T = 1: P1ᵀ itself
    for step in tl.range(pid, steps, programs, num_stages=STAGES):
        if AHEAD > 0:  # registers carry the next steps' x (STAGES = 1: no shared-memory pipeline)
            x, u = xa, ua
            if AHEAD > 1:
                xa, ua = xb, ub
                xb, ub = _load_blocks(x_ptr, u_ptr, step + 2 * programs, M, 0, B0, TOKENS, n1, n2, stride_x,
                                      stride_u, N1, N2, GATED)  # fmt: skip
            else:
                xa, ua = _load_blocks(x_ptr, u_ptr, step + programs, M, 0, B0, TOKENS, n1, n2, stride_x, stride_u,
                                      N1, N2, GATED)  # fmt: skip
            y0 = _blocks_of(x, u, p1h, p1l, p2h, p2l, gain, B0, N1, N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN,
                            ROUND_MID, GATED, UPCAST)  # fmt: skip
        else:
            y0 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, step, M, 0, B0, TOKENS, n1, n2, stride_x, stride_u,
                         N1, N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
        top, bottom = _range(y0, SYMMETRIC, PER_TOKEN)
        if B1 > 0:
            y1 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, step, M, B0, B1, TOKENS, n1, n2, stride_x,
                         stride_u, N1, N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
            top1, bottom1 = _range(y1, SYMMETRIC, PER_TOKEN)
            top, bottom = tl.maximum(top, top1), tl.minimum(bottom, bottom1)
        if B2 > 0:
            y2 = _blocks(x_ptr, u_ptr, p1h, p1l, p2h, p2l, gain, step, M, B0 + B1, B2, TOKENS, n1, n2, stride_x,
                         stride_u, N1, N2, X_SPLIT, P1_LO, P2_LO, P2_EYE, GAIN, ROUND_MID, GATED, UPCAST)  # fmt: skip
            top2, bottom2 = _range(y2, SYMMETRIC, PER_TOKEN)
            top, bottom = tl.maximum(top, top2), tl.minimum(bottom, bottom2)
        amax = _clipped_amax(top, bottom, clip_lo, clip_hi, eps_amax)
        if STATIC:  # the range above is then unused, and the compiler drops it
            amax = tl.zeros_like(amax) + static_amax
        inv = tl.math.div_rn(7.0 + tl.zeros_like(amax), amax)
        scale = tl.math.div_rn(amax, 7.0 + tl.zeros_like(amax))
        if PER_TOKEN:
            tok = step * TOKENS + tl.arange(0, TOKENS)
            tl.store(s_ptr + tok, scale, mask=tok < M)
        else:
            tl.store(s_ptr + step, scale)
        _store_blocks(q_ptr, y0, inv, step, M, 0, B0, TOKENS, n1, n2, stride_q, N1, N2)
        if B1 > 0:
            _store_blocks(q_ptr, y1, inv, step, M, B0, B1, TOKENS, n1, n2, stride_q, N1, N2)
        if B2 > 0:
            _store_blocks(q_ptr, y2, inv, step, M, B0 + B1, B2, TOKENS, n1, n2, stride_q, N1, N2)


def block_pieces(nb: int) -> tuple[int, int, int] | None:
    """``nb`` blocks as at most three power-of-two counts, largest first, zeros for absent ones (28 → 16, 8, 4);
    None where it takes more."""
    counts = [1 << b for b in range(nb.bit_length() - 1, -1, -1) if nb >> b & 1]
    return tuple(counts + [0] * (3 - len(counts))) if len(counts) <= 3 else None


def fits_row(nb: int, n1p: int, n2p: int) -> bool:
    """Whether a row of ``nb > 1`` padded ``n1p×n2p`` blocks fits one step (one token's row in registers)."""
    return nb > 1 and block_pieces(nb) is not None and nb * n1p * n2p <= MAX_TILE


SMALL_BLOCK = 1024  # padded values of the largest block whose one-block rows take this kernel by default
PADDED_BLOCK = 2048  # the same, for blocks with padded columns (a step read ahead: :func:`default_ahead`)
AHEAD_VALUES = 16384  # padded values of the steps read ahead an SM holds at most (programs an SM × a step's values)


def step_tokens(nb: int, tokens: int | None) -> int:
    """Tokens a step: one for rows of several blocks; for rows of one block ``tokens``, by default one."""
    if nb > 1 or tokens is None:
        return 1
    return tokens


def default_ahead(nb: int, n2: int, n2p: int, tokens: int | None) -> int:
    """One step read ahead into registers for rows of one block whose columns are padded (SmolLM2's 24×24, held
    as 32×32) a token a step; elsewhere the shared-memory pipeline. Session 24 (H100, same run, % of copy at
    M = 8192 / 32768): 24×24 77.2% / 81.2% against 68.1% / 72.1% with dynamic scales, 90.6% against 74.8% static
    at 8192; 9×64 head mixing (64 columns, none padded) 80.7% / 79.4% against 83.1% / 90.9%. Two steps ahead was
    slower than one in every case. Programs an SM are then at most ``AHEAD_VALUES`` over a step's values: 16 of
    24×24 (held as 32×32), 8 of 32×48 (32×64: 81.9% of copy at 8192 against 63.6% with 16)."""
    return 1 if nb == 1 and step_tokens(nb, tokens) == 1 and n2 < n2p else 0


def check_batched(nb: int, n1p: int, n2p: int, tokens: int | None, ahead: int = 0) -> str | None:
    """Why the batched kernel cannot take these rows, or None where it can."""
    if ahead not in (0, 1, 2):
        return f"ahead must be 0, 1 or 2 steps, got {ahead}"
    if ahead and nb > 1 and nb & (nb - 1):
        return f"steps read ahead need a row of one power-of-two run of blocks, not {nb}"
    if nb > 1:
        if tokens not in (None, 1):
            return f"rows of {nb} blocks take one token a step, not {tokens}"
        if not fits_row(nb, n1p, n2p):
            return (f"a row of {nb} blocks of {n1p}×{n2p} does not fit one step (at most three power-of-two runs "
                    f"of blocks, at most {MAX_TILE} values)")  # fmt: skip
        return None
    t = step_tokens(nb, tokens)
    if t & (t - 1) or t * n1p * n2p > MAX_TILE:
        return f"{t} tokens of {n1p}×{n2p} a step: a power of two, at most {MAX_TILE} values"
    return None


def launch_batched(args: tuple, constants: dict, nb: int, tokens: int | None, programs: int | None) -> None:
    """Launch the kernel on the tiled kernel's arguments and constants (``T = 1``: its ``I_T ⊗ P1ᵀ`` is ``P1ᵀ``),
    for rows :func:`check_batched` takes (its caller checks); ``programs`` None: as many as the GPU holds at
    once, at most one a step."""
    t = step_tokens(nb, tokens)
    pieces = block_pieces(nb) if nb > 1 else (t, 0, 0)
    x, u, p1s, p2s, codes, scales, m, _, sx, su, sq, lo, hi, static_amax, eps, gain = args
    keep = ("n1", "n2", "STATIC", "SYMMETRIC", "N1", "N2", "X_SPLIT", "P1_LO", "P2_LO", "P2_EYE", "GAIN", "ROUND_MID",
            "GATED", "UPCAST", "STAGES", "AHEAD", "PDL", "launch_pdl", "num_warps")  # fmt: skip
    args = (x, u, p1s, p2s, codes, scales, m, sx, su, sq, lo, hi, static_amax, eps, gain)
    keep += ("maxnreg",) if "maxnreg" in constants else ()
    constants = {key: constants[key] for key in keep} | {"TOKENS": t, "B0": pieces[0], "B1": pieces[1],
                                                         "B2": pieces[2]}  # fmt: skip
    steps = triton.cdiv(m, t)
    if programs is None and not x.is_cuda:
        programs = steps
    elif programs is None:
        values = sum(pieces) * constants["N1"] * constants["N2"]  # a step: its blocks, or its tokens of one block
        per_sm = max(1, AHEAD_VALUES // values) if constants["AHEAD"] else None
        programs = min(steps, _resident_programs(_blocks_quantize_kernel, x.device.index or 0, args, constants, per_sm))
    _blocks_quantize_kernel[(max(1, programs),)](*args, **constants)


def batched_knobs(
    values: int,
    nb: int,
    num_warps: int | None,
    stages: int | None,
    x_bytes: int = 2,
    gated: bool = False,
    ahead: int = 0,
) -> dict:
    """Four warps for rows of several blocks, one for rows of one block; three steps of ``x`` (``values`` padded
    values a step) in flight up to 32 KB a step, else two (fewer where they do not fit in shared memory).

    The H100 sweeps of session 22 at 28 blocks of 16×32, M = 8192: 92.5% of copy bandwidth with three rows,
    against 80% with two and 55% with one (eight warps: 64%, 46%, 35%; 160 registers a thread leave one program
    an SM); the gated form (gate and up, 56 KB a row) 62% with two, against 42% with three and 51% with one. Those
    of session 23 for rows of one block (SmolLM2's 24×24 and 9×64, M = 8192 and 32768): one warp a token, 16
    programs an SM, against four tokens on four warps (whose block-wide barriers around the layout changes hold
    every warp at the slowest): 24×24 67.3% / 71.5% of copy against 60.6% / 67.5% with dynamic scales, 74.9% /
    74.2% against 71.8% / 73.5% static; 9×64 65.0% / 79.1% against 66.4% / 73.7% dynamic.

    ``ahead`` steps read into registers ahead of the one computed replace the shared-memory pipeline (one stage)."""
    step = values * x_bytes * (2 if gated else 1)
    if ahead:
        stages = 1
    stages = stages or stages_that_fit(3 if step <= 32768 else 2, step, 16384) or 1
    return {"num_warps": num_warps or (4 if nb > 1 else 1), "STAGES": stages, "AHEAD": ahead}
