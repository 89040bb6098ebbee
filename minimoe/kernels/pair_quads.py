"""Four words a chain: the pair decode kernels' fp16 sums carried over four int32 words before one fp32 conversion.

Shape legend: PW codes an int32 word (8 for int4, 4 for int8 and fp8), V words a tile row per step, Q = V / 4
quads (four consecutive words of one row: one 16-byte load), ROWS weight rows a tile.

pair_codes.py turns each word into a sum of fp16 pairs (LOP3 / PRMT into the mantissa of 1024, HSUB2, HFMA2) and then
converts that pair to fp32 and adds it to the accumulator: two fp16 -> fp32 conversions, an fp32 add and the
scale's FFMA for every word. Compiled for sm90 with Triton 3.6 (scripts/sass_mix.py --pair up, Mixtral's 32 x 256
tile), the int4 GEMV's main loop spent 328 instructions on a thread's 16 words, 20.5 a word: 13 to make and multiply
the pairs, 4 for that epilogue, the rest addresses and loads; the H200 ran the int4 GEMV at ~55%
of its bytes' time and the int8 one (about half the instructions a byte) at ~93%: both issue about the same
instructions per second, so int4 is bound by its instruction count, not by HBM.

Here the fp16 pair sum runs on through the four words of a quad (`fma.rn.f16x2 a, f, x, a` where each word started
from `mul`), and the pair becomes fp32 once per quad: the epilogue's 4 instructions a word become ~1 (the same loop:
328 -> 284). The four
words of a quad sit in one thread (the 16-byte load that brings them), so the [ROWS, V] tile is reshaped to
[ROWS, Q, 4] and split into four [ROWS, Q] word tiles in registers; the activations' pairs likewise. A quad never straddles a scale group
(groups hold 4+ words: the launcher checks), so one scale and one zero point serve its sum.

Precision. A quad's sum has four times the terms of a word's: 32 products for int4 (16 a half), 16 for int8 / fp8
(8 a half), each rounded to fp16 (11 bits) as it is added. The overflow bounds of pair_codes.py (each fp16 half a sum
of its own) shrink by the same four: with x times X_SCALE = 2^-8 a quad stays finite for |x| up to ~1.3e5 (symmetric
int4), ~1.6e4 (int8), ~4.7e3 (fp8, codes up to 448); with h times H_SCALE = 2^-12 for |h| up to ~2.1e6 / 2.6e5 /
7.5e4. The rounding error of a quad is
about twice a word's (a few 1e-4 -> ~1e-3 relative to the partial), far under int4's own (~1e-2 of a weight). Marlin
(arXiv 2408.11743) keeps fp32 accumulation by running the dot on tensor cores; TensorRT-LLM's weight-only batched
GEMV sums a few half2 products before converting: this is the latter's trade (our PTX, written from its description).

The interpreter's path (ASM False) sums the same fields in fp32 (pair_codes._pair_dot per word); the PTX runs on a
GPU only (tests/test_quant_gpu.py). Used by pair_kernels.py when a tile's `chain` is 4.
"""
import triton
import triton.language as tl

from .pair_codes import _SUM_HALVES, _pair_dot, _x_pair, _zero_of

_LO, _HI = "0x000F000F", "0x00F000F0"


def _int4_word(w: int, x: list[int], first: bool, magic: int, neg_hi: int, c16: int) -> str:
    """PTX for one int4 word (operand $w, its pairs $x[0..3]) into the running fp16 pair `a`."""
    start = f"mul.rn.f16x2 a, f, ${x[0]};" if first else f"fma.rn.f16x2 a, f, ${x[0]}, a;"
    return f"""lop3.b32 f, ${w}, {_LO}, 0x64006400, 0xEA;
sub.f16x2 f, f, ${magic};
{start}
lop3.b32 f, ${w}, {_HI}, 0x64006400, 0xEA;
fma.rn.f16x2 f, f, ${c16}, ${neg_hi};
fma.rn.f16x2 a, f, ${x[1]}, a;
shr.u32 t, ${w}, 8;
lop3.b32 f, t, {_LO}, 0x64006400, 0xEA;
sub.f16x2 f, f, ${magic};
fma.rn.f16x2 a, f, ${x[2]}, a;
lop3.b32 f, t, {_HI}, 0x64006400, 0xEA;
fma.rn.f16x2 f, f, ${c16}, ${neg_hi};
fma.rn.f16x2 a, f, ${x[3]}, a;
"""


