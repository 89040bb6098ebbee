"""Decode variant of the fused MoE: a GEMV per (token, slot), the top-k combine folded into GEMM2.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width.

When T·K is small next to E (`fused_moe.plan`: T·K·4 <= E) a decode step multiplies a handful
of single rows by whole expert matrices: one matrix-vector product per (token, slot) pair. Its
cost is reading the chosen experts' 3·D·I weights once; the arithmetic is noise. So the design
goal is bytes in flight on every SM, and two things change from the aligned path:

* GEMV, not tl.dot. A tl.dot needs M >= 16, so a one-row product through it carries 15 masked
  rows and ties the tile to what the MMA wants. Here a program holds a [BLOCK_N, BLOCK_K] weight
  tile (16-byte loads along the contiguous reduction axis), multiplies it by the broadcast
  activation chunk and reduces along K with tl.sum into fp32. BLOCK_N can go down to 1, so even
  OLMoE's 2 MB matrices split into enough programs to keep all 132 SMs streaming.
* The combine folded into GEMM2. `_down_combine_kernel` owns one token's BLOCK_N output columns
  and walks all K of its slots: it streams w2[e][cols, :] against h[t·K + k], scales each fp32
  partial by the routing weight and adds it to one fp32 accumulator, always in the same order
  (so a CUDA-graph replay gives the bits of an eager call), then writes out[t, cols] once in
  x.dtype. No y [T·K, D] buffer, no combine launch, and one rounding fewer than the aligned path,
  which rounds y to x.dtype per slot before summing.

Slots routed to experts outside [expert_offset, expert_offset + E) (expert parallelism) are
skipped by GEMM1 (their h row is never written) and masked out of GEMM2's loads: they add an
exact 0. No sorting, no host sync, every size fixed by (T, K, E, config): CUDA-graph safe. Two
slots that share an expert read its weights twice; T·K·4 <= E keeps that rare.

What it bought, measured on the H200 (scripts/bench_moe_small.py, µs per layer call, T = 1, against
the tl.dot variant it replaced): OLMoE 31.0 -> 30.7, Qwen3 26.8 -> 26.9, Mixtral 169.4 -> 166.4 (99.7%
of 4.25 TB/s), Qwen1.5 25.2 -> 25.0, DeepSeek-V2-Lite 32.8 -> 32.7; at T = 2 it is 1.07-1.11x faster.
The old kernels were already streaming; the saved combine launch is what remains.

Config: the "small" key of a fused_moe config; keys left out come from `small_default_config`
(kernels/small_configs.py, with its per-shape overrides).
    {"small": {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 1,      # GEMM1
               "down": {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3}}}
num_stages is the software-pipeline depth of the reduction loop (`tl.range`): on its own Triton
pipelines only loops that feed a tl.dot. The aligned path's keys (BLOCK_M, GROUP_M, ...) are
never read here.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .pdl import launch_args, prefetch_l2, release_args, release_at_end, wait_then_release

from .small_configs import SMALL_KEYS, SMALL_TILES, small_configs, small_default_config  # noqa: F401 (re-exported)

# GEMM2 launched with PDL after a GEMM1 that releases it only at each program's end (pdl.release_at_end), not at its
# start: GEMM2's launch overlaps GEMM1's completion and flush (a PDL boundary measured 0.86 µs against 1.23 in stream
# order, kernels/pdl.py) while its programs park only beside GEMM1's last programs. (Released at GEMM1's start, GEMM2's
# parked programs took the slots of GEMM1's later waves: +13% to +22% a bs-1 step, nineteenth session; beside a
# one-wave GEMM1, 7 to 14 points more, thirty-fourth session, call 1.) In the graphed bs-1 step
# (docs/results/2026-12-04-s34, call 5; each twice, the baseline repeated within 0.08%): Qwen3-30B-A3B -0.13 / -0.27%,
# OLMoE -0.19 / -0.22%, DeepSeek-V2-Lite -0.29 / -0.25%, Qwen1.5-MoE -0.40 / -0.37%. On; read at call time.
GEMM2_AFTER_GEMM1_END = True


@triton.jit
def _local_expert(ids_ptr, pair, expert_offset, E):
    """Local expert of (token, slot) pair `pair`, or -1 when another rank holds it."""
    e = tl.load(ids_ptr + pair).to(tl.int32) - expert_offset
    return tl.where((e >= 0) & (e < E), e, -1)


@triton.jit
def _flat_slot(j, n_chunks, t, top_k, ids_ptr, weights_ptr, expert_offset, E, I, KW, BLOCK_K: tl.constexpr,
               DENSE: tl.constexpr):
    """Step j of a decode GEMM2's flat loop over (slot, K-chunk) for token t (the quantized kernels'):
    (pair, k0, e64 the local expert as int64, k_lim / kw_lim the reduction's end in inputs / words,
    route_w the slot's routing weight). A foreign or skipped slot gets limits 0 (every load masked off:
    no traffic, an exact 0) and weight 0; DENSE: one expert, limits I / KW, weight 1."""
    slot = j // n_chunks
    return _slot_chunk(slot, j - slot * n_chunks, t, top_k, ids_ptr, weights_ptr, expert_offset, E, I, KW, BLOCK_K,
                       DENSE)


@triton.jit
def _slot_chunk(slot, chunk, t, top_k, ids_ptr, weights_ptr, expert_offset, E, I, KW, BLOCK_K: tl.constexpr,
                DENSE: tl.constexpr):
    """_flat_slot for a (slot, chunk) the caller tracks (a loop that steps them needs no division a step)."""
    k0 = chunk * BLOCK_K
    pair = t * top_k + slot
    if DENSE:
        e64 = tl.zeros((), dtype=tl.int64)
        k_lim, kw_lim, route_w = I, KW, 1.0
    else:
        expert = _local_expert(ids_ptr, pair, expert_offset, E)
        e64 = tl.maximum(expert, 0).to(tl.int64)
        k_lim, kw_lim = tl.where(expert >= 0, I, 0), tl.where(expert >= 0, KW, 0)
        route_w = tl.where(expert >= 0, tl.load(weights_ptr + pair), 0.0)
    return pair, k0, e64, k_lim, kw_lim, route_w


@triton.jit
def _swiglu_rows(x_ptrs, gate_ptrs, up_offset, D, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 STAGES: tl.constexpr):
    """silu(gate) * up in fp32 [BLOCK_N] for one x row (x_ptrs [BK]) against BLOCK_N gate rows (gate_ptrs
    [BN, BK]) whose up rows sit up_offset elements further."""
    offs_k = tl.arange(0, BLOCK_K)
    up_ptrs = gate_ptrs + up_offset
    acc_gate = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(D, BLOCK_K), num_stages=STAGES):
        k_mask = offs_k < D - k * BLOCK_K
        xk = tl.load(x_ptrs, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        # Weights are read exactly once: evict_first keeps them from pushing x and h out of L2.
        gate = tl.load(gate_ptrs, mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        up = tl.load(up_ptrs, mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        acc_gate += tl.sum(gate.to(tl.float32) * xk, axis=1)
        acc_up += tl.sum(up.to(tl.float32) * xk, axis=1)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
        up_ptrs += BLOCK_K
    return acc_gate * tl.sigmoid(acc_gate) * acc_up                          # fp32, rounded once by the caller


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E", "n_routed"])
def _gate_up_gemv_kernel(x_ptr, w13_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, D,
                         stride_xt, stride_we, stride_wn, stride_ht,
                         ws13_ptr, hs_ptr, I_S, n_routed, stride_swn, stride_hst,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
                         SHARED: tl.constexpr = False):
    """h[pair, cols] = silu(Wg[e] x[t]) * (Wu[e] x[t]) for one pair and BLOCK_N columns of I.
    SHARED: programs n_routed.. do the same for the shared expert (ws13 [2·I_S, D], gate rows then up rows)
    and token t = (pid - n_routed) // cdiv(I_S, BLOCK_N), writing hs[t, cols]."""
    wait_then_release(PDL)
    pid = tl.program_id(0)
    offs_k = tl.arange(0, BLOCK_K)
    if SHARED:
        if pid >= n_routed:
            n_shared_blocks = tl.cdiv(I_S, BLOCK_N)
            t, col0 = (pid - n_routed) // n_shared_blocks, ((pid - n_routed) % n_shared_blocks) * BLOCK_N
            rows = (col0 + tl.arange(0, BLOCK_N)) % I_S
            hs = _swiglu_rows(x_ptr + t.to(tl.int64) * stride_xt + offs_k,
                              ws13_ptr + rows[:, None] * stride_swn + offs_k[None, :], I_S * stride_swn, D,
                              BLOCK_N, BLOCK_K, STAGES)
            cols = col0 + tl.arange(0, BLOCK_N)
            tl.store(hs_ptr + t.to(tl.int64) * stride_hst + cols, hs.to(hs_ptr.dtype.element_ty), mask=cols < I_S)
            return
    n_blocks = tl.cdiv(I, BLOCK_N)
    pair, col0 = pid // n_blocks, (pid % n_blocks) * BLOCK_N
    expert = _local_expert(ids_ptr, pair, expert_offset, E)
    if expert < 0:
        return                                   # foreign slot: GEMM2 never reads this h row
    # Rows past I wrap around instead of being masked: loads stay in bounds, the store drops them.
    rows = (col0 + tl.arange(0, BLOCK_N)) % I
    h = _swiglu_rows(x_ptr + (pair // top_k).to(tl.int64) * stride_xt + offs_k,
                     w13_ptr + expert.to(tl.int64) * stride_we + rows[:, None] * stride_wn + offs_k[None, :],
                     I * stride_wn, D, BLOCK_N, BLOCK_K, STAGES)                # up: row I + j of w13[e]
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + pair.to(tl.int64) * stride_ht + cols, h.to(h_ptr.dtype.element_ty),
             mask=cols < I)
    release_at_end(PDL)                          # PDL 3 (GEMM2_AFTER_GEMM1_END); a program that returned above released


