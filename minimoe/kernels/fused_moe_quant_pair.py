"""Decode MoE on int4 / int8 weights, third design (after fused_moe_quant_small's 3-D tiles and
fused_moe_quant_gemv's fp32 2-D tiles): two fp16 weights a register (Marlin's trick).

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width,
PW codes an int32 word (8 for int4, 4 for int8: vLLM's and AWQ's pack factor), V words a tile row per step.
Inputs: x bf16 / fp16 (fp32 works, in fp16 precision), ids int32/int64 [T, K], routing weights [T, K];
outputs in x's dtype. Raises ValueError for a stack that is not minimoe's int4 / int8 codes or a BLOCK_K
that is not a power of two holding whole words and scale groups.

fused_moe_quant_gemv.py turns every code into an fp32 with a shift, a LOP3 and an FMA: three
instructions a weight, two on the H100/H200's half-rate integer pipe, plus a strided x load. This file
turns two codes at once into an fp16 pair and multiplies pairs (the dequantization of Marlin,
arXiv 2408.11743, and of FasterTransformer's weight-only GEMMs; our own PTX, written from their
description):

* int4: `lop3.b32 f, w, 0x000F000F, 0x64006400` puts fields 0 and 4 of a word into the mantissas
  of two fp16 1024s: f = (1024 + u_0, 1024 + u_4). One `sub.f16x2` of 1024 + z gives the exact signed
  codes, one `fma.rn.f16x2` multiplies them by the matching pair of x and adds. Fields 1 and 5 are
  taken in place with mask 0x00F000F0 (f = 1024 + 16u) and made u − z by one fma (f/16 − (64 + z));
  w >> 8 does fields 2, 6 and 3, 7 the same way. A word (8 weights): 1 shift, 4 LOP3, 2 HSUB2,
  2 HFMA2 for the high fields, 1 HMUL2 + 3 HFMA2 against x, then the fp16 pair sum goes to fp32.
* int8: `prmt.b32 f, w, 0x64646464, 0x5250` (and 0x5351) builds the pairs (1024 + b0, 1024 + b2)
  and (1024 + b1, 1024 + b3) (the byte selectors of FasterTransformer's
  FastInterleavedAndBiasedNumericArrayConverter, cutlass_extensions interleaved_numeric_conversion.h);
  the same sub and fma follow.
Marlin and FasterTransformer interleave the weights at load so the pairs meet the MMA layout; here the
weights keep minimoe's GPTQ-order words and the activations are interleaved instead (a few KB a call).
So x must arrive as fp16 pairs in the order the fields pair up: pair s of word w is
(x[PW·w + s], x[PW·w + s + PW/2]), stored as int32 number s·KW + w of its row ("paired order": the
pairs s of consecutive words are consecutive, so a thread's 4 words take one 16-byte load per s).
GEMM1 reads x and packs the pairs it needs (or reads them pre-packed by a small kernel: X_PACKED);
it writes h straight into paired order, in fp16, for GEMM2.

Precision. A word's products are summed in fp16 (at most 8 terms), then accumulated in fp32 with the
scales. The activations are multiplied by a power of two when they become fp16 (the result divided by
it at the end) so that a word's partial sum stays finite: x by X_SCALE = 2^-8 (finite up to |x| ~ 2.6e5
for symmetric int4, 3.3e4 for int8), h = silu(gate)·up, larger and heavier-tailed, by H_SCALE = 2^-12
(|h| up to 4.2e6 / 5.2e5). Values under 2^-14 / scale (|x| < 0.004, |h| < 0.25) become fp16 subnormals,
spaced 2^-24 / scale apart (6e-8 x 256 = 1.5e-5 for x, 2.4e-4 for h): small h lose relative precision, but
their products are small next to the sum's large terms (the tests check whole outputs). Against dequantize-then-matmul in fp32 the error is a few
1e-4 relative for activations of unit scale: far under the formats' own. The GPU test checks |x| ~ 100.

The PTX runs only on a GPU; under the Triton interpreter (CI) ASM is False and `_pair_dot` computes the
same sums in fp32 from the same bit fields, so the layout, masks, pairing and scales are tested on the
CPU and the PTX itself by the GPU check (scripts/quant_decode_sweep.py, tests marked gpu).
Config: the "pair" key of a fused_moe config, GEMM1's tiles with GEMM2's in "down" (as "gemv").
"""