def _int8_word(w: int, x: list[int], first: bool, magic: int) -> str:
    start = f"mul.rn.f16x2 a, f, ${x[0]};" if first else f"fma.rn.f16x2 a, f, ${x[0]}, a;"
    return f"""prmt.b32 f, ${w}, 0x64646464, 0x5250;
sub.f16x2 f, f, ${magic};
{start}
prmt.b32 f, ${w}, 0x64646464, 0x5351;
sub.f16x2 f, f, ${magic};
fma.rn.f16x2 a, f, ${x[1]}, a;
"""


def _fp8_word(w: int, x: list[int], first: bool) -> str:
    start = f"mul.rn.f16x2 a, f, ${x[0]};" if first else f"fma.rn.f16x2 a, f, ${x[0]}, a;"
    return f"""prmt.b32 t, ${w}, 0, 0x3120;
mov.b32 {{plo, phi}}, t;
cvt.rn.f16x2.e4m3x2 f, plo;
{start}
cvt.rn.f16x2.e4m3x2 f, phi;
fma.rn.f16x2 a, f, ${x[1]}, a;
"""


def quad_asm(kind: str) -> str:
    """The PTX of one quad: operands $0 the fp32 sum; $1..$4 the words; then each word's activation pairs in word
    order (4 a word for int4, 2 for int8 / fp8); then int4: magic, neg_hi, 1/16 pair; int8: magic."""
    n_x = 4 if kind == "int4" else 2
    xs = [[5 + n_x * j + s for s in range(n_x)] for j in range(4)]
    extra = 5 + 4 * n_x
    regs = ".reg .b32 t, f, a;\n.reg .b16 lo, hi;\n.reg .f32 fl, fh;\n"
    if kind == "fp8":
        regs = ".reg .b32 t, f, a;\n.reg .b16 lo, hi, plo, phi;\n.reg .f32 fl, fh;\n"
    body = ""
    for j in range(4):
        if kind == "int4":
            body += _int4_word(1 + j, xs[j], j == 0, extra, extra + 1, extra + 2)
        elif kind == "int8":
            body += _int8_word(1 + j, xs[j], j == 0, extra)
        else:
            body += _fp8_word(1 + j, xs[j], j == 0)
    return "{\n" + regs + body + _SUM_HALVES


_INT4_QUAD = tl.constexpr(quad_asm("int4"))
_INT8_QUAD = tl.constexpr(quad_asm("int8"))
_FP8_QUAD = tl.constexpr(quad_asm("fp8"))


@triton.jit
def _four(t, A: tl.constexpr, B: tl.constexpr):
    """[A, B, 4] -> its four [A, B] slices along the last axis (elements 0, 1, 2, 3), in registers where the 4 are
    one thread's."""
    even, odd = tl.split(tl.reshape(t, (A, B, 2, 2)))       # elements (0, 2) and (1, 3)
    e0, e2 = tl.split(even)
    e1, e3 = tl.split(odd)
    return e0, e1, e2, e3


@triton.jit
def _four_1d(t, Q: tl.constexpr):
    """[Q, 4] -> its four [Q] columns."""
    even, odd = tl.split(tl.reshape(t, (Q, 2, 2)))
    e0, e2 = tl.split(even)
    e1, e3 = tl.split(odd)
    return e0, e1, e2, e3


