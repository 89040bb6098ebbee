"""The aligned fused MoE's two GEMM kernels (Triton): GEMM1 gate+up with SiLU, GEMM2 down with the routing weight.

fused_moe.py plans, aligns, launches and combines; this file is the two kernels and their block bookkeeping.
Shape legend as there: T tokens, D hidden, E local experts, K experts per token, I expert FFN width; BLOCK_M rows of
one expert an M-block (moe_align.py), BLOCK_N output columns and BLOCK_K reduction columns a step.

    GEMM1 `_gate_up_kernel`  h[row] = silu(x[row // K] · Wg[e]ᵀ) ⊙ (x[row // K] · Wu[e]ᵀ)   (M-block rows, I cols)
    GEMM2 `_down_kernel`     y[row] = w[row] · (h[row] · W2[e]ᵀ)                            (M-block rows, D cols)

A rows are gathered by pointer (x[flat_id // K], h[flat_id]); fp32 accumulators; one rounding at the store. With a
fused shared expert (SHARED) the first n_sb M-blocks are its S = I_S / I virtual experts (fused_moe.py `_Shared`).

Weight tiles through TMA (B_TMA, `b_tma` in a tuned config): instead of a [BK, BN] tile of pointers, each GEMM asks
Hopper's tensor memory accelerator for a [BN, BK] box of w13 seen as [E·2I, D] rows (w2 as [E·D, I]) at (expert row,
k) through a host descriptor, and multiplies by its transpose. The unit zero-fills past D (or I); rows past I (or D) in
the last N tile are computed and dropped at the store, as the pointer path's wrap-around is. The A rows stay pointer
loads: they are a gather, which Hopper's TMA cannot do. Compiled at the prefill tile (128 x 128 x 64, 8 warps, 3
stages; scripts/compile_check.py with Triton 3.6) it frees 86 of GEMM1's 255 registers and the B tiles' cp.async
address math; tuned beside the pointer tiles it won by 2.4-3.9% at 2,048-8,192 tokens (docs/results.md, thirty-fifth
session). The shared expert's virtual blocks keep the pointer path. TMA coordinates are int32: E·2I and E·D rows must
stay below 2^31 (`_b_tma` in fused_moe.py keeps the pointer path past that).
GEMM2 from GEMM1's arrival flags (FLAGS, `fused_moe.OVERLAP_GEMMS`): each GEMM1 program, after its h store, adds 1 to
its M-block's counter (a CTA barrier, then a release). GEMM2 has no gdc_wait; with PDL it is launched once every GEMM1
program has started (GEMM1 releases its dependents right after its own wait), and each program spins on its own
M-block's counter with acquire reads until all cdiv(I, BLOCK_N1) tiles arrived. GEMM2's first programs (the first
M-blocks, finished long before) then stream w2 on the SMs GEMM1's last wave leaves idle, instead of after the last GEMM1
program and a launch. No deadlock: a spinning program waits only on GEMM1 programs that have already started, and both
kernels find a block live or dead the same way (`_block_rows`). The M-block's last GEMM2 program zeroes its two
counters, so one device buffer serves every call.
Reference: vLLM fused_moe (peers.md §1); Triton's matmul tutorial (grouped ordering) and its tensor-descriptor matmul;
SGLang's fused MoE `b_use_tma` (its design, not its code).
"""

import triton
import triton.language as tl

from .pdl import wait_then_release


@triton.jit
def _tile_coords(num_pid_m, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M M-blocks sweep the N tiles together, so a weight tile fetched for
    one block is still in L2 when the next block of the same expert needs it."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr, topk_ids_ptr,
                numel, expert_offset, E, BLOCK_M: tl.constexpr, SMALL: tl.constexpr):
    """Flat (token, slot) ids of M-block pid_m, which rows are real, and its local expert (-1: the
    program has nothing to do)."""
    offs = tl.arange(0, BLOCK_M)
    if SMALL:
        rows = pid_m + offs * 0
        row_mask = offs == 0
        expert = tl.load(topk_ids_ptr + pid_m).to(tl.int32) - expert_offset
        expert = tl.where((expert >= 0) & (expert < E), expert, -1)
    else:
        rows = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + offs)
        row_mask = rows < numel
        expert = tl.load(block_expert_ptr + pid_m)
        expert = tl.where(pid_m * BLOCK_M < tl.load(num_padded_ptr), expert, -1)
    return rows, row_mask, expert


