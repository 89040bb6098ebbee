"""The last step of the aligned fused MoE: sum each token's weighted expert rows back into one row.

GEMM2 (fused_moe.py `_down_kernel`, fused_moe_quant.py `_down_q_kernel`) writes y [T·K (+ T·S), D], one row per
(token, slot), already multiplied by its routing weight, in flat (token, slot) order. Here

    out[t] = Σ_k y[t·K + k]  (+ Σ_j y[T·K + t·S + j], the S virtual experts of a fused shared expert)

in fp32 and rounded once. Slots routed to experts this layer does not hold (expert parallelism: ids outside
expert_offset .. expert_offset + E - 1) were never written, so their loads are masked off entirely rather than
zeroing y first. A sum over a fixed order, not an atomic add: the result does not depend on scheduling (CUDA's
index_add_ is atomic, so not deterministic: docs/perf_notes.md, first session). One program per (token, BLOCK_D
columns); the tile is fused_moe.COMBINE_BLOCK_D x COMBINE_WARPS.
"""
import triton
import triton.language as tl

from .pdl import wait_then_release


@triton.jit
def _slot_row(y_ptr, topk_ids_ptr, flat, expert_offset, E, D, cols):
    """Slot `flat`'s row of y [BLOCK_D] in fp32, or zeros where its expert is not this layer's (never written)."""
    local = tl.load(topk_ids_ptr + flat).to(tl.int32) - expert_offset
    # Rows of y for foreign slots were never written: mask the whole load (no columns) rather than zero y.
    col_end = tl.where((local >= 0) & (local < E), D, 0)
    return tl.load(y_ptr + flat.to(tl.int64) * D + cols, mask=cols < col_end, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E", "numel", "S"])
def _combine_kernel(y_ptr, topk_ids_ptr, out_ptr, top_k, expert_offset, E, D, numel, S,
                    BLOCK_D: tl.constexpr, PDL: tl.constexpr, UNROLL_K: tl.constexpr = 0):
    """out[t] = Σ_k y[t·K + k] (this layer's experts' slots) + Σ_j y[numel + t·S + j] (S shared slots, 0: none).

    UNROLL_K = top_k (> 0) unrolls the slots at compile time, so a program's K id loads and K row loads are issued
    together instead of one dependent pair per loop trip (fused_moe.COMBINE_UNROLL_MAX_T); 0 keeps the runtime loop."""
    wait_then_release(PDL)
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if UNROLL_K > 0:
        for k in tl.static_range(UNROLL_K):
            acc += _slot_row(y_ptr, topk_ids_ptr, t * UNROLL_K + k, expert_offset, E, D, cols)
    else:
        for k in range(0, top_k):
            acc += _slot_row(y_ptr, topk_ids_ptr, t * top_k + k, expert_offset, E, D, cols)
    for j in range(0, S):
        acc += tl.load(y_ptr + (numel + t * S + j).to(tl.int64) * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t.to(tl.int64) * D + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)