@triton.jit
def _quad_x(x_row, offs_w, S: tl.constexpr, K, KW, ROW_W, PW: tl.constexpr, PACKED: tl.constexpr,
            EVEN: tl.constexpr, Q: tl.constexpr, ROWS: tl.constexpr, ASM: tl.constexpr, X_TILE: tl.constexpr):
    """Pair S of words offs_w [V] as four int32 tiles, one per word of the quads: [Q] on the interpreter's path; with
    ASM [ROWS, Q], split from the pairs broadcast over the rows exactly as the words are, so that they come out in
    the words' quad layout. X_TILE: the pairs are loaded as a [ROWS, V] tile (every row the same addresses), which
    Triton lays out as it lays out the words (GEMM1: loaded as [V] and converted, a wide tile's pairs crossed
    shared memory every step under Triton 3.6, scripts/sass_mix.py --pair; GEMM2's pipelined loop would stage the
    tile through shared memory instead, so it keeps the [V] load)."""
    V: tl.constexpr = Q * 4
    if ASM and X_TILE:
        offs2 = tl.zeros((ROWS, 1), dtype=tl.int32) + offs_w[None, :]                          # [ROWS, V]
        x2 = _x_pair(x_row, offs2, S, K, KW, ROW_W, PW, PACKED, EVEN)
        p0, p1, p2, p3 = _four(tl.reshape(x2, (ROWS, Q, 4)), ROWS, Q)
    elif ASM:
        x = _x_pair(x_row, offs_w, S, K, KW, ROW_W, PW, PACKED, EVEN)                        # [V]
        p0, p1, p2, p3 = _four(tl.reshape(tl.broadcast_to(x[None, :], (ROWS, V)), (ROWS, Q, 4)), ROWS, Q)
    else:
        x = _x_pair(x_row, offs_w, S, K, KW, ROW_W, PW, PACKED, EVEN)                        # [V]
        p0, p1, p2, p3 = _four_1d(tl.reshape(x, (Q, 4)), Q)
    return p0, p1, p2, p3


@triton.jit
def _quad_dot(w0, w1, w2, w3, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, zero,
              BITS: tl.constexpr, ASM: tl.constexpr, FP8: tl.constexpr):
    """Σ over the four words w0..w3 [ROWS, Q] of Σ over their fields of (u − zero)·x: fp32 [ROWS, Q]. Activation
    pairs by pair index then word: a0..a3 pair 0 of words 0..3, b pair 1, c pair 2, d pair 3 (int4 only): [ROWS, Q]
    with ASM, [Q] without (_quad_x)."""
    if ASM:
        if FP8:
            acc = tl.inline_asm_elementwise(_FP8_QUAD, "=f" + ",r" * 12, [w0, w1, w2, w3, a0, b0, a1, b1, a2, b2, a3, b3],
                                            dtype=tl.float32, is_pure=True, pack=1)
        elif BITS == 4:
            magic = (0x6400 + zero) * 65537                # fp16 1024 + z in both halves
            neg_hi = (0xD400 + 16 * zero) | ((0xD400 + 16 * zero) << 16)
            acc = tl.inline_asm_elementwise(_INT4_QUAD, "=f" + ",r" * 23,
                                            [w0, w1, w2, w3, a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2,
                                             a3, b3, c3, d3, magic, neg_hi, tl.full((1, 1), 0x2C002C00, tl.int32)],
                                            dtype=tl.float32, is_pure=True, pack=1)
        else:
            magic = (0x6400 + zero) * 65537
            acc = tl.inline_asm_elementwise(_INT8_QUAD, "=f" + ",r" * 13,
                                            [w0, w1, w2, w3, a0, b0, a1, b1, a2, b2, a3, b3, magic],
                                            dtype=tl.float32, is_pure=True, pack=1)
    else:
        acc = _pair_dot(w0, a0, b0, c0, d0, zero, BITS, False, FP8)
        acc += _pair_dot(w1, a1, b1, c1, d1, zero, BITS, False, FP8)
        acc += _pair_dot(w2, a2, b2, c2, d2, zero, BITS, False, FP8)
        acc += _pair_dot(w3, a3, b3, c3, d3, zero, BITS, False, FP8)
    return acc