import torch
import triton
import triton.language as tl

from .fused_moe_small import _local_expert
from .moe_configs import on_gpu
from .pdl import launch_args, wait_then_release
from .quant_tiles import layout_args, pointer_args, stride_args

X_SCALE = 2.0 ** -8           # x is stored as fp16 times this (dense layers, GEMM1's input); results divided by it
H_SCALE = 2.0 ** -12          # h (GEMM1's output, silu(gate)·up: larger, heavier-tailed) likewise
_X_SCALE = tl.constexpr(X_SCALE)
_H_SCALE = tl.constexpr(H_SCALE)

_INT4_ASM = tl.constexpr("""{
.reg .b32 t, f, a;
.reg .b16 lo, hi;
.reg .f32 fl, fh;
lop3.b32 f, $1, 0x000F000F, 0x64006400, 0xEA;
sub.f16x2 f, f, $6;
mul.rn.f16x2 a, f, $2;
lop3.b32 f, $1, 0x00F000F0, 0x64006400, 0xEA;
fma.rn.f16x2 f, f, $8, $7;
fma.rn.f16x2 a, f, $3, a;
shr.u32 t, $1, 8;
lop3.b32 f, t, 0x000F000F, 0x64006400, 0xEA;
sub.f16x2 f, f, $6;
fma.rn.f16x2 a, f, $4, a;
lop3.b32 f, t, 0x00F000F0, 0x64006400, 0xEA;
fma.rn.f16x2 f, f, $8, $7;
fma.rn.f16x2 a, f, $5, a;
mov.b32 {lo, hi}, a;
cvt.f32.f16 fl, lo;
cvt.f32.f16 fh, hi;
add.f32 $0, fl, fh;
}""")

_INT8_ASM = tl.constexpr("""{
.reg .b32 f, a;
.reg .b16 lo, hi;
.reg .f32 fl, fh;
prmt.b32 f, $1, 0x64646464, 0x5250;
sub.f16x2 f, f, $4;
mul.rn.f16x2 a, f, $2;
prmt.b32 f, $1, 0x64646464, 0x5351;
sub.f16x2 f, f, $4;
fma.rn.f16x2 a, f, $3, a;
mov.b32 {lo, hi}, a;
cvt.f32.f16 fl, lo;
cvt.f32.f16 fh, hi;
add.f32 $0, fl, fh;
}""")


