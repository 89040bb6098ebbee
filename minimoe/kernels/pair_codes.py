"""Two int4 / int8 weights a register: the fp16-pair arithmetic of the pair decode kernels.

Shape legend: PW codes an int32 word (8 for int4, 4 for int8: vLLM's and AWQ's pack factor), V words a
tile row per step, ROWS weight rows a tile, KW words a weight row.

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
* fp8 (e4m3, read as int32 words of four bytes, the int8 layout): `prmt.b32 t, w, 0, 0x3120` orders the
  bytes (b0, b2, b1, b3), and `cvt.rn.f16x2.e4m3x2` (sm89+) turns each 16-bit half into an exact fp16 pair
  (b0, b2) / (b1, b3): one permute and two conversions a word, no zero point; then the same mul and fma.
Marlin and FasterTransformer interleave the weights at load so the pairs meet the MMA layout; here the
weights keep minimoe's GPTQ-order words and the activations are interleaved instead (a few KB a call).
So x must arrive as fp16 pairs in the order the fields pair up: pair s of word w is
(x[PW·w + s], x[PW·w + s + PW/2]), stored as int32 number s·KW + w of its row ("paired order": the
pairs s of consecutive words are consecutive, so a thread's 4 words take one 16-byte load per s).
GEMM1 reads x and packs the pairs it needs (or reads them pre-packed by a small kernel: X_PACKED);
it writes h straight into paired order, in fp16, for GEMM2.

Precision. A word's products are summed in fp16 (at most 8 terms), then accumulated in fp32 with the
scales. The activations are multiplied by a power of two when they become fp16 (the result divided by
it at the end) so that a word's partial sum stays finite. Each fp16 half of the pair sums its own half of the word's
terms (4 for int4, 2 for int8 / fp8) before the halves meet in fp32, so with every term at its largest: x by
X_SCALE = 2^-8 (finite up to |x| ~ 5.2e5 for symmetric int4, 6.5e4 for int8, 1.9e4 for fp8, whose codes reach
448), h = silu(gate)·up, larger and heavier-tailed, by H_SCALE = 2^-12 (|h| up to 8.4e6 / 1.0e6 / 3.0e5). A dense
layer's input is scaled by X_SCALE whatever it is: for a quantized dense down projection (a shared expert, a dense
MLP) that input is an MLP's hidden activation, so fp8 there holds |h| up to ~1.9e4, int8 ~6.5e4. Values under
2^-14 / scale (|x| < 0.004, |h| < 0.25) become fp16 subnormals, spaced 2^-24 / scale apart (6e-8 x 256 = 1.5e-5
for x, 2.4e-4 for h): small h lose relative precision, but their products are small next to the sum's large terms
(the tests check whole outputs). Against dequantize-then-matmul in fp32 the error is a few 1e-4 relative for
activations of unit scale: far under the formats' own. The GPU test checks |x| ~ 100.

The PTX runs only on a GPU; under the Triton interpreter (CI) ASM is False and `_pair_dot` computes the
same sums in fp32 from the same bit fields, so the layout, masks, pairing and scales are tested on the
CPU and the PTX itself by the GPU check (scripts/quant_decode_sweep.py, tests marked gpu).
Used by pair_kernels.py (the MoE and dense decode kernels; fused_moe_quant_pair.py launches them). pair_quads.py carries a
word's fp16 pair sum on through the next three words of its 16-byte load before the fp32 conversion (a tile's `chain`
4, the int4 / int8 experts' default): the bounds above then hold for a quarter of the |x| (that file).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

X_SCALE = 2.0 ** -8           # x is stored as fp16 times this (dense layers, GEMM1's input); results divided by it
H_SCALE = 2.0 ** -12          # h (GEMM1's output, silu(gate)·up: larger, heavier-tailed) likewise
_X_SCALE = tl.constexpr(X_SCALE)
_H_SCALE = tl.constexpr(H_SCALE)

# every pair kernel's epilogue: the fp16 pair sum `a` becomes one fp32 (its two halves added in fp32)
_SUM_HALVES = """mov.b32 {lo, hi}, a;
cvt.f32.f16 fl, lo;
cvt.f32.f16 fh, hi;
add.f32 $0, fl, fh;
}"""

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
""" + _SUM_HALVES)

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
""" + _SUM_HALVES)

_FP8_ASM = tl.constexpr("""{
.reg .b32 t, f, a;
.reg .b16 lo, hi, plo, phi;
.reg .f32 fl, fh;
prmt.b32 t, $1, 0, 0x3120;
mov.b32 {plo, phi}, t;
cvt.rn.f16x2.e4m3x2 f, plo;
mul.rn.f16x2 a, f, $2;
cvt.rn.f16x2.e4m3x2 f, phi;
fma.rn.f16x2 a, f, $3, a;
""" + _SUM_HALVES)


@triton.jit
def _e4m3(byte):
    """An e4m3 byte (int32 0..255) as its fp32 value, exactly (the interpreter's path; no NaN codes in weights)."""
    e = (byte >> 3) & 15
    m = (byte & 7).to(tl.float32)
    mag = tl.where(e == 0, m * 0.001953125, (8.0 + m) * tl.exp2((e - 10).to(tl.float32)))   # 2^-9 m; 2^(e-10)(8 + m)
    return tl.where((byte & 0x80) != 0, -mag, mag)


@triton.jit
def _half(pairs, HI: tl.constexpr):
    """One fp16 of int32 pairs, as fp32 (the interpreter's path)."""
    if HI:
        bits = (pairs >> 16) & 0xFFFF
    else:
        bits = pairs & 0xFFFF
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _pair_dot(words, x0, x1, x2, x3, zero, BITS: tl.constexpr, ASM: tl.constexpr, FP8: tl.constexpr = False):
    """Σ over a word's PW fields of (u − zero)·x, fp32 [ROWS, V]. words [ROWS, V] int32; x0..x3 [V]
    int32 pairs in paired order (int8 and fp8 use x0, x1); zero: the zero point, an int32 scalar or [ROWS, 1].
    FP8 (BITS 8): the four bytes are e4m3 values (Σ value·x; zero unused)."""
    if FP8:
        acc = _fp8_pair_dot(words, x0, x1, ASM)
    else:
        acc = _int_pair_dot(words, x0, x1, x2, x3, zero, BITS, ASM)
    return acc


@triton.jit
def _fp8_pair_dot(words, x0, x1, ASM: tl.constexpr):
    """Σ over a word's four e4m3 bytes of value·x, fp32 [ROWS, V]: bytes 0, 2 pair with x0's halves, 1, 3
    with x1's."""
    if ASM:
        acc = tl.inline_asm_elementwise(_FP8_ASM, "=f,r,r,r", [words, x0[None, :], x1[None, :]],
                                        dtype=tl.float32, is_pure=True, pack=1)
    else:
        acc = _e4m3(words & 0xFF) * _half(x0, False)[None, :]
        acc += _e4m3((words >> 16) & 0xFF) * _half(x0, True)[None, :]
        acc += _e4m3((words >> 8) & 0xFF) * _half(x1, False)[None, :]
        acc += _e4m3((words >> 24) & 0xFF) * _half(x1, True)[None, :]
    return acc


@triton.jit
def _int_pair_dot(words, x0, x1, x2, x3, zero, BITS: tl.constexpr, ASM: tl.constexpr):
    """_pair_dot for minimoe's unsigned int4 / int8 codes."""
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
               ASM: tl.constexpr, ROWS: tl.constexpr, STEP: tl.constexpr, EVEN: tl.constexpr = False,
               FP8: tl.constexpr = False):
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
    return _pair_dot(words, x0, x1, x2, x3, zero, BITS, ASM, FP8)


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
               PACKED: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, STEP: tl.constexpr,
               FP8: tl.constexpr = False):
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
        part = _pair_step(w_e, rows, x_row, kk, K, KW, ROW_W, zero, stride_wn, BITS, PACKED, ASM, ROWS, STEP,
                          FP8=FP8)
        sw = tl.load(s_e + (rows // ROW_BLOCK)[:, None] * stride_sn + gw * stride_sg, mask=live, other=0.0)
        part = part * sw
    else:
        part = _pair_step(w_e, rows, x_row, kk, K, KW, ROW_W, _zero_of(z_e, rows, 0, rows * 0 + kk < K, stride_sn,
                          stride_sg, OFFSET, HAS_ZERO), stride_wn, BITS, PACKED, ASM, ROWS, STEP, FP8=FP8)
    return part


@triton.jit
def _pack_pairs_kernel(x_ptr, out_ptr, K, KW, stride_xt, stride_ot, PW: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = False):
    """out[t, s·KW + w] = the int32 pair (x[t, PW·w + s], x[t, PW·w + s + PW/2]) · X_SCALE in fp16."""
    wait_then_release(PDL)
    t = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    x_row = x_ptr + t.to(tl.int64) * stride_xt
    o_row = out_ptr + t.to(tl.int64) * stride_ot
    for s in tl.static_range(PW // 2):
        tl.store(o_row + s * KW + offs_w, _x_pair(x_row, offs_w, s, K, KW, KW, PW, False), mask=offs_w < KW)


def pair_supported(w) -> bool:
    """Stacks these kernels read: minimoe's own int4 and int8 codes, and fp8 (e4m3) whose rows hold whole
    4-byte words (K a multiple of 4, unit last stride); not nf4 or LLM.int8."""
    if w.bits == 0:        # viewed as int32: unit last stride, and offset and outer strides in whole words
        d = w.data3
        return (w.K % 4 == 0 and d.shape[2] == w.K and d.stride(2) == 1 and d.storage_offset() % 4 == 0
                and d.stride(0) % 4 == 0 and d.stride(1) % 4 == 0)
    return w.bits in (4, 8) and w.codes == 0


def pair_bits(w) -> int:
    """The code width the pair kernels see: fp8 bytes are read as int8's 8-bit fields (FP8 tells them apart)."""
    return 8 if w.bits == 0 else w.bits


def pair_words(w) -> torch.Tensor:
    """The stack's codes as int32 words [E, N, KW] (fp8's bytes reinterpreted, four a word, low byte first)."""
    return w.data3.view(torch.int32) if w.bits == 0 else w.data3


def pack_pairs(x: torch.Tensor, w, pdl: bool = False) -> torch.Tensor:
    """x [T, K] (bf16/fp16/fp32) -> [T, KW · PW/2] int32 pairs in paired order for the stack `w`
    (KW: its words a row, K padded to its scale group; the padding gets zeros)."""
    T, K = x.shape
    pw = 32 // pair_bits(w)
    kw = pair_words(w).shape[2]
    out = torch.empty(T, kw * pw // 2, dtype=torch.int32, device=x.device)
    if T:
        _pack_pairs_kernel[(T, triton.cdiv(kw, 128))](x, out, K, kw, x.stride(0), out.stride(0), PW=pw, BLOCK=128,
                                                      **launch_args(pdl))
    return out