@triton.jit
def _shared_rows(pid_m, numel, T, S, BLOCK_M: tl.constexpr):
    """Shared M-block pid_m (< S·cdiv(T, BLOCK_M)): virtual shared expert j = pid_m // cdiv(T, BLOCK_M) and its
    BLOCK_M tokens t. Their rows of h / y are numel + t·S + j, after the T·K routed ones."""
    per_j = tl.cdiv(T, BLOCK_M)
    j = pid_m // per_j
    t = (pid_m % per_j) * BLOCK_M + tl.arange(0, BLOCK_M)
    return numel + t * S + j, t < T, t, j


@triton.jit(do_not_specialize=["numel", "top_k", "expert_offset", "E", "num_pid_m", "T", "S", "n_sb"])
def _gate_up_kernel(x_ptr, w13_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                    topk_ids_ptr, numel, top_k, expert_offset, E, num_pid_m, I, D,
                    stride_xt, stride_we, stride_wn, stride_ht, ws13_ptr, T, S, I_S, n_sb, w13_desc, flags_ptr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, SMALL: tl.constexpr, SHARED: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, B_TMA: tl.constexpr, PDL: tl.constexpr, FLAGS: tl.constexpr = False):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, I, BLOCK_N, GROUP_M)
    if SHARED:      # the first n_sb M-blocks are the shared expert's, as S virtual experts of width I
        if pid_m < n_sb:
            rows, row_mask, tokens, j = _shared_rows(pid_m, numel, T, S, BLOCK_M)
            expert = 0
            w_base = ws13_ptr + (j * I).to(tl.int64) * D                     # gate rows j·I .., up rows I_S + j·I ..
            up_off = I_S * D
        else:
            rows, row_mask, expert = _block_rows(pid_m - n_sb, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                                 topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
            tokens = rows // top_k
            w_base = w13_ptr + expert.to(tl.int64) * stride_we
            up_off = I * stride_wn
    else:
        rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                             topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
        tokens = rows // top_k
        w_base = w13_ptr + expert.to(tl.int64) * stride_we
        up_off = I * stride_wn
    if expert < 0:
        return
    offs_k = tl.arange(0, BLOCK_K)
    # Columns past I wrap around rather than being masked: the weight loads stay in bounds and
    # need no mask along N; the store drops those columns.
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % I
    a_ptrs = x_ptr + tokens.to(tl.int64)[:, None] * stride_xt + offs_k[None, :]  # [BM, BK]
    # B tiles are read as [BK, BN] with the contiguous D axis first: 16-byte loads along D.
    gate_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None]          # [BK, BN]
    up_ptrs = gate_ptrs + up_off
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if B_TMA:       # w13 as [E·2I, D] rows through the TMA unit (`b_tma`; never with SHARED, see the launcher)
        n0 = expert * (2 * I) + pid_n * BLOCK_N        # past I the gate tile reads up rows: dropped at the store
        for k in range(0, tl.cdiv(D, BLOCK_K)):
            k_mask = offs_k < D - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            gate = w13_desc.load([n0, k * BLOCK_K])                            # [BN, BK], zeros past D
            up = w13_desc.load([n0 + I, k * BLOCK_K])
            acc_gate = tl.dot(a, gate.T, acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(a, up.T, acc_up, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
    else:
        for k in range(0, tl.cdiv(D, BLOCK_K)):
            k_mask = offs_k < D - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            gate = tl.load(gate_ptrs, mask=k_mask[:, None], other=0.0)
            up = tl.load(up_ptrs, mask=k_mask[:, None], other=0.0)
            acc_gate = tl.dot(a, gate, acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(a, up, acc_up, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
            gate_ptrs += BLOCK_K
            up_ptrs += BLOCK_K
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up                             # silu(gate)·up, fp32
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_ht + cols[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < I)[None, :])
    if FLAGS:       # this M-block's h has one more N tile: every thread's stores out, then one release
        tl.debug_barrier()
        tl.atomic_add(flags_ptr + pid_m, 1, sem="release", scope="gpu")


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_pid_m", "T", "S", "n_sb", "flags_cap", "n1_tiles"])
def _down_kernel(h_ptr, w2_ptr, y_ptr, weights_ptr, sorted_ids_ptr, block_expert_ptr,
                 num_padded_ptr, topk_ids_ptr, numel, expert_offset, E, num_pid_m, D, I,
                 stride_ht, stride_we, stride_wn, stride_yt, ws2_ptr, sgate_ptr, T, S, I_S, n_sb, w2_desc,
                 flags_ptr, flags_cap, n1_tiles,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, SMALL: tl.constexpr, SHARED: tl.constexpr, SHARED_GATE: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, B_TMA: tl.constexpr, PDL: tl.constexpr, FLAGS: tl.constexpr = False):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, D, BLOCK_N, GROUP_M)
    if FLAGS:       # no gdc_wait: a first acquire (its value used below) before the block's routing data is read
        ready = flags_ptr + pid_m
        n_arrived = tl.atomic_add(ready, 0, sem="acquire", scope="gpu")
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % D
    if SHARED:      # as GEMM1: the first n_sb M-blocks are the shared expert's (its w2 [D, I_S], columns j·I ..)
        if pid_m < n_sb:
            rows, row_mask, tokens, j = _shared_rows(pid_m, numel, T, S, BLOCK_M)
            expert = 0
            b_base = ws2_ptr + j * I + offs_n[None, :] * I_S
            if SHARED_GATE:     # Qwen2-MoE: sigmoid(x · wsg) per token, made before this kernel
                route_w = tl.load(sgate_ptr + tokens, mask=row_mask, other=0.0).to(tl.float32)
            else:
                route_w = tl.where(row_mask, 1.0, 0.0)
        else:
            rows, row_mask, expert = _block_rows(pid_m - n_sb, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                                 topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
            b_base = w2_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn
            route_w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0)
    else:
        rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                             topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
        b_base = w2_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn
    if expert < 0:
        return
    if FLAGS:       # launched before GEMM1 ended: wait for this M-block's n1_tiles arrivals, not for the whole grid
        # Each read is an acquire whose value the loop uses (Triton 3.6 drops an acquire whose result is unused):
        # one thread reads, the value reaches the others through shared memory and a barrier.
        while n_arrived < n1_tiles:
            n_arrived = tl.atomic_add(ready, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()                              # no thread reads h before the acquire
        # the M-block's last reader zeroes both counters for the next call (no memset a layer)
        if tl.atomic_add(flags_ptr + flags_cap + pid_m, 1, sem="acq_rel", scope="gpu") == tl.cdiv(D, BLOCK_N) - 1:
            tl.store(ready, 0)
            tl.store(flags_ptr + flags_cap + pid_m, 0)
    offs_k = tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    a_ptrs = h_ptr + rows64[:, None] * stride_ht + offs_k[None, :]           # [BM, BK]
    b_ptrs = b_base + offs_k[:, None]                                          # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if B_TMA:       # w2 as [E·D, I] rows through the TMA unit (never with SHARED)
        n0 = expert * D + pid_n * BLOCK_N              # past D the tile reads the next expert's rows: dropped
        for k in range(0, tl.cdiv(I, BLOCK_K)):
            k_mask = offs_k < I - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = w2_desc.load([n0, k * BLOCK_K])                                # [BN, BK], zeros past I
            acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
    else:
        for k in range(0, tl.cdiv(I, BLOCK_K)):
            k_mask = offs_k < I - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    # The routing weight goes in while the sum is still fp32, before the single rounding.
    if not SHARED:
        route_w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0)
    acc = acc * route_w[:, None]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = y_ptr + rows64[:, None] * stride_yt + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < D)[None, :])