@triton.jit
def _half(pairs, HI: tl.constexpr):
    """One fp16 of int32 pairs, as fp32 (the interpreter's path)."""
    if HI:
        bits = (pairs >> 16) & 0xFFFF
    else:
        bits = pairs & 0xFFFF
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _pair_dot(words, x0, x1, x2, x3, zero, BITS: tl.constexpr, ASM: tl.constexpr):
    """Σ over a word's PW fields of (u − zero)·x, fp32 [ROWS, V]. words [ROWS, V] int32; x0..x3 [V]
    int32 pairs in paired order (int8 uses x0, x1); zero: the zero point, an int32 scalar or [ROWS, 1]."""
    if ASM:
        magic = (0x6400 + zero) * 65537                # fp16 1024 + z in both halves
        if BITS == 4:
            # fields 1 and 5 (3 and 7) are taken in place, 16x too large: (1024 + 16u)/16 − (64 + z) in one
            # fma (0x2C00: 1/16; 0xD400 + 16z: −(64 + z)), so a word needs one shift, not three
            neg_hi = (0xD400 + 16 * zero) | ((0xD400 + 16 * zero) << 16)
            return tl.inline_asm_elementwise(_INT4_ASM, "=f,r,r,r,r,r,r,r,r",
                                             [words, x0[None, :], x1[None, :], x2[None, :], x3[None, :], magic,
                                              neg_hi, tl.full((1, 1), 0x2C002C00, tl.int32)],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(_INT8_ASM, "=f,r,r,r,r", [words, x0[None, :], x1[None, :], magic],
                                             dtype=tl.float32, is_pure=True, pack=1)
    else:
        z = zero.to(tl.float32)
        HALF: tl.constexpr = 16                        # field s + PW/2 sits 16 bits above field s
        MASK: tl.constexpr = (1 << BITS) - 1
        acc = ((words & MASK).to(tl.float32) - z) * _half(x0, False)[None, :]
        acc += (((words >> HALF) & MASK).to(tl.float32) - z) * _half(x0, True)[None, :]
        acc += (((words >> BITS) & MASK).to(tl.float32) - z) * _half(x1, False)[None, :]
        acc += (((words >> (HALF + BITS)) & MASK).to(tl.float32) - z) * _half(x1, True)[None, :]
        if BITS == 4:
            acc += (((words >> 8) & MASK).to(tl.float32) - z) * _half(x2, False)[None, :]
            acc += (((words >> 24) & MASK).to(tl.float32) - z) * _half(x2, True)[None, :]
            acc += (((words >> 12) & MASK).to(tl.float32) - z) * _half(x3, False)[None, :]
            acc += (((words >> 28) & MASK).to(tl.float32) - z) * _half(x3, True)[None, :]
        return acc


@triton.jit
def _x_pair(x_row, offs_w, S: tl.constexpr, K, KW, ROW_W, PW: tl.constexpr, PACKED: tl.constexpr,
            EVEN: tl.constexpr = False):
    """Pair S of words offs_w [V] as int32 (two fp16 of x·X_SCALE); 0 from word KW (or input K) on.
    PACKED: x_row points at int32 pairs in paired order, pair S of every word before pair S + 1
    (ROW_W words a row), so a thread's words load as one vector. EVEN: no word is past KW (no masks)."""
    if PACKED:
        if EVEN:
            return tl.load(x_row + S * ROW_W + offs_w)
        return tl.load(x_row + S * ROW_W + offs_w, mask=offs_w < KW, other=0)
    ka = offs_w * PW + S
    kb = ka + PW // 2
    a = tl.load(x_row + ka, mask=ka < K, other=0.0).to(tl.float32) * _X_SCALE
    b = tl.load(x_row + kb, mask=kb < K, other=0.0).to(tl.float32) * _X_SCALE
    ha = a.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hb = b.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return ha | (hb << 16)


@triton.jit
def _pair_step(w_e, rows, x_row, kk, K, KW, ROW_W, zero, stride_wn, BITS: tl.constexpr, PACKED: tl.constexpr,
               ASM: tl.constexpr, ROWS: tl.constexpr, STEP: tl.constexpr, EVEN: tl.constexpr = False):
    """Σ (u − zero)·x over inputs kk .. kk+STEP of weight rows `rows` [ROWS]: fp32 [ROWS, V]
    (scaled by X_SCALE); past KW (KW = 0 for a foreign slot) masked, no traffic, an exact 0. EVEN: the
    caller knows no word is past KW (GEMM1 with D a multiple of BLOCK_K): loads without masks."""
    PW: tl.constexpr = 32 // BITS
    V: tl.constexpr = STEP // PW
    offs_w = kk // PW + tl.arange(0, V)
    if EVEN:
        words = tl.load(w_e + rows[:, None] * stride_wn + offs_w[None, :], eviction_policy="evict_first")
    else:
        words = tl.load(w_e + rows[:, None] * stride_wn + offs_w[None, :], mask=(offs_w < KW)[None, :], other=0,
                        eviction_policy="evict_first")                                       # [ROWS, V]
    x0 = _x_pair(x_row, offs_w, 0, K, KW, ROW_W, PW, PACKED, EVEN)
    x1 = _x_pair(x_row, offs_w, 1, K, KW, ROW_W, PW, PACKED, EVEN)
    if BITS == 4:
        x2 = _x_pair(x_row, offs_w, 2, K, KW, ROW_W, PW, PACKED, EVEN)
        x3 = _x_pair(x_row, offs_w, 3, K, KW, ROW_W, PW, PACKED, EVEN)
    else:
        x2, x3 = x0, x1
    return _pair_dot(words, x0, x1, x2, x3, zero, BITS, ASM)


@triton.jit
def _zero_of(z_e, rows, g, live, stride_sn, stride_sg, OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr):
    """The zero point of group g of rows `rows`: [ROWS, 1] int32 (nothing read where not `live`), or OFFSET."""
    if HAS_ZERO:
        z = tl.load(z_e + rows * stride_sn + g * stride_sg, mask=live, other=0.0).to(tl.int32)[:, None]
    else:
        z = tl.full((1, 1), OFFSET, dtype=tl.float32).to(tl.int32)
    return z


@triton.jit
def _wide_step(w_e, s_e, z_e, rows, x_row, kk, K, KW, ROW_W, stride_wn, stride_sn, stride_sg, BITS: tl.constexpr,
               GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr,
               PACKED: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, STEP: tl.constexpr):
    """_pair_step over several scale groups at once (a WIDE tile): each word's partial times its own
    group's scale (and less its own zero point), loaded per word (the 16 words of a 128-group share the
    address); with row scales (GROUP 0) the partial is returned unscaled."""
    PW: tl.constexpr = 32 // BITS
    V: tl.constexpr = STEP // PW
    offs_w = kk // PW + tl.arange(0, V)
    live = (offs_w < KW)[None, :]
    if GROUP > 0:
        gw = (offs_w // (GROUP // PW))[None, :]                                              # [1, V]
        if HAS_ZERO:
            zero = tl.load(z_e + rows[:, None] * stride_sn + gw * stride_sg, mask=live, other=0.0).to(tl.int32)
        else:
            zero = tl.full((1, 1), OFFSET, dtype=tl.float32).to(tl.int32)
        part = _pair_step(w_e, rows, x_row, kk, K, KW, ROW_W, zero, stride_wn, BITS, PACKED, ASM, ROWS, STEP)
        sw = tl.load(s_e + (rows // ROW_BLOCK)[:, None] * stride_sn + gw * stride_sg, mask=live, other=0.0)
        part = part * sw
    else:
        part = _pair_step(w_e, rows, x_row, kk, K, KW, ROW_W, _zero_of(z_e, rows, 0, rows * 0 + kk < K, stride_sn,
                          stride_sg, OFFSET, HAS_ZERO), stride_wn, BITS, PACKED, ASM, ROWS, STEP)
    return part


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _gate_up_pair_kernel(x_ptr, w_ptr, s_ptr, z_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, IP, D, KW,
                         stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                         BITS: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr,
                         HAS_ZERO: tl.constexpr, H_PW: tl.constexpr, X_PACKED: tl.constexpr, ASM: tl.constexpr,
                         WIDE: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         STAGES: tl.constexpr, PDL: tl.constexpr):
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
    acc = tl.zeros((2 * BLOCK_N, STEP * BITS // 32), dtype=tl.float32)
    for k0 in tl.range(0, D, BLOCK_K, num_stages=STAGES):
        if WIDE:
            acc += _wide_step(w_e, s_e, z_e, rows, x_row, k0, D, KW, KW, stride_wn, stride_sn, stride_sg, BITS, GROUP,
                              ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED, ASM, 2 * BLOCK_N, STEP)
        for gi in tl.static_range(N_SUB):
            kk = k0 + gi * STEP
            g = 0                                    # a row scale
            if GROUP > 0:
                g = kk // GROUP
            part = _pair_step(w_e, rows, x_row, kk, D, KW, KW, _zero_of(z_e, rows, g, rows * 0 + kk < D, stride_sn,
                              stride_sg, OFFSET, HAS_ZERO), stride_wn, BITS, X_PACKED, ASM, 2 * BLOCK_N, STEP,
                              EVEN and X_PACKED)
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
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
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
    acc = tl.zeros((BLOCK_N, STEP * BITS // 32), dtype=tl.float32)
    n_flat = top_k * n_chunks
    share = tl.cdiv(n_flat, SPLIT)
    for j in tl.range(sp * share, tl.minimum(n_flat, sp * share + share), num_stages=STAGES):
        slot = j // n_chunks
        k0 = (j - slot * n_chunks) * BLOCK_K
        pair = t * top_k + slot
        if DENSE:
            e64 = tl.zeros((), dtype=tl.int64)
            k_lim, kw_lim, route_w = I, KW, 1.0
        else:
            expert = _local_expert(ids_ptr, pair, expert_offset, E)
            e64 = tl.maximum(expert, 0).to(tl.int64)
            k_lim, kw_lim = tl.where(expert >= 0, I, 0), tl.where(expert >= 0, KW, 0)
            route_w = tl.where(expert >= 0, tl.load(weights_ptr + pair), 0.0)
        w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
        if WIDE:
            part = _wide_step(w_e, s_e, z_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, k0, k_lim, kw_lim, KW,
                              stride_wn, stride_sn, stride_sg, BITS, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED,
                              ASM, BLOCK_N, STEP)
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
            part = _pair_step(w_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, kk, k_lim, kw_lim, KW,
                              _zero_of(z_e, rows, g, rows * 0 + kk < k_lim, stride_sn, stride_sg, OFFSET, HAS_ZERO),
                              stride_wn, BITS,
                              X_PACKED, ASM, BLOCK_N, STEP)
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


@triton.jit
def _pack_pairs_kernel(x_ptr, out_ptr, K, KW, stride_xt, stride_ot, PW: tl.constexpr, BLOCK: tl.constexpr):
    """out[t, s·KW + w] = the int32 pair (x[t, PW·w + s], x[t, PW·w + s + PW/2]) · X_SCALE in fp16."""
    t = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    x_row = x_ptr + t.to(tl.int64) * stride_xt
    o_row = out_ptr + t.to(tl.int64) * stride_ot
    for s in tl.static_range(PW // 2):
        tl.store(o_row + s * KW + offs_w, _x_pair(x_row, offs_w, s, K, KW, KW, PW, False), mask=offs_w < KW)


def pair_supported(w) -> bool:
    """Stacks these kernels read: minimoe's own int4 and int8 codes (not fp8, nf4 or LLM.int8)."""
    return w.bits in (4, 8) and w.codes == 0


def pack_pairs(x: torch.Tensor, w) -> torch.Tensor:
    """x [T, K] (bf16/fp16/fp32) -> [T, KW · PW/2] int32 pairs in paired order for the stack `w`
    (KW: its words a row, K padded to its scale group; the padding gets zeros)."""
    T, K = x.shape
    pw = 32 // w.bits
    kw = w.data3.shape[2]
    out = torch.empty(T, kw * pw // 2, dtype=torch.int32, device=x.device)
    if T:
        _pack_pairs_kernel[(T, triton.cdiv(kw, 128))](x, out, K, kw, x.stride(0), out.stride(0), PW=pw, BLOCK=128)
    return out


# Tiles per (format bits, tokens 1 or 2+): (GEMM1 (BLOCK_N, BLOCK_K, warps, stages, x_packed, wide), GEMM2 (...,
# split)), each GEMM's best in scripts/pair_tiles.py on the H200 (docs/results/2026-11-30-s6, calls 3 and 5), µs
# against the 2-D GEMVs of fused_moe_quant_gemv (Nsight Compute, call 1), Mixtral-8x7B at T = 1: int4 GEMM1
# 81 -> 53, GEMM2 137 -> 30 (split-K over 8: 42 unsplit); int8 GEMM1 72 -> 58 (93% of its floor), GEMM2 60 -> 32
# (86%; splitting only adds). Dense D x D decode layers (quant_pair_2d, GEMM2's kernel, x packed first): int4
# 18.7 -> 9.0-10.2 µs, int8 12.2 -> 9.3-9.5 (neither gains from split-K).
# Narrow experts (I < 4096: OLMoE, Qwen, DeepSeek) take _NARROW_INT4_UP for int4's GEMM1 at T = 1
# (OLMoE 17.5 -> 13.0 µs, Qwen3-30B-A3B 16.8 -> 11.5; Mixtral's 52.8 would become 63.8).
_TILES = {
    (4, 1): ((32, 256, 4, 1, True, False), (16, 256, 1, 3, False, False, 8)),
    (4, 2): ((16, 256, 2, 2, True, False), (16, 256, 1, 3, False, False, 8)),
    (8, 1): ((16, 512, 4, 1, False, False), (4, 1024, 2, 3, False, False, 1)),
    (8, 2): ((16, 512, 4, 1, True, False), (4, 1024, 2, 3, False, False, 2)),
}
_NARROW_INT4_UP = (4, 1024, 2, 1, True, True)
_DENSE = {4: (32, 512, 4, 3, True, False, 1), 8: (4, 1024, 2, 3, True, False, 1)}
_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "x_packed", "wide", "split")


def pair_config(m, K_in: int, down: bool = False, T: int = 1, width: int = 0, dense: bool = False) -> dict:
    """Tiles for a weight stack `m` reduced over K_in at T tokens (the measured table above); width: the
    experts' I (GEMM1), dense: a plain linear (quant_pair_2d)."""
    if not on_gpu():          # the interpreter pays per program and per op: few, mid-sized tiles
        return {"BLOCK_N": 16, "BLOCK_K": max(64, m.group), "num_warps": 4, "num_stages": 1, "x_packed": False,
                "wide": False, "split": 1}
    if dense:
        tiles = _DENSE[m.bits]
    elif m.bits == 4 and T == 1 and not down and width < 4096:
        tiles = _NARROW_INT4_UP
    else:
        tiles = _TILES[(m.bits, min(T, 2))][1 if down else 0]
    cfg = dict(zip(_KEYS, tiles + (1,) * (len(_KEYS) - len(tiles))))
    cfg["BLOCK_K"] = max(m.group, min(cfg["BLOCK_K"], triton.next_power_of_2(K_in)))
    return cfg


def _tiles(config, key, base):
    given = (config or {}).get("pair", {})
    given = given.get("down", {}) if key == "down" else given
    return {k: given.get(k, base[k]) for k in base}


def _check(cfg: dict, m) -> None:
    bk, pw = cfg["BLOCK_K"], 32 // m.bits
    if bk & (bk - 1) or bk % (4 * pw) or (m.group and bk % m.group):
        raise ValueError(f"pair kernels: BLOCK_K {bk} must be a power of two, a multiple of {4 * pw} "
                         f"and of the scale group {m.group}")


def fused_moe_quant_pair(x, w13, w2, ids, topk_weights, expert_offset: int, config: dict | None = None,
                         pdl: bool = False) -> torch.Tensor:
    """The decode path of fused_moe_quant with these kernels (inputs checked there): x [T, D], w13 / w2
    int4 or int8 stacks [E, 2I, D] / [E, D, I], ids/topk_weights [T, K] -> [T, D] in x.dtype."""
    for w in (w13, w2):
        if not pair_supported(w):
            raise ValueError(f"the pair decode kernels read int4 and int8 codes, not "
                             f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    h = gate_up_pair(x, w13, w2, ids, expert_offset, config, pdl)
    return down_pair(h, w2, ids, topk_weights, expert_offset, x.new_empty(x.shape), config, pdl)


def gate_up_pair(x, w13, w2, ids, expert_offset: int, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """GEMM1 alone: h [T·K, IP] fp16 in GEMM2's paired order (IP: w2's padded width), times H_SCALE."""
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, ids.shape[1]
    cfg = _tiles(config, "gate_up", pair_config(w13, D, T=T, width=I))
    _check(cfg, w13)
    x_packed = bool(cfg["x_packed"])
    xin = pack_pairs(x, w13) if x_packed else x
    data, scale, zero, _, _, kw, _ = pointer_args(w13)
    h_pw = 32 // w2.bits
    ip = w2.data3.shape[2] * h_pw                       # GEMM2's padded reduction: h's width
    h = torch.empty(T * K, ip, dtype=torch.float16, device=x.device)                  # [T·K, IP] paired order
    _gate_up_pair_kernel[(T * K * triton.cdiv(ip, cfg["BLOCK_N"]),)](
        xin, data, scale, zero, h, ids, K, expert_offset, E, I, ip, D, kw,
        xin.stride(0), *stride_args(w13), h.stride(0), **_layout(w13),
        H_PW=h_pw, X_PACKED=x_packed, ASM=on_gpu(), WIDE=bool(cfg["wide"]),
        EVEN=D % cfg["BLOCK_K"] == 0 and kw * (32 // w13.bits) == D,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    return h


def down_pair(h, w2, ids, topk_weights, expert_offset: int, out, config: dict | None = None,
              pdl: bool = False) -> torch.Tensor:
    """GEMM2 alone: h from gate_up_pair -> out [T, D] (written in place and returned)."""
    cfg = _tiles(config, "down", pair_config(w2, w2.K, down=True, T=out.shape[0]))
    _check(cfg, w2)
    weights = topk_weights.float().contiguous().view(-1)                               # [T·K]
    _launch_down(h.view(torch.int32), True, w2, out, ids, weights, ids.shape[1], expert_offset, w2.stack_shape[0],
                 cfg, False, pdl, 1 / H_SCALE)
    return out


def _layout(m) -> dict:
    args = layout_args(m)
    del args["CODES"]
    return args


def _launch_down(h, packed, w, out, ids, weights, top_k, expert_offset, E, cfg, dense, pdl, in_unscale=1 / X_SCALE):
    T, D = out.shape
    data, scale, zero, _, I, kw, _ = pointer_args(w)
    split = int(cfg["split"])
    blocks = T * triton.cdiv(D, cfg["BLOCK_N"])
    if split > 1:     # partials [SPLIT, T, D] fp32, then the counters [T·blocks] int32, zeroed: one memset
        ws = torch.zeros(split * T * D + blocks, dtype=torch.float32, device=out.device)
        ws, cnt = ws[:split * T * D], ws[split * T * D:].view(torch.int32)
    else:
        ws = cnt = out
    _down_pair_kernel[(blocks * split,)](
        h, data, scale, zero, out, ids, weights, ws, cnt, top_k, expert_offset, E, T, D, I, kw,
        h.stride(0), *stride_args(w), out.stride(0), **_layout(w), X_PACKED=packed, DENSE=dense, ASM=on_gpu(),
        WIDE=bool(cfg["wide"]), IN_UNSCALE=float(in_unscale), SPLIT=split,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def quant_pair_2d(x: torch.Tensor, w, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """A dense int4 / int8 layer at decode with these kernels: x [T, K] (contiguous) @ W[N, K]ᵀ -> [T, N] in
    x.dtype. Raises ValueError for another format or a bad BLOCK_K."""
    if not pair_supported(w):
        raise ValueError(f"the pair decode kernels read int4 and int8 codes, not "
                             f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    T = x.shape[0]
    N = w.stack_shape[1]
    cfg = _tiles(config, "down", pair_config(w, w.K, down=True, T=T, dense=True))
    _check(cfg, w)
    out = x.new_empty(T, N)
    if T:
        packed = bool(cfg["x_packed"])
        xin = pack_pairs(x, w) if packed else x
        # DENSE: one "expert", one slot of weight 1; ids and routing weights are never read (x stands in)
        _launch_down(xin, packed, w, out, x, x, 1, 0, 1, cfg, True, pdl)
    return out
