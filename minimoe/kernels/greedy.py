"""Greedy sampling's tail in two launches: the first index of each row's maximum, and a count of
the rows holding a NaN or an infinity.

After the LM head a greedy decode step needs two facts per row of logits: the argmax (the next
token) and whether the row is finite (the engine counts non-finite rows on the device, because
argmax would quietly turn an overflowed row into some token). In PyTorch that is ~12 small kernels
at batch 1: sum, isfinite, not, sum, add (the count), then the chunked argmax of sampling.py (max per
chunk, argmax over chunks, gather, multiply-add) and the casts between them: ~25 µs of a graphed
OLMoE step on an H200, for a 200 KB row. Here:

  pass 1, one program per (row, chunk): stream the chunk once, keep the largest value, the first
          index that holds it, the first NaN's index and whether any entry is non-finite;
  pass 2, one program per row: reduce the chunks' partials in chunk order, store the token, and
          add 1 to the counter if any chunk saw a non-finite entry.

The answer is torch.argmax's, including its NaN rule: a NaN counts as larger than everything, so
a row with a NaN returns its first NaN's index; ties go to the lowest index (first chunk, then
first index in the chunk: indices are global, so a min over equal maxima is the first one). An
all -inf row returns 0, as torch does. The non-finite test is per entry (NaN or ±inf), the same
count as `minimoe.ops.nonfinite_rows` on the PyTorch paths.

Shapes: B rows, V vocabulary, C chunks per row. The logits may be any float dtype and row stride
(unit stride along V).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

BLOCK = 1024            # elements per tile of pass 1 (4 KB of fp32 per 4 warps: 8 per thread)
# Pass 2 as pass 1's epilogue: each pass-1 program bumps its row's arrival counter after storing its partials, and the
# row's last program reduces them (gate_splitk_fold.py's "last program finishes"): one launch a step instead of two, for
# a tail of one L2 round trip. Measured a tie in the graphed bs-1 step (docs/results/2026-12-04-s32, call 1: +0.03%
# OLMoE, +0.04% Qwen3-30B-A3B; pass 2 was 2.3 µs PDL-off in OLMoE's profile, but under PDL it likely overlaps pass 1's tail),
# so off; read at call time (a step_probe knob), and used only where the caller passes zeroed counters
# (generate.Generator does).
ONE_LAUNCH = False
TARGET_PROGRAMS = 256   # pass 1 cuts the rows into about this many programs in all (~2 per SM)
MAX_CHUNKS = 128        # pass 2 holds one row's partials in registers


@triton.jit
def _argmax_chunk_kernel(x_ptr, val_ptr, idx_ptr, nan_ptr, bad_ptr, V, stride_b, chunk,
                         C: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
                         tok_ptr=None, count_ptr=None, cnt_ptr=None, FINISH: tl.constexpr = False,
                         BLOCK_C: tl.constexpr = 2):
    wait_then_release(PDL)
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * chunk
    end = tl.minimum(start + chunk, V)
    offs = tl.arange(0, BLOCK)
    BIG: tl.constexpr = 2147483647
    best = tl.full([], float("-inf"), tl.float32)
    best_i = tl.full([], BIG, tl.int32)
    nan_i = tl.full([], BIG, tl.int32)
    bad = tl.full([], 0, tl.int32)
    for s in range(start, end, BLOCK):
        i = s + offs
        ok = i < end
        x = tl.load(x_ptr + b * stride_b + i, mask=ok, other=float("-inf")).to(tl.float32)
        isnan = x != x
        bad = tl.maximum(bad, tl.max((ok & ~(tl.abs(x) < float("inf"))).to(tl.int32), axis=0))
        nan_i = tl.minimum(nan_i, tl.min(tl.where(isnan & ok, i, BIG), axis=0))
        xv = tl.where(isnan, float("-inf"), x)
        m = tl.max(xv, axis=0)
        mi = tl.min(tl.where((xv == m) & ok, i, BIG), axis=0)
        take = (m > best) | (best_i == BIG)       # strictly greater: an earlier tile keeps a tie;
        best_i = tl.where(take, mi, best_i)       # the first tile is taken even when all -inf
        best = tl.where(take, m, best)
    out = b * C + c
    tl.store(val_ptr + out, best)
    tl.store(idx_ptr + out, best_i)
    tl.store(nan_ptr + out, nan_i)
    tl.store(bad_ptr + out, bad)
    if FINISH:                                   # the row's last program to arrive does pass 2
        tl.debug_barrier()                       # every thread's stores out before the count
        if tl.atomic_add(cnt_ptr + b, 1, sem="acq_rel", scope="gpu") == C - 1:
            tl.atomic_xchg(cnt_ptr + b, 0)       # left zeroed for the next call
            _reduce_row(val_ptr, idx_ptr, nan_ptr, bad_ptr, tok_ptr, count_ptr, b, C, BLOCK_C, True)


@triton.jit
def _reduce_row(val_ptr, idx_ptr, nan_ptr, bad_ptr, tok_ptr, count_ptr, b, C: tl.constexpr, BLOCK_C: tl.constexpr,
                VOLATILE: tl.constexpr):
    """Pass 2 for row b: the chunks' partials -> the token, and the non-finite count (volatile: read from the L2,
    where another program of this launch wrote them)."""
    offs = tl.arange(0, BLOCK_C)
    ok = offs < C
    BIG: tl.constexpr = 2147483647
    val = tl.load(val_ptr + b * C + offs, mask=ok, other=float("-inf"), volatile=VOLATILE)
    idx = tl.load(idx_ptr + b * C + offs, mask=ok, other=BIG, volatile=VOLATILE)
    nan_i = tl.min(tl.load(nan_ptr + b * C + offs, mask=ok, other=BIG, volatile=VOLATILE), axis=0)
    bad = tl.max(tl.load(bad_ptr + b * C + offs, mask=ok, other=0, volatile=VOLATILE), axis=0)
    m = tl.max(val, axis=0)
    first = tl.min(tl.where((val == m) & ok, idx, BIG), axis=0)
    tok = tl.where(nan_i < BIG, nan_i, tl.where(first < BIG, first, 0))
    tl.store(tok_ptr + b, tok.to(tl.int64))
    tl.atomic_add(count_ptr, bad.to(tl.int64))


@triton.jit
def _argmax_final_kernel(val_ptr, idx_ptr, nan_ptr, bad_ptr, tok_ptr, count_ptr,
                         C: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    b = tl.program_id(0).to(tl.int64)
    _reduce_row(val_ptr, idx_ptr, nan_ptr, bad_ptr, tok_ptr, count_ptr, b, C, BLOCK_C, False)


def greedy_tail(logits: torch.Tensor, nonfinite: torch.Tensor | None = None, *, chunks: int | None = None,
                pdl: bool = False, counters: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] (any float dtype, unit stride on V) -> tokens [B] int64 = torch.argmax(logits, -1)
    (NaN counts as the largest; ties to the lowest index). nonfinite: a 0-dim int64 counter on the same
    device, += the number of rows holding a NaN or an inf (None: not counted). chunks overrides the
    split of each row (tests). counters: zeroed int32 (>= B entries), left zeroed: with ONE_LAUNCH, pass 2 runs in
    pass 1's last program of each row (one launch). out: a contiguous int64 [B] tensor the tokens are stored into
    (returned; the decode graph's own input, graphs.DecodeGraph). Raises AssertionError on bad shapes."""
    assert logits.dim() == 2 and logits.stride(-1) == 1, (logits.shape, logits.stride())
    B, V = logits.shape
    assert V >= 1
    dev = logits.device
    if out is not None:
        assert out.shape == (B,) and out.dtype == torch.int64 and out.is_contiguous() and out.device == dev, out
    tokens = out if out is not None else torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return tokens
    if nonfinite is None:
        nonfinite = torch.zeros((), dtype=torch.int64, device=dev)
    assert nonfinite.dtype == torch.int64 and nonfinite.numel() == 1 and nonfinite.device == dev
    C = chunks or max(1, min(MAX_CHUNKS, TARGET_PROGRAMS // B, triton.cdiv(V, BLOCK)))
    assert 1 <= C <= MAX_CHUNKS, C
    chunk = triton.cdiv(V, C)
    C = triton.cdiv(V, chunk)                       # rounding up may leave trailing chunks empty
    val = torch.empty(B, C, dtype=torch.float32, device=dev)
    idx = torch.empty(B, C, dtype=torch.int32, device=dev)
    nan = torch.empty(B, C, dtype=torch.int32, device=dev)
    bad = torch.empty(B, C, dtype=torch.int32, device=dev)
    block_c = max(2, triton.next_power_of_2(C))
    if ONE_LAUNCH and counters is not None:
        assert counters.dtype == torch.int32 and counters.numel() >= B and counters.device == dev
        _argmax_chunk_kernel[(B, C)](logits, val, idx, nan, bad, V, logits.stride(0), chunk,
                                     C=C, BLOCK=BLOCK, tok_ptr=tokens, count_ptr=nonfinite, cnt_ptr=counters,
                                     FINISH=True, BLOCK_C=block_c, num_warps=4, **launch_args(pdl))
        return tokens
    _argmax_chunk_kernel[(B, C)](logits, val, idx, nan, bad, V, logits.stride(0), chunk,
                                 C=C, BLOCK=BLOCK, num_warps=4, **launch_args(pdl))
    _argmax_final_kernel[(B,)](val, idx, nan, bad, tokens, nonfinite, C=C,
                               BLOCK_C=block_c, num_warps=1, **launch_args(pdl))
    return tokens
