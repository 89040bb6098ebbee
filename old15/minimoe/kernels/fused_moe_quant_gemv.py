"""Decode MoE on quantized weights, second design: 2-D GEMV tiles and three instructions a weight.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width,
W int32 words a tile row, PW codes a word (32 / bits).

fused_moe_quant_small.py keeps fused_moe_small's GEMVs and swaps the tile for a 3-D one [rows, runs,
codes], and on the H200 it streamed 8% of bandwidth for Mixtral int4 at M=1 (3x slower than bf16):
an unpack per weight plus layout shuffles of the 3-D tiles. This file keeps the same contract (one
(token, slot) pair per GEMM1 program, GEMM2 walks all K slots and folds the routing weight into its
fp32 accumulator, foreign or skipped slots load nothing and add an exact 0) and changes the tile:

* 2-D tiles only. A step loads int32 words [ROWS, W] (16-byte vectors along the reduction) and walks
  the PW code positions j of a word with tl.static_range: field j of every word becomes a float in
  place, is multiplied by x at k0 + PW·w + j (a [W] strided load: x is tiny and stays in L1) and is
  added into an fp32 [ROWS, W] accumulator in the load's own layout. No 3-D tensor, no reshape, no
  per-run sum: nothing leaves the thread that loaded it until one reduction at the end.
* Codes as the top mantissa bits of 1.0. quant_tiles' 2^23 trick needs a subtract per weight,
  because 2^23 + u is far too large to be multiplied as is. Shifting field j to the top BITS bits
  of the mantissa and setting the bits of 1.0 gives f = 1 + u/2^BITS exactly, which can be: fp32
  keeps 23 − BITS bits below the code, so f·x loses nothing a plain product would not. The
  constant part leaves the loop by linearity,
        Σ (u − z)·x = 2^BITS · Σ f·x − (2^BITS + z) · Σ x,
  with Σ x once per word column (shared by all rows) and the correction once per scale group.
  Per weight: one shift, one AND-OR (a LOP3), one FMA, against shift, AND, OR, subtract, FMA.
* Scales once per group: a K-step is whole scale groups (int4: 128 inputs, 16 words a row), each
  applied to its group's partial with the group's [ROWS] scales, two FMAs per (row, word); row scales
  (int8, fp8) are applied once at the end of GEMM1's reduction, and once a step in GEMM2, whose steps
  change expert.
* GEMM1 stacks the gate and the up rows of its columns into one tile (interleaved, split at the end),
  so each x load serves twice the rows.
fp8 has no fields: a [ROWS, BLOCK_K] byte tile converts to floats (one cvt for two e4m3 on sm89+)
against x loaded in the same shape. bitsandbytes' nf4 (codebook lookup) and LLM.int8 (signed bytes,
flipped by the same LOP3) read their own storage in place, as in quant_tiles.

Config: the "gemv" key of a fused_moe config, GEMM1's tiles with GEMM2's in "down":
    {"gemv": {"BLOCK_N": 32, "BLOCK_K": 512, "num_warps": 4, "num_stages": 1, "down": {...}}}
BLOCK_N counts output columns (GEMM1 tiles 2·BLOCK_N weight rows), BLOCK_K weights a step (a power of
two, whole scale groups). Chosen by fused_moe_quant_small.DECODE_VARIANT or {"variant": "gemv"}.
"""

import torch
import triton
import triton.language as tl

from .fused_moe_small import _flat_slot, _local_expert
from .moe_configs import on_gpu
from .pdl import launch_args, wait_then_release
from .quant_tiles import layout_args, pointer_args, stride_args

GEMV_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages")