@triton.jit
def _quad_step(w_e, rows, x_row, kk, K, KW, ROW_W, zero, stride_wn, BITS: tl.constexpr, PACKED: tl.constexpr,
               ASM: tl.constexpr, ROWS: tl.constexpr, STEP: tl.constexpr, EVEN: tl.constexpr = False,
               FP8: tl.constexpr = False, X_TILE: tl.constexpr = False):
    """pair_codes._pair_step with four words a chain: Σ (u − zero)·x over inputs kk .. kk+STEP of rows `rows`,
    fp32 [ROWS, Q] (scaled by the activations' X_SCALE / H_SCALE); zero [ROWS, 1], [ROWS, Q] or a scalar; past KW
    masked (no traffic, an exact 0). The words load as pair_codes' [ROWS, V] tile (its coalesced layout: a load
    of [ROWS, Q, 4] put one row on each lane, half of every 32-byte sector a request), then split into quads."""
    PW: tl.constexpr = 32 // BITS
    V: tl.constexpr = STEP // PW
    Q: tl.constexpr = V // 4
    offs_w = kk // PW + tl.arange(0, V)
    if EVEN:
        words = tl.load(w_e + rows[:, None] * stride_wn + offs_w[None, :], eviction_policy="evict_first")
    else:
        words = tl.load(w_e + rows[:, None] * stride_wn + offs_w[None, :], mask=(offs_w < KW)[None, :], other=0,
                        eviction_policy="evict_first")                                       # [ROWS, V]
    w0, w1, w2, w3 = _four(tl.reshape(words, (ROWS, Q, 4)), ROWS, Q)                      # [ROWS, Q] each
    a0, a1, a2, a3 = _quad_x(x_row, offs_w, 0, K, KW, ROW_W, PW, PACKED, EVEN, Q, ROWS, ASM, X_TILE)
    b0, b1, b2, b3 = _quad_x(x_row, offs_w, 1, K, KW, ROW_W, PW, PACKED, EVEN, Q, ROWS, ASM, X_TILE)
    if BITS == 4:
        c0, c1, c2, c3 = _quad_x(x_row, offs_w, 2, K, KW, ROW_W, PW, PACKED, EVEN, Q, ROWS, ASM, X_TILE)
        d0, d1, d2, d3 = _quad_x(x_row, offs_w, 3, K, KW, ROW_W, PW, PACKED, EVEN, Q, ROWS, ASM, X_TILE)
    else:
        c0, c1, c2, c3 = a0, a1, a2, a3
        d0, d1, d2, d3 = b0, b1, b2, b3
    return _quad_dot(w0, w1, w2, w3, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, zero,
                     BITS, ASM, FP8)


@triton.jit
def _wide_quad_step(w_e, s_e, z_e, rows, x_row, kk, K, KW, ROW_W, stride_wn, stride_sn, stride_sg,
                    BITS: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr,
                    HAS_ZERO: tl.constexpr, PACKED: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr,
                    STEP: tl.constexpr, FP8: tl.constexpr = False, X_TILE: tl.constexpr = False):
    """pair_codes._wide_step with four words a chain: a quad's partial times its group's scale (less its zero
    point); with row scales (GROUP 0) the partial is returned unscaled. [ROWS, Q] fp32."""
    PW: tl.constexpr = 32 // BITS
    V: tl.constexpr = STEP // PW
    Q: tl.constexpr = V // 4
    # a quad's first word, split out of the words' offsets as _quad_step splits the words, so that the scales and
    # zero points load in the layout of the quads' partials (an arange of Q has its own: a conversion a step)
    offs_q, _o1, _o2, _o3 = _four_1d(tl.reshape(kk // PW + tl.arange(0, V), (Q, 4)), Q)
    live = (offs_q < KW)[None, :]
    if GROUP > 0:
        gq = (offs_q // (GROUP // PW))[None, :]                                              # [1, Q]
        if HAS_ZERO:
            zero = tl.load(z_e + rows[:, None] * stride_sn + gq * stride_sg, mask=live, other=0.0).to(tl.int32)
        else:
            zero = tl.full((1, 1), OFFSET, dtype=tl.float32).to(tl.int32)
        part = _quad_step(w_e, rows, x_row, kk, K, KW, ROW_W, zero, stride_wn, BITS, PACKED, ASM, ROWS, STEP,
                          FP8=FP8, X_TILE=X_TILE)
        sq = tl.load(s_e + (rows // ROW_BLOCK)[:, None] * stride_sn + gq * stride_sg, mask=live, other=0.0)
        part = part * sq
    else:
        part = _quad_step(w_e, rows, x_row, kk, K, KW, ROW_W, _zero_of(z_e, rows, 0, rows * 0 + kk < K, stride_sn,
                          stride_sg, OFFSET, HAS_ZERO), stride_wn, BITS, PACKED, ASM, ROWS, STEP, FP8=FP8,
                          X_TILE=X_TILE)
    return part