@triton.jit
def _shared_down(hs_ptr, w_rows, I_S, x_ptr, wsg_ptr, D, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 STAGES: tl.constexpr, GATED: tl.constexpr):
    """The shared expert's GEMM2 for one token and BLOCK_N output rows (w_rows [BN, 1] row pointers of ws2):
    Ws2[rows, :] · hs in fp32 [BLOCK_N]; GATED: times sigmoid(x · wsg) (Qwen2-MoE's shared_expert_gate,
    each program computes the D-long dot product itself: 2·D elements from L2, no extra launch)."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in tl.range(0, I_S, BLOCK_K, num_stages=STAGES):
        k_mask = offs_k < I_S - k0
        hk = tl.load(hs_ptr + k0 + offs_k, mask=k_mask, other=0.0)
        w = tl.load(w_rows + k0 + offs_k[None, :], mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        acc += tl.sum(w.to(tl.float32) * hk.to(tl.float32)[None, :], axis=1)
    if GATED:
        g = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k_mask = offs_k < D - k0
            g += (tl.load(x_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
                  * tl.load(wsg_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32))
        acc = acc * tl.sigmoid(tl.sum(g, axis=0))
    return acc


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _down_combine_kernel(h_ptr, w2_ptr, out_ptr, ids_ptr, weights_ptr, top_k, expert_offset, E,
                         D, I, stride_ht, stride_we, stride_wn, stride_ot,
                         hs_ptr, ws2_ptr, x_ptr, wsg_ptr, I_S, stride_hst, stride_swn, stride_xt,
                         wb_ptr, N_B, stride_wbn,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
                         DENSE: tl.constexpr = False, PREFETCH_BYTES: tl.constexpr = 0,
                         SHARED: tl.constexpr = False, SHARED_GATE: tl.constexpr = False, BIAS: tl.constexpr = False,
                         CAT: tl.constexpr = False):
    """out[t, cols] = Σ_k w[t,k] · W2[e_k][cols, :] · h[t·K + k] for BLOCK_N columns of D.
    DENSE (dense_gemv.py): one expert, one slot of weight 1: out[t, cols] = W[cols, :] · h[t], no id loads;
    BIAS (DENSE): plus bias[cols], read through weights_ptr, on the fp32 accumulator (one rounding, as cuBLAS).
    SHARED: plus the shared expert's Ws2[cols, :] · hs[t] (ws2 [D, I_S]), scaled by sigmoid(x[t] · wsg) when
    SHARED_GATE (Qwen2-MoE; x [T, D], wsg [D]), added to the same fp32 accumulator.
    PREFETCH_BYTES (DENSE, launched with PDL): before waiting for the previous kernel, ask the L2 for the
    first PREFETCH_BYTES of each of the program's weight rows (the weights do not depend on it).
    CAT (DENSE): two layers on the same input in one launch, out[t] = [W · h[t], Wb · h[t]] (wb [N_B, I]):
    each token's tiles of W (D rows), then of Wb, whose outputs land in columns D .. D + N_B - 1."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(D, BLOCK_N)
    n_out, out_col0, w_base, w_stride = D, 0, w2_ptr, stride_wn        # the rows this program reads and writes
    if CAT:
        tl.static_assert(DENSE and not BIAS, "CAT joins two bias-free dense layers")
        per_token = n_blocks + tl.cdiv(N_B, BLOCK_N)
        t, blk = pid // per_token, pid % per_token
        second = blk >= n_blocks
        col0 = tl.where(second, blk - n_blocks, blk) * BLOCK_N
        n_out, out_col0 = tl.where(second, N_B, D), tl.where(second, D, 0)
        w_base, w_stride = tl.where(second, wb_ptr, w2_ptr), tl.where(second, stride_wbn, stride_wn)
    else:
        t, col0 = pid // n_blocks, (pid % n_blocks) * BLOCK_N
    offs_k = tl.arange(0, BLOCK_K)
    rows = (col0 + tl.arange(0, BLOCK_N)) % n_out
    if PREFETCH_BYTES > 0:
        tl.static_assert(DENSE, "only a dense layer's weights are known before the previous kernel ends")
        prefetch_l2(w_base + rows.to(tl.int64) * w_stride, tl.full((BLOCK_N,), PREFETCH_BYTES, tl.int32))
    wait_then_release(PDL)
    n_chunks = tl.cdiv(I, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # One flat loop over (slot, chunk) rather than a loop per slot: with I about BLOCK_K the inner
    # loop would be one step long, and a flat loop lets the pipeliner fetch the next slot's tile.
    for j in tl.range(0, top_k * n_chunks, num_stages=STAGES):
        slot = j // n_chunks
        k0 = (j - slot * n_chunks) * BLOCK_K
        pair = t * top_k + slot
        if DENSE:
            expert = tl.zeros((), dtype=tl.int32)
        else:
            expert = _local_expert(ids_ptr, pair, expert_offset, E)
        # A foreign slot's loads are all masked off (no traffic, and its unwritten h row is never
        # read), so it adds an exact 0.
        k_mask = offs_k < tl.where(expert >= 0, I - k0, 0)
        hk = tl.load(h_ptr + pair.to(tl.int64) * stride_ht + k0 + offs_k, mask=k_mask, other=0.0)
        w_ptrs = (w_base + tl.maximum(expert, 0).to(tl.int64) * stride_we
                  + rows[:, None] * w_stride + k0 + offs_k[None, :])       # [BN, BK]
        w = tl.load(w_ptrs, mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        partial = tl.sum(w.to(tl.float32) * hk.to(tl.float32)[None, :], axis=1)
        if DENSE:
            acc += partial
        else:
            route_w = tl.where(expert >= 0, tl.load(weights_ptr + pair), 0.0)
            acc += partial * route_w                   # the routing weight on the fp32 partial
    if BIAS:
        tl.static_assert(DENSE, "a bias belongs to a dense layer")
        acc += tl.load(weights_ptr + rows).to(tl.float32)
    if SHARED:
        acc += _shared_down(hs_ptr + t.to(tl.int64) * stride_hst, ws2_ptr + rows[:, None] * stride_swn, I_S,
                            x_ptr + t.to(tl.int64) * stride_xt, wsg_ptr, D, BLOCK_N, BLOCK_K, STAGES, SHARED_GATE)
    cols = col0 + tl.arange(0, BLOCK_N)
    y = acc
    if DENSE:
        y = acc.to(h_ptr.dtype.element_ty)            # the layer's rounding, then out's dtype (dense_gemv's out_dtype)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + out_col0 + cols, y.to(out_ptr.dtype.element_ty),
             mask=cols < n_out)


class SharedExpert(NamedTuple):
    """An always-on expert run inside the decode kernels (`fused_moe_small(shared=...)`), dense SwiGLU weights:
    w13 [2·I_S, D] (gate rows, then up rows), w2 [D, I_S], gate [D] or None (Qwen2-MoE's shared_expert_gate:
    the expert's output is scaled by sigmoid(x · gate))."""
    w13: torch.Tensor
    w2: torch.Tensor
    gate: torch.Tensor | None = None


def check_shared(x: torch.Tensor, shared: SharedExpert) -> None:
    """Raises ValueError unless `shared` fits x [T, D]: same dtype and device, contiguous, the shapes above."""
    D = x.shape[1]
    w13, w2, gate = shared
    two_i = w13.shape[0]
    ok = (w13.dim() == 2 and two_i % 2 == 0 and w13.shape[1] == D and tuple(w2.shape) == (D, two_i // 2)
          and (gate is None or gate.numel() == D))
    if not ok:
        raise ValueError(f"shared expert w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} does not fit x {tuple(x.shape)}")
    tensors = [w13, w2] + ([] if gate is None else [gate])
    if any(t.dtype != x.dtype or t.device != x.device or not t.is_contiguous() for t in tensors):
        raise ValueError("shared expert weights must be contiguous, in x's dtype and on x's device")


def fused_moe_small(x, w13, w2, ids, topk_weights, expert_offset: int,
                    config: dict | None, pdl: bool = False, shared: SharedExpert | None = None) -> torch.Tensor:
    """The decode path of `fused_moe` (inputs already checked there): two launches, no buffers
    but h [T·K, I] (and hs [T, I_S] with a shared expert, whose programs follow the routed ones in GEMM1
    and whose GEMM2 adds into the same fp32 accumulator: the shared expert costs no launch of its own)."""
    (T, D), (E, two_i, _), K = x.shape, w13.shape, ids.shape[1]
    I = two_i // 2
    cfg1, cfg2 = small_configs(config, E, I, D, K, T, x.dtype, shared=shared is not None)
    h = x.new_empty(T * K, I)                                               # [T·K, I]
    n_routed = T * K * triton.cdiv(I, cfg1["BLOCK_N"])
    gemm1_pdl, gemm2_pdl = launch_args(pdl), release_args(pdl)
    if GEMM2_AFTER_GEMM1_END and gemm1_pdl["PDL"] is True:
        gemm1_pdl, gemm2_pdl = dict(gemm1_pdl, PDL=3), launch_args(pdl)
    if shared is not None:
        check_shared(x, shared)
        ws13, ws2, wsg = shared
        I_S = ws2.shape[1]
        hs = x.new_empty(T, I_S)                                            # [T, I_S]
        grid1 = (n_routed + T * triton.cdiv(I_S, cfg1["BLOCK_N"]),)
    else:
        ws13, ws2, wsg, I_S, hs = w13, w2, None, 0, h                      # never read
        grid1 = (n_routed,)
    _gate_up_gemv_kernel[grid1](
        x, w13, h, ids, K, expert_offset, E, I, D,
        x.stride(0), w13.stride(0), w13.stride(1), h.stride(0),
        ws13, hs, I_S, n_routed, ws13.stride(0), hs.stride(0),
        BLOCK_N=cfg1["BLOCK_N"], BLOCK_K=cfg1["BLOCK_K"], STAGES=cfg1["num_stages"],
        num_warps=cfg1["num_warps"], num_stages=cfg1["num_stages"], SHARED=shared is not None, **gemm1_pdl)
    out = x.new_empty(T, D)
    weights = topk_weights.float().contiguous().view(-1)  # [T·K]; no copy when already fp32
    grid2 = (T * triton.cdiv(D, cfg2["BLOCK_N"]),)
    _down_combine_kernel[grid2](
        h, w2, out, ids, weights, K, expert_offset, E, D, I,
        h.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        hs, ws2, x, x if wsg is None else wsg, I_S, hs.stride(0), ws2.stride(0), x.stride(0),
        w2, 0, 0,                                                           # CAT only: never read
        BLOCK_N=cfg2["BLOCK_N"], BLOCK_K=cfg2["BLOCK_K"], STAGES=cfg2["num_stages"],
        num_warps=cfg2["num_warps"], num_stages=cfg2["num_stages"],
        SHARED=shared is not None, SHARED_GATE=wsg is not None,
        # after the many-program GEMM1: launched with PDL only where GEMM1 releases it at its programs' ends
        # (GEMM2_AFTER_GEMM1_END), else in stream order; it frees its own successor early either way (pdl.py).
        # Released from GEMM1's start, its programs parked on the SMs GEMM1's later waves need: +13% to +22% a bs-1
        # step on four models (nineteenth session, call 1)
        **gemm2_pdl)
    return out
