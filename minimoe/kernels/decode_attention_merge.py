"""The second kernel of split-K decode attention: merge each (sequence, query token, head)'s split partials.

Each split program of kernels/decode_attention.py leaves its chunk-normalised output o_s [Dv] (fp32) and log-sum-exp
lse_s (log2 domain); the exact softmax over the whole sequence is

    out = sum_s 2^(lse_s - lse_max) · o_s / sum_s 2^(lse_s - lse_max)

over the splits that hold positions (the others exited early; their count follows from seq_len and the chunk).
One program per (query token, head) x sequence; the splits are a loop, not a tile (MLA's Dv = 512 x 64 splits would
not fit in registers). Reference: Dao et al., "Flash-Decoding for long-context inference" (2023).
"""

import triton
import triton.language as tl

from .pdl import wait_then_release

# Splits x Dv elements up to which a program loads all of its partials as one [splits, Dv] tile (every load in one
# L2 round trip) instead of looping over the splits (a round trip each: the loop's loads wait for the running sum).
# 0 keeps the loop everywhere. 8,192: OLMoE / Qwen3-30B-A3B / Qwen1.5-MoE / Mixtral at bs 1 (4 splits x 128) take the
# tile; MLA's 512-wide values over many splits keep the loop. In the graphed bs-1 step (docs/results/2026-12-04-s32,
# call 4) the loop was +0.43% (Qwen3-30B-A3B), +0.25% (OLMoE), +0.39% (Qwen1.5-MoE) against the tile, the baseline
# repeated at -0.20 / -0.14 / -0.01%.
TILE_ELEMS = 8192
# With the tile: its loads issued beside seq_len's, masked by the split count S_max gives (a static bound) and the
# splits past seq_len dropped after (their stale partials, even NaN, selected away): one round trip, not two. The same
# bits. In the graphed bs-1 step (docs/results/2026-12-04-s33, call 2) a tie: Qwen3-30B-A3B -0.19%, OLMoE -0.07%, the
# baseline repeated at -0.08 / -0.09%. Off.
EARLY_LOADS = False


@triton.jit
def merge_splits_kernel(
    part_ptr, lse_ptr, seq_lens_ptr, out_ptr,
    stride_pb, stride_pq, stride_ph, stride_ps, stride_lb, stride_lq, stride_lh,
    stride_ob, stride_oq, stride_oh,
    S_max, CHUNK, H: tl.constexpr, DV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
    PDL: tl.constexpr, TILE: tl.constexpr = False, EARLY: tl.constexpr = False,
):
    wait_then_release(PDL)
    h = tl.program_id(0) % H
    q = tl.program_id(0) // H
    b = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    lse_row = lse_ptr + b * stride_lb + q * stride_lq + h * stride_lh
    offs_v = tl.arange(0, BLOCK_DV)
    v_ok = offs_v < DV
    part_row = part_ptr + b * stride_pb + q * stride_pq + h * stride_ph + offs_v
    if EARLY:  # (TILE) every split the grid has, loaded before seq_len is known; the empty ones are dropped below
        in_grid = offs_s < tl.cdiv(S_max, CHUNK)
        lse_all = tl.load(lse_row + offs_s, mask=in_grid, other=float("-inf"))
        part_all = tl.load(part_row[None, :] + offs_s[:, None] * stride_ps, mask=in_grid[:, None] & v_ok[None, :],
                           other=0.0)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), S_max)
    n_valid = tl.cdiv(seq_len, CHUNK)  # splits past this exited early and wrote nothing
    if EARLY:
        lse = tl.where(offs_s < n_valid, lse_all, float("-inf"))
    else:
        lse = tl.load(lse_row + offs_s, mask=offs_s < n_valid, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)  # finite: the first split holds position 0, which every row sees
    denom = tl.sum(tl.exp2(lse - lse_max), axis=0)

    if TILE:  # every partial in one load, issued beside the lse's; the sum runs over the tile's rows in split order
        if EARLY:
            part = tl.where((offs_s < n_valid)[:, None], part_all, 0.0)
        else:
            part = tl.load(part_row[None, :] + offs_s[:, None] * stride_ps,
                           mask=(offs_s < n_valid)[:, None] & v_ok[None, :], other=0.0)
        acc = tl.sum(tl.exp2(lse - lse_max)[:, None] * part, axis=0)
    else:
        acc = tl.zeros([BLOCK_DV], tl.float32)
        for s in range(0, n_valid):  # loop, not a [splits, Dv] tile: Dv = 512 x 64 splits is too big
            w = tl.exp2(tl.load(lse_row + s) - lse_max)
            acc += w * tl.load(part_row + s * stride_ps, mask=v_ok, other=0.0)
    tl.store(out_ptr + b * stride_ob + q * stride_oq + h * stride_oh + offs_v,
             (acc / denom).to(out_ptr.dtype.element_ty), mask=v_ok)