@triton.jit
def _field(words, J: tl.constexpr, BITS: tl.constexpr, CODES: tl.constexpr, code_ptr):
    """Field J of int32 words as fp32: 1 + u/2^BITS (CODES 0: unsigned u; CODES 2: LLM.int8's signed
    byte, whose top bit the same LOP3 flips), or nf4's codebook value (CODES 1)."""
    if CODES == 1:
        v = tl.load(code_ptr + ((words >> ((BITS * J) ^ 4)) & 15))   # a byte's first code is its high nibble
    else:
        SHIFT: tl.constexpr = 23 - BITS * (J + 1)                      # field J -> mantissa bits 23-BITS .. 22
        if SHIFT >= 0:
            t = words << SHIFT
        else:
            t = words >> (-SHIFT)                                      # arithmetic; the mask drops the sign
        MASK: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS)
        if CODES == 2:
            v = ((t & MASK) ^ 0x3FC00000).to(tl.float32, bitcast=True)  # 1.0's bits, and the code's top bit flipped
        else:
            v = ((t & MASK) | 0x3F800000).to(tl.float32, bitcast=True)
    return v


@triton.jit
def _step(acc, xs, w_e, s_e, z_e, code_ptr, rows, x_row, kk, K, KW, sw, stride_wn, stride_sn, stride_sg,
          BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
          OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_NOW: tl.constexpr, ROWS: tl.constexpr,
          STEP: tl.constexpr):
    """Inputs kk .. kk+STEP of weight rows `rows` [ROWS] against x_row. SCALE_NOW: the step's partial
    is scaled (its group's scales, or the row scales, times sw) and added to acc [ROWS, W]; otherwise
    acc takes the raw Σ f·x and xs [W] the Σ x that the row-scale correction needs at the end (finish).
    Past K (K = KW = 0 for a foreign slot): masked, no traffic, an exact 0."""
    if BITS == 0:
        offs = kk + tl.arange(0, STEP)
        xk = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)                  # [STEP]
        w = tl.load(w_e + rows[:, None] * stride_wn + offs[None, :], mask=(offs < K)[None, :], other=0.0,
                    eviction_policy="evict_first")
        if SCALE_NOW:
            part = w.to(tl.float32) * xk[None, :]                                            # [ROWS, STEP]
        else:
            part = acc + w.to(tl.float32) * xk[None, :]
        xsum = xk
    else:
        PW: tl.constexpr = 32 // BITS
        W: tl.constexpr = STEP // PW
        offs_w = kk // PW + tl.arange(0, W)
        words = tl.load(w_e + rows[:, None] * stride_wn + offs_w[None, :], mask=(offs_w < KW)[None, :], other=0,
                        eviction_policy="evict_first")                                      # [ROWS, W]
        if SCALE_NOW:
            part = tl.zeros((ROWS, W), dtype=tl.float32)
        else:
            part = acc
        xsum = tl.zeros((W,), dtype=tl.float32)
        for j in tl.static_range(PW):
            kx = kk + tl.arange(0, W) * PW + j
            xj = tl.load(x_row + kx, mask=kx < K, other=0.0).to(tl.float32)                 # [W]
            part += _field(words, j, BITS, CODES, code_ptr) * xj[None, :]
            xsum += xj
    if SCALE_NOW:
        if GROUP > 0:
            g = kk // GROUP                                  # a scale group that exists whenever kk < K
        else:
            g = 0                                            # a row scale
        live = rows * 0 + kk < K                             # [ROWS]: all or none
        s = tl.load(s_e + (rows // ROW_BLOCK) * stride_sn + g * stride_sg, mask=live, other=0.0) * sw  # [ROWS]
        if BITS == 0 or CODES == 1:        # the codes are the values
            acc += s[:, None] * part
        else:
            MUL: tl.constexpr = 1 << BITS
            if HAS_ZERO:
                z = tl.load(z_e + rows * stride_sn + g * stride_sg, mask=live, other=0.0)
            else:
                z = OFFSET
            acc += (s * MUL)[:, None] * part - (s * (MUL + z))[:, None] * xsum[None, :]
    else:
        acc = part
        if BITS > 0 and CODES != 1:
            xs += xsum
    return acc, xs


@triton.jit
def _finish(acc, xs, s_e, z_e, rows, stride_sn, BITS: tl.constexpr, CODES: tl.constexpr, ROW_BLOCK: tl.constexpr,
            OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, SCALED: tl.constexpr):
    """acc [ROWS, W] -> the rows' dot products [ROWS]: the one cross-thread reduction, and for an
    unscaled accumulation the row scale and the 1.0 correction."""
    total = tl.sum(acc, axis=1)
    if not SCALED:
        s = tl.load(s_e + (rows // ROW_BLOCK) * stride_sn)
        if BITS == 0 or CODES == 1:
            total = total * s
        else:
            MUL: tl.constexpr = 1 << BITS
            if HAS_ZERO:
                z = tl.load(z_e + rows * stride_sn)
            else:
                z = OFFSET
            total = s * (MUL * total - (MUL + z) * tl.sum(xs, axis=0))
    return total


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _gate_up_gemv_q_kernel(x_ptr, w_ptr, s_ptr, z_ptr, c_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, D, KW,
                           stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                           BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                           OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """h[pair, cols] = silu(Wg[e] x[t]) * (Wu[e] x[t]) for one pair and BLOCK_N columns of I."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(I, BLOCK_N)
    pair, col0 = tl.program_id(0) // n_blocks, (tl.program_id(0) % n_blocks) * BLOCK_N
    expert = _local_expert(ids_ptr, pair, expert_offset, E)
    if expert < 0:
        return                                   # foreign or skipped slot: GEMM2 never reads this h row
    # tile row 2c is gate column col0 + c, row 2c + 1 its up row (I + col0 + c); past I rows wrap
    # (loads in bounds), the store drops them
    r = tl.arange(0, 2 * BLOCK_N)
    rows = (col0 + r // 2) % I + (r % 2) * I                                              # [2·BN]
    e64 = expert.to(tl.int64)
    w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
    x_row = x_ptr + (pair // top_k).to(tl.int64) * stride_xt
    STEP: tl.constexpr = GROUP if GROUP > 0 else BLOCK_K
    ACC_W: tl.constexpr = STEP * BITS // 32 if BITS > 0 else STEP                       # words (fp8: bytes) a row
    SCALED: tl.constexpr = GROUP > 0
    acc = tl.zeros((2 * BLOCK_N, ACC_W), dtype=tl.float32)
    xs = tl.zeros((ACC_W,), dtype=tl.float32)
    for k0 in tl.range(0, D, BLOCK_K, num_stages=STAGES):
        for g in tl.static_range(BLOCK_K // STEP):
            acc, xs = _step(acc, xs, w_e, s_e, z_e, c_ptr, rows, x_row, k0 + g * STEP, D, KW, 1.0, stride_wn,
                            stride_sn, stride_sg, BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, SCALED,
                            2 * BLOCK_N, STEP)
    total = _finish(acc, xs, s_e, z_e, rows, stride_sn, BITS, CODES, ROW_BLOCK, OFFSET, HAS_ZERO, SCALED)
    gate, up = tl.split(tl.reshape(total, (BLOCK_N, 2)))
    h = gate * tl.sigmoid(gate) * up
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + pair.to(tl.int64) * stride_ht + cols, h.to(h_ptr.dtype.element_ty), mask=cols < I)


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _down_gemv_q_kernel(h_ptr, w_ptr, s_ptr, z_ptr, c_ptr, out_ptr, ids_ptr, weights_ptr, top_k, expert_offset,
                        E, D, I, KW, stride_ht, stride_we, stride_wn, stride_se, stride_sn, stride_sg,
                        stride_ot, BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr,
                        ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, DENSE: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """out[t, cols] = Σ_k w[t,k] · W2[e_k][cols, :] · h[t·K + k]; DENSE: out[t, cols] = W[cols, :] · h[t].
    One flat loop over (slot, step), as fused_moe_small's, so the pipeliner runs across slots. A step
    may change expert, so every step is scaled, its scales times the slot's routing weight: one
    accumulator for all slots, reduced once at the end."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(D, BLOCK_N)
    t, col0 = tl.program_id(0) // n_blocks, (tl.program_id(0) % n_blocks) * BLOCK_N
    rows = (col0 + tl.arange(0, BLOCK_N)) % D
    n_chunks = tl.cdiv(I, BLOCK_K)
    STEP: tl.constexpr = GROUP if GROUP > 0 else BLOCK_K
    ACC_W: tl.constexpr = STEP * BITS // 32 if BITS > 0 else STEP
    acc = tl.zeros((BLOCK_N, ACC_W), dtype=tl.float32)
    xs = tl.zeros((ACC_W,), dtype=tl.float32)                                       # unused: every step scales
    for j in tl.range(0, top_k * n_chunks, num_stages=STAGES):
        pair, k0, e64, k_lim, kw_lim, route_w = _flat_slot(j, n_chunks, t, top_k, ids_ptr, weights_ptr, expert_offset,
                                                           E, I, KW, BLOCK_K, DENSE)
        for g in tl.static_range(BLOCK_K // STEP):
            acc, xs = _step(acc, xs, w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se,
                            c_ptr, rows, h_ptr + pair.to(tl.int64) * stride_ht, k0 + g * STEP, k_lim, kw_lim,
                            route_w, stride_wn, stride_sn, stride_sg, BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO,
                            True, BLOCK_N, STEP)
    out = tl.sum(acc, axis=1)
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=cols < D)


# Tiles per (format bits, tokens): (GEMM1 [BLOCK_N, BLOCK_K, warps, stages], GEMM2 [...]), the best pair of
# the H200 sweep (scripts/quant_decode_sweep.py; docs/results/2026-11-30-s5/call3_x2/quant) on Mixtral-8x7B,
# Qwen3-30B-A3B and OLMoE shapes, µs per layer against the previous decode kernels (fused_moe_quant_small):
#   int8 T=1 [8,1024]|[8,512]: Mixtral 340 -> 131, Qwen3 48.7 -> 24.7, OLMoE 56.9 -> 27.7 (bf16: 170 / 30 / 33)
#   int8 T>=2 [16,512]|[16,256] 2 warps: Mixtral T=2 660 -> 220, Qwen3 T=4 171 -> 56
#   fp8 T=1 [8,512]|[8,512]: Qwen3 32.0 -> 25.3, OLMoE 36.4 -> 26.3; T=2 [16,256]|[16,512]: OLMoE 63 -> 41
#   int4 [16,256] 1 warp|[8,256] 1 warp: Mixtral T=1 545 -> 219, Qwen3 66 -> 56, OLMoE 79 -> 64
# (fp8 from 3 tokens on runs the tensor-core kernel with 16-row tiles: fused_moe_quant.FP8_DOT_MIN_T.)
_TILES = {
    (8, 1): ((8, 1024, 4, 1), (8, 512, 4, 3)), (8, 2): ((16, 512, 4, 1), (16, 256, 2, 3)),
    (0, 1): ((8, 512, 4, 1), (8, 512, 4, 3)), (0, 2): ((16, 256, 4, 1), (16, 512, 4, 2)),
    (4, 1): ((16, 256, 1, 1), (8, 256, 1, 3)), (4, 2): ((16, 256, 1, 1), (8, 256, 1, 3)),
}


def gemv_config(m, K_in: int, down: bool = False, T: int = 1) -> dict:
    """Tiles for a weight stack `m` reduced over K_in at T tokens (the measured table above). A step never
    holds less than a scale group nor more than the reduction (rounded up to a power of two)."""
    if not on_gpu():          # the interpreter pays per program and per op: few, mid-sized tiles
        return {"BLOCK_N": 16, "BLOCK_K": max(64, m.group), "num_warps": 4, "num_stages": 1}
    bn, bk, warps, stages = _TILES[(m.bits, min(T, 2))][1 if down else 0]
    block_k = max(m.group, min(bk, triton.next_power_of_2(K_in)))
    return {"BLOCK_N": bn, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}


def pick_tiles(config: dict | None, key: str, base: dict, section: str = "gemv", keys=None) -> dict:
    """config[section] (its "down" dict for GEMM2, key "down") over the default tiles `base`; the decode
    kernels of fused_moe_quant_small.py read theirs the same way from config["small"]."""
    given = (config or {}).get(section, {})
    given = given.get("down", {}) if key == "down" else given
    return {k: given.get(k, base[k]) for k in (keys or GEMV_KEYS)}


def check_block_k(cfg: dict, m) -> None:
    bk, vec = cfg["BLOCK_K"], 32 // m.bits if m.bits else 16
    assert bk & (bk - 1) == 0 and bk % vec == 0 and (m.group == 0 or bk % m.group == 0), \
        f"BLOCK_K {bk} must be a power of two, a multiple of {vec} and of the scale group {m.group}"


def fused_moe_quant_gemv(x, w13, w2, ids, topk_weights, expert_offset: int, config: dict | None = None,
                         pdl: bool = False) -> torch.Tensor:
    """The decode path of fused_moe_quant with these kernels (inputs checked there): x [T, D], w13 / w2
    quantized stacks [E, 2I, D] / [E, D, I], ids/topk_weights [T, K] -> [T, D] in x.dtype."""
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, ids.shape[1]
    cfg1 = pick_tiles(config, "gate_up", gemv_config(w13, D, T=T))
    cfg2 = pick_tiles(config, "down", gemv_config(w2, I, down=True, T=T))
    check_block_k(cfg1, w13)
    check_block_k(cfg2, w2)
    # h stays fp32: GEMM2 reads each h value once per weight word it meets, and an fp32 load needs no
    # conversion; h is T·K·I·4 bytes against the megabytes of weights a slot streams
    h = x.new_empty(T * K, I, dtype=torch.float32)                                     # [T·K, I]
    data, scale, zero, code, _, kw, _ = pointer_args(w13)
    _gate_up_gemv_q_kernel[(T * K * triton.cdiv(I, cfg1["BLOCK_N"]),)](
        x, data, scale, zero, code, h, ids, K, expert_offset, E, I, D, kw,
        x.stride(0), *stride_args(w13), h.stride(0), **layout_args(w13),
        BLOCK_N=cfg1["BLOCK_N"], BLOCK_K=cfg1["BLOCK_K"], STAGES=cfg1["num_stages"],
        num_warps=cfg1["num_warps"], num_stages=cfg1["num_stages"], **launch_args(pdl))
    out = x.new_empty(T, D)
    weights = topk_weights.float().contiguous().view(-1)                               # [T·K]
    _launch_down(h, w2, out, ids, weights, K, expert_offset, E, cfg2, False, False)   # after GEMM1 (pdl.py)
    return out


def _launch_down(h, w, out, ids, weights, top_k, expert_offset, E, cfg, dense, pdl):
    T, D = out.shape
    data, scale, zero, code, I, kw, _ = pointer_args(w)
    _down_gemv_q_kernel[(T * triton.cdiv(D, cfg["BLOCK_N"]),)](
        h, data, scale, zero, code, out, ids, weights, top_k, expert_offset, E, D, I, kw,
        h.stride(0), *stride_args(w), out.stride(0), **layout_args(w), DENSE=dense,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def quant_gemv_2d(x: torch.Tensor, w, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """A dense quantized layer at decode with these kernels: x [T, K] (contiguous) @ W[N, K]ᵀ -> [T, N]."""
    T = x.shape[0]
    N = w.stack_shape[1]
    cfg = pick_tiles(config, "down", gemv_config(w, w.K, down=True, T=T))
    check_block_k(cfg, w)
    out = x.new_empty(T, N)
    if T:
        _launch_down(x, w, out, x, x, 1, 0, 1, cfg, True, pdl)
    return out
