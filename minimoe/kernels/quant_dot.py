"""One K step of a quantized tensor-core GEMM: the A operand, the dequantized B tile, the dot, the scales.

Shape legend: BM rows of A (tokens, or (token, slot) pairs), BN output columns, BK inputs a step (one scale group).

Shared by the quantized experts' aligned GEMMs (fused_moe_quant.py) and the quantized dense layers at 5-64 rows
(skinny_gemm.py). How B is read is the BYTES constexpr that fused_moe_quant.byte_tiles picks: int32 code words
unpacked through a reshape (0), int8 / int4 bytes in the tile's own shape (1, 2), or int4 bytes made biased 16-bit
operands with no conversion instruction (3: Triton integer ops, 4: PTX; quant_tiles.nibble_tiles), whose bias and
zero point come off the fp32 product as (MAGIC + z) x A's row sums, a dot with a flat tile (quant_tiles.flat_tile).
Scales: per group on each step's fp32 product, per row in the epilogue (epilogue_scale); fp8 W8A8 also scales by
A's per-token (group) scales.
"""
import triton
import triton.language as tl

from .quant_tiles import flat_tile, load_col_bytes, load_cols, load_cols_halves, nibble_tiles


@triton.jit
def load_a(row_ptrs, row_mask, k0, K, BLOCK_K: tl.constexpr, BITS: tl.constexpr, CODES: tl.constexpr,
           BYTES: tl.constexpr):
    """The A operand of one K step: rows `row_ptrs` [BM] (pointers to their input 0), inputs k0 .. k0+BLOCK_K, zero
    past K and on masked rows -> (a, a_odd). int4 byte tiles (BYTES, minimoe's codes): the even inputs [BM, BK/2]
    and the odd ones, to meet load_cols_halves' two tiles, either split in registers from one contiguous load
    (BYTES 2: a reshape whose pairs sit in one thread) or loaded with a stride of two (BYTES 1: scalar loads);
    otherwise [BM, BK] and the same tensor again."""
    if BYTES >= 2 and BITS == 4 and CODES == 0:
        offs = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(row_ptrs[:, None] + offs[None, :], mask=row_mask[:, None] & (offs < K)[None, :], other=0.0)
        a, a_odd = tl.split(tl.reshape(a, (a.shape[0], BLOCK_K // 2, 2)))
    elif BYTES and BITS == 4 and CODES == 0:
        offs = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        a = tl.load(row_ptrs[:, None] + offs[None, :], mask=row_mask[:, None] & (offs < K)[None, :], other=0.0)
        a_odd = tl.load(row_ptrs[:, None] + (offs + 1)[None, :], mask=row_mask[:, None] & (offs + 1 < K)[None, :],
                        other=0.0)
    else:
        offs = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(row_ptrs[:, None] + offs[None, :], mask=row_mask[:, None] & (offs < K)[None, :], other=0.0)
        a_odd = a
    return a, a_odd


@triton.jit
def dot_step(acc, a, a_odd, w_e, s_e, z_e, c_ptr, cols, k0, K, KW, NG, sa, stride_wn, stride_sn, stride_sg,
              BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
              OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BYTES: tl.constexpr = False):
    """acc [BM, BN] += A [BM, BK] · dequant(W[cols, k0:k0+BK])ᵀ; sa [BM]: the A rows' scales of this
    step (fp8 with groups), ignored otherwise. Row scales (GROUP 0) are left for the epilogue. BYTES (byte_tiles):
    int8 tiles loaded as bytes (quant_tiles.load_cols); int4 tiles as bytes split into their even and odd
    inputs (quant_tiles.load_cols_halves), two dots of BK/2 against `a` and `a_odd` (load_a); BYTES 3 / 4 (int4 with
    16-bit activations): the nibbles made biased 16-bit operands directly (quant_tiles.nibble_tiles; 4: its PTX), the
    bias and the zero point taken off the fp32 product as (MAGIC + z) x the sums of the step's A rows.""" 
    HALVES: tl.constexpr = BYTES and BITS == 4 and CODES == 0
    BIASED: tl.constexpr = HALVES and BYTES >= 3 and a.dtype != tl.float32
    if BIASED:
        u = load_col_bytes(w_e, cols, k0 // 2, KW * 4, stride_wn, BLOCK_K // 2)                  # [BK/2, BN] uint8
        b, b_odd = nibble_tiles(u, a.dtype, BYTES == 4)                                           # MAGIC + codes
        MAGIC: tl.constexpr = 128.0 if a.dtype == tl.bfloat16 else 1024.0
        # The sums of A's rows, broadcast over the columns, from the tensor cores: A times a tile of MAGICs in b's
        # operand layout (quant_tiles.flat_tile), so A is converted to one operand layout for its four dots.
        flat = flat_tile(u, a.dtype, BYTES == 4)
        row_sum = tl.dot(a, flat, input_precision=DOT_PRECISION)                                   # MAGIC x Σ a
        row_sum = tl.dot(a_odd, flat, row_sum, input_precision=DOT_PRECISION)                      # [BM, BN] fp32
        part = tl.dot(a, b, input_precision=DOT_PRECISION)                                         # fp32, biased
        part = tl.dot(a_odd, b_odd, part, input_precision=DOT_PRECISION)
        if HAS_ZERO:
            z = tl.load(z_e + cols * stride_sn + (k0 // GROUP) * stride_sg)
            part = part - row_sum * ((MAGIC + z) * (1.0 / MAGIC))[None, :]
        else:
            part = part - row_sum * ((MAGIC + OFFSET) / MAGIC)
        if GROUP == 0:
            acc = acc + part
        else:
            acc = acc + part * tl.load(s_e + (cols // ROW_BLOCK) * stride_sn + (k0 // GROUP) * stride_sg)[None, :]
    else:
        if HALVES:
            b, b_odd = load_cols_halves(w_e, cols, k0, KW, stride_wn, OFFSET, BLOCK_K, BLOCK_N)    # [BK/2, BN] x 2
        else:
            b = load_cols(w_e, c_ptr, cols, k0, K, KW, stride_wn, BITS, CODES, OFFSET, BLOCK_K, BLOCK_N, BYTES)  # [BK, BN]
            b_odd = b
        if GROUP == 0:
            acc = tl.dot(a, b.to(a.dtype), acc, input_precision=DOT_PRECISION)
            if HALVES:
                acc = tl.dot(a_odd, b_odd.to(a.dtype), acc, input_precision=DOT_PRECISION)
        else:
            g = k0 // GROUP
            s = tl.load(s_e + (cols // ROW_BLOCK) * stride_sn + g * stride_sg)               # [BN]
            if HAS_ZERO:
                z = tl.load(z_e + cols * stride_sn + g * stride_sg)[None, :]
                b = b - z
                b_odd = b_odd - z
            part = tl.dot(a, b.to(a.dtype), input_precision=DOT_PRECISION)                   # fp32
            if HALVES:
                part = tl.dot(a_odd, b_odd.to(a.dtype), part, input_precision=DOT_PRECISION)
            if BITS == 0:
                acc = acc + part * sa[:, None] * s[None, :]
            else:
                acc = acc + part * s[None, :]
    return acc


@triton.jit
def epilogue_scale(acc, s_e, cols, sa, stride_sn, BITS: tl.constexpr, GROUP: tl.constexpr):
    if GROUP == 0:
        acc = acc * tl.load(s_e + cols * stride_sn)[None, :]
        if BITS == 0:
            acc = acc * sa[:, None]
    return acc
