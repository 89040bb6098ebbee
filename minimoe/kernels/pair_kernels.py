"""The two GEMV kernels of the pair decode family (fused_moe_quant_pair.py holds their tiles and launchers):
GEMM1 (gate/up + SiLU-and-mul, h stored in GEMM2's paired order) and GEMM2 (down, routing-weighted sum over a
token's slots, optional split-K), both on int32 words of int4 / int8 codes or fp8, two fp16 weights a register.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width, IP I padded to whole
words, KW int32 words a row, BITS 4 or 8 (fp8: 8 with FP8), H_PW h codes a word.
The arithmetic (the PTX, the paired order, the precision bounds) is in pair_codes.py and pair_quads.py.
"""

import triton
import triton.language as tl

from .fused_moe_small import _local_expert, _slot_chunk
from .pair_codes import _X_SCALE, _H_SCALE, _pair_step, _wide_step, _zero_of
from .pair_quads import _quad_step, _wide_quad_step
from .pdl import wait_then_release


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _gate_up_pair_kernel(x_ptr, w_ptr, s_ptr, z_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, IP, D, KW,
                         stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                         BITS: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr,
                         HAS_ZERO: tl.constexpr, H_PW: tl.constexpr, X_PACKED: tl.constexpr, ASM: tl.constexpr,
                         WIDE: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         STAGES: tl.constexpr, PDL: tl.constexpr, FP8: tl.constexpr = False,
                         CHAIN: tl.constexpr = 1, X_TILE: tl.constexpr = False):
    """h[pair, cols] = silu(Wg[e] x[t]) * (Wu[e] x[t]) · H_SCALE for one pair and BLOCK_N columns of the
    padded width IP, stored as fp16 in GEMM2's paired order (H_PW codes a word); columns I .. IP get 0."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(IP, BLOCK_N)
    pair, col0 = tl.program_id(0) // n_blocks, (tl.program_id(0) % n_blocks) * BLOCK_N
    expert = _local_expert(ids_ptr, pair, expert_offset, E)
    if expert < 0:
        return                                   # foreign or skipped slot: GEMM2 never reads this h row
    # tile row 2c is gate column col0 + c, row 2c + 1 its up row (I + col0 + c); rows past I wrap
    r = tl.arange(0, 2 * BLOCK_N)
    rows = (col0 + r // 2) % I + (r % 2) * I                                              # [2·BN]
    e64 = expert.to(tl.int64)
    w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
    x_row = x_ptr + (pair // top_k).to(tl.int64) * stride_xt
    STEP: tl.constexpr = GROUP if GROUP > 0 and not WIDE else BLOCK_K
    N_SUB: tl.constexpr = 0 if WIDE else BLOCK_K // STEP                 # group steps a K-step (0: one wide step)
    acc = tl.zeros((2 * BLOCK_N, STEP * BITS // 32 // CHAIN), dtype=tl.float32)   # CHAIN 4: a column a quad
    for k0 in tl.range(0, D, BLOCK_K, num_stages=STAGES):
        if WIDE:
            if CHAIN == 4:
                acc += _wide_quad_step(w_e, s_e, z_e, rows, x_row, k0, D, KW, KW, stride_wn, stride_sn, stride_sg,
                                       BITS, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED, ASM, 2 * BLOCK_N, STEP, FP8,
                                       X_TILE)
            else:
                acc += _wide_step(w_e, s_e, z_e, rows, x_row, k0, D, KW, KW, stride_wn, stride_sn, stride_sg, BITS,
                                  GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED, ASM, 2 * BLOCK_N, STEP, FP8)
        for gi in tl.static_range(N_SUB):
            kk = k0 + gi * STEP
            g = 0                                    # a row scale
            if GROUP > 0:
                g = kk // GROUP
            zero = _zero_of(z_e, rows, g, rows * 0 + kk < D, stride_sn, stride_sg, OFFSET, HAS_ZERO)
            if CHAIN == 4:
                part = _quad_step(w_e, rows, x_row, kk, D, KW, KW, zero, stride_wn, BITS, X_PACKED, ASM, 2 * BLOCK_N,
                                  STEP, EVEN and X_PACKED, FP8, X_TILE)
            else:
                part = _pair_step(w_e, rows, x_row, kk, D, KW, KW, zero, stride_wn, BITS, X_PACKED, ASM, 2 * BLOCK_N,
                                  STEP, EVEN and X_PACKED, FP8)
            if GROUP > 0:
                if EVEN:
                    s = tl.load(s_e + (rows // ROW_BLOCK) * stride_sn + g * stride_sg)
                else:
                    s = tl.load(s_e + (rows // ROW_BLOCK) * stride_sn + g * stride_sg, mask=rows * 0 + kk < D,
                                other=0.0)
                acc += s[:, None] * part
            else:
                acc += part
    total = tl.sum(acc, axis=1) * (1.0 / _X_SCALE)
    if GROUP == 0:
        total = total * tl.load(s_e + (rows // ROW_BLOCK) * stride_sn)
    gate, up = tl.split(tl.reshape(total, (BLOCK_N, 2)))
    h = gate * tl.sigmoid(gate) * up * _H_SCALE
    cols = col0 + tl.arange(0, BLOCK_N)
    h = tl.where(cols < I, h, 0.0)
    # column c = H_PW·w + i is half i // (H_PW/2) of pair s = i % (H_PW/2) of word w: int32 s·KW2 + w
    pos = 2 * ((cols % (H_PW // 2)) * (IP // H_PW) + cols // H_PW) + (cols % H_PW) // (H_PW // 2)
    tl.store(h_ptr + pair.to(tl.int64) * stride_ht + pos, h.to(tl.float16), mask=cols < IP)


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _down_pair_kernel(h_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ids_ptr, weights_ptr, ws_ptr, cnt_ptr, top_k, expert_offset,
                      E, T, D, I, KW, stride_ht, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ot,
                      BITS: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr,
                      HAS_ZERO: tl.constexpr, X_PACKED: tl.constexpr, DENSE: tl.constexpr, ASM: tl.constexpr,
                      WIDE: tl.constexpr, IN_UNSCALE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr, FP8: tl.constexpr = False,
                      CHAIN: tl.constexpr = 1):
    """out[t, cols] = Σ_k w[t,k] · W2[e_k][cols, :] · h[t·K + k]; DENSE: out[t, cols] = W[cols, :] · h[t].
    h: int32 pairs in paired order (X_PACKED, h_ptr and stride_ht in int32 units) or plain activations.
    One flat loop over (slot, step), as fused_moe_quant_gemv's; every step scaled by its scales times the
    slot's routing weight. SPLIT > 1 (split-K): SPLIT programs share a (token, column block), each a
    contiguous share of the flat loop; each stores its fp32 partial in ws [SPLIT, T, D], bumps the block's
    counter in cnt [T·blocks] (zeroed by the caller), and the last to arrive adds the SPLIT partials in
    order 0..SPLIT-1 (the result does not depend on which program finishes last) and stores out."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(D, BLOCK_N)
    pid = tl.program_id(0)
    sp, tb = pid % SPLIT, pid // SPLIT
    t, blk = tb // n_blocks, tb % n_blocks
    col0 = blk * BLOCK_N
    rows = (col0 + tl.arange(0, BLOCK_N)) % D
    n_chunks = tl.cdiv(I, BLOCK_K)
    STEP: tl.constexpr = GROUP if GROUP > 0 and not WIDE else BLOCK_K
    N_SUB: tl.constexpr = 0 if WIDE else BLOCK_K // STEP                 # group steps a K-step (0: one wide step)
    acc = tl.zeros((BLOCK_N, STEP * BITS // 32 // CHAIN), dtype=tl.float32)
    n_flat = top_k * n_chunks
    share = tl.cdiv(n_flat, SPLIT)
    start = sp * share
    slot = start // n_chunks                  # (slot, chunk) of flat step j, stepped along: no division a step
    chunk = start - slot * n_chunks
    for j in tl.range(start, tl.minimum(n_flat, start + share), num_stages=STAGES):
        pair, k0, e64, k_lim, kw_lim, route_w = _slot_chunk(slot, chunk, t, top_k, ids_ptr, weights_ptr,
                                                            expert_offset, E, I, KW, BLOCK_K, DENSE)
        chunk += 1
        wrap = chunk == n_chunks
        slot = tl.where(wrap, slot + 1, slot)
        chunk = tl.where(wrap, 0, chunk)
        w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
        if WIDE:
            if CHAIN == 4:
                part = _wide_quad_step(w_e, s_e, z_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, k0, k_lim, kw_lim,
                                       KW, stride_wn, stride_sn, stride_sg, BITS, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO,
                                       X_PACKED, ASM, BLOCK_N, STEP, FP8)
            else:
                part = _wide_step(w_e, s_e, z_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, k0, k_lim, kw_lim, KW,
                                  stride_wn, stride_sn, stride_sg, BITS, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED,
                                  ASM, BLOCK_N, STEP, FP8)
            if GROUP > 0:
                acc += part * route_w
            else:
                live = rows * 0 + k0 < k_lim
                acc += part * (tl.load(s_e + (rows // ROW_BLOCK) * stride_sn, mask=live, other=0.0) * route_w)[:, None]
        for gi in tl.static_range(N_SUB):
            kk = k0 + gi * STEP
            g = 0                                    # a row scale
            if GROUP > 0:
                g = kk // GROUP
            zero = _zero_of(z_e, rows, g, rows * 0 + kk < k_lim, stride_sn, stride_sg, OFFSET, HAS_ZERO)
            if CHAIN == 4:
                part = _quad_step(w_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, kk, k_lim, kw_lim, KW, zero,
                                  stride_wn, BITS, X_PACKED, ASM, BLOCK_N, STEP, FP8=FP8)
            else:
                part = _pair_step(w_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, kk, k_lim, kw_lim, KW, zero,
                                  stride_wn, BITS, X_PACKED, ASM, BLOCK_N, STEP, FP8=FP8)
            live = rows * 0 + kk < k_lim
            s = tl.load(s_e + (rows // ROW_BLOCK) * stride_sn + g * stride_sg, mask=live, other=0.0) * route_w
            acc += s[:, None] * part
    out = tl.sum(acc, axis=1) * IN_UNSCALE
    cols = col0 + tl.arange(0, BLOCK_N)
    if SPLIT > 1:
        tl.store(ws_ptr + (sp * T + t).to(tl.int64) * D + cols, out, mask=cols < D)
        tl.debug_barrier()                                   # every thread's partial is out before the count
        arrived = tl.atomic_add(cnt_ptr + tb, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:                             # the last: the others' partials are visible
            out = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for q in tl.static_range(SPLIT):
                out += tl.load(ws_ptr + (q * T + t).to(tl.int64) * D + cols, mask=cols < D, other=0.0,
                               volatile=True)
            tl.store(out_ptr + t.to(tl.int64) * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=cols < D)
    else:
        tl.store(out_ptr + t.to(tl.int64) * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=cols < D)
