"""Quantized weight tiles in Triton: unpack codes, make them floats, apply the scales; and fp8 activations.

The quantized expert and dense kernels (fused_moe_quant_small.py for decode, fused_moe_quant.py for
prefill) read their weights through the helpers here, so each format is written once. The layouts
are minimoe.qweights': a stack [E, N, K] as
    fp8    e4m3 codes [E, N, K] (BITS 0)
    int8   int32 words [E, N, Kp/4], four 8-bit codes a word, low bits first (BITS 8)
    int4   int32 words [E, N, Kp/8], eight 4-bit codes a word (BITS 4)
with fp32 scales [E, ceil(N/ROW_BLOCK), NG]: one a row (GROUP 0), one per GROUP inputs, or one per
128x128 block (ROW_BLOCK = GROUP = 128); zero points are a constant OFFSET or, with HAS_ZERO, a
tensor [E, N, NG]. bitsandbytes' nf4 and LLM.int8 storage is read in place (CODES, unpack_codes).

Making floats of codes. Converting an integer to a float is a quarter- or eighth-rate instruction
on NVIDIA GPUs, and an int4 decode step converts ~37 codes per SM per clock at full bandwidth. The
2^23 trick needs none: OR a code u < 2^23 into the bits of the float 2^23 and the result is exactly
2^23 + u, so one subtract of (2^23 + zero point) leaves u − zero exactly. Unpacking a word is a
shift and a mask per code; with the OR that is two integer ops, one float add, one FMA per weight.

Tiles and scales. A GEMV tile is 3-D, [BLOCK_N rows, BLOCK_K/VEC runs, VEC codes]: a run is one int32
word of codes (VEC = 8 int4, 4 int8) or 16 fp8 bytes, so every load is a 16-byte vector, the unpacked
codes stay where they were loaded, and no reshape (a shared-memory round trip on a GPU) is needed.
The activation is loaded in the same [runs, VEC] shape. A run's products are summed first, then
scaled: one multiply per run (a run never straddles a scale group), or per tile for a row scale
(GROUP 0). For tensor-core GEMMs the tile is [BLOCK_K, BLOCK_N] with BLOCK_K = GROUP, and the
group's scale multiplies the fp32 product of the step.

fp8 activations (W8A8). `quant_rows_fp8` quantizes each row (or each 128-wide group of a row) with
its own scale, s = max(amax, 1e-12) / 448, the dynamic per-token scheme of vLLM and DeepGEMM.
Reference: minimoe.qweights (the PyTorch oracle of all of this).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

FP8_MAX = tl.constexpr(448.0)      # largest finite e4m3 value (a constexpr: kernels may read no other globals)


@triton.jit
def codes_to_float(u, OFFSET: tl.constexpr):
    """int32 codes 0 <= u < 2^23 -> float32 u − OFFSET, exactly, with no int->float conversion."""
    return (u | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + OFFSET)


@triton.jit
def unpack_codes(words, code_ptr, BITS: tl.constexpr, CODES: tl.constexpr, OFFSET: tl.constexpr,
                 WORD_AXIS: tl.constexpr):
    """int32 words -> fp32 code values, a new axis of 32/BITS fields after axis WORD_AXIS (0 or 1)
    of a 2-D tile. CODES 0: minimoe's unsigned codes, value u − OFFSET. bitsandbytes' storage, read
    as is: CODES 1, nf4 (the first of each byte's two codes in its high nibble, value = codebook[u]);
    CODES 2, LLM.int8's signed bytes (u ^ 0x80 is the byte + 128)."""
    shifts = tl.arange(0, 32 // BITS) * BITS
    if CODES == 1:
        shifts = shifts ^ 4
    if WORD_AXIS == 1:
        u = (words[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)              # [R, W, PW]
    else:
        u = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)              # [W, PW, C]
    # one return at the end: the helpers are inlined, and static branches then need no early exits
    if CODES == 1:
        values = tl.load(code_ptr + u)
    elif CODES == 2:
        values = codes_to_float(u ^ 0x80, 128.0)
    else:
        values = codes_to_float(u, OFFSET)
    return values


@triton.jit
def load_x(x_row, k0, K, VEC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Activations k0 .. k0+BLOCK_K of one row as fp32 [BLOCK_K/VEC, VEC] (zero past K): the shape of a
    weight tile's inputs, loaded as is rather than reshaped."""
    offs = k0 + tl.arange(0, BLOCK_K // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    return tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)


@triton.jit
def load_rows(w_ptr, code_ptr, rows, k0, K, KW, stride_wn, BITS: tl.constexpr, CODES: tl.constexpr,
              OFFSET: tl.constexpr, VEC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Weight rows `rows` [BLOCK_N], inputs k0 .. k0+BLOCK_K of one matrix as fp32 code values
    [BLOCK_N, BLOCK_K/VEC, VEC] (unscaled): VEC codes a word (packed ints) or 16 bytes (fp8), so each
    thread's loads stay 16-byte vectors and no reshape is needed. Past K elements (KW words): zeros,
    and no memory traffic (a caller passes K = KW = 0 for a slot it skips)."""
    j = tl.arange(0, BLOCK_K // VEC)
    if BITS == 0:
        offs = k0 + j[:, None] * VEC + tl.arange(0, VEC)[None, :]                       # [W, VEC]
        ptrs = w_ptr + rows[:, None, None] * stride_wn + offs[None, :, :]
        w = tl.load(ptrs, mask=(offs < K)[None, :, :], other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        offs_w = k0 // VEC + j
        ptrs = w_ptr + rows[:, None] * stride_wn + offs_w[None, :]
        words = tl.load(ptrs, mask=(offs_w < KW)[None, :], other=0, eviction_policy="evict_first")  # [BN, W]
        w = unpack_codes(words, code_ptr, BITS, CODES, OFFSET, 1)                       # [BN, W, VEC]
    return w


@triton.jit
def tile_dot(w_ptr, s_ptr, z_ptr, code_ptr, rows, k0, xk, K, KW, NG, stride_wn, stride_sn, stride_sg,
             BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
             OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, VEC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Σ_k W[rows, k0 + k] · x[k0 + k] over one tile, dequantized and scaled: [BLOCK_N] fp32.
    w_ptr, s_ptr, z_ptr point at this matrix (expert); xk [BLOCK_K/VEC, VEC] fp32 (load_x), zero past K.
    Scales are gathered per VEC-run (a run never straddles a group): one load per 8 int4 weights,
    broadcast across the threads of a group."""
    w = load_rows(w_ptr, code_ptr, rows, k0, K, KW, stride_wn, BITS, CODES, OFFSET, VEC, BLOCK_K)
    part = tl.sum(w * xk[None, :, :], axis=2)                                          # [BN, W]
    srow = rows // ROW_BLOCK
    if GROUP == 0:
        out = tl.sum(part, axis=1) * tl.load(s_ptr + srow * stride_sn)
    else:
        g = (k0 + tl.arange(0, BLOCK_K // VEC) * VEC) // GROUP                          # [W] group of each run
        g_mask = (g < NG)[None, :]
        s = tl.load(s_ptr + srow[:, None] * stride_sn + g[None, :] * stride_sg, mask=g_mask, other=0.0)
        if HAS_ZERO:   # Σ (u − z) x = Σ u x − z Σ x: the zero point costs one multiply per run
            z = tl.load(z_ptr + rows[:, None] * stride_sn + g[None, :] * stride_sg, mask=g_mask, other=0.0)
            part = part - z * tl.sum(xk, axis=1)[None, :]
        out = tl.sum(part * s, axis=1)
    return out


@triton.jit
def load_cols(w_ptr, code_ptr, cols, k0, K, KW, stride_wn, BITS: tl.constexpr, CODES: tl.constexpr,
              OFFSET: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BYTES: tl.constexpr = False):
    """The tensor-core operand: inputs k0 .. k0+BLOCK_K of output columns `cols` as [BLOCK_K, BLOCK_N]:
    raw e4m3 codes (BITS 0) or fp32 code values (small integers, exact; nf4: codebook values). BYTES (int8,
    minimoe's codes): the words read as the bytes they are (a word's four codes are its bytes, low first, in
    little-endian memory), so the tile is loaded in its [BLOCK_K, BLOCK_N] shape with no unpacking reshape;
    the same values (bytes past the row's words are masked to code 0, as masked words are)."""
    if BITS == 0:
        offs = k0 + tl.arange(0, BLOCK_K)
        ptrs = w_ptr + cols[None, :] * stride_wn + offs[:, None]
        b = tl.load(ptrs, mask=(offs < K)[:, None], other=0.0)
    elif BITS == 8 and CODES == 0 and BYTES:
        offs = k0 + tl.arange(0, BLOCK_K)
        ptrs = w_ptr.to(tl.pointer_type(tl.uint8)) + cols[None, :] * (stride_wn * 4) + offs[:, None]
        u = tl.load(ptrs, mask=(offs < KW * 4)[:, None], other=0)
        b = codes_to_float(u.to(tl.int32), OFFSET)
    else:
        offs_w = k0 // (32 // BITS) + tl.arange(0, BLOCK_K // (32 // BITS))
        words = tl.load(w_ptr + cols[None, :] * stride_wn + offs_w[:, None], mask=(offs_w < KW)[:, None], other=0)
        b = tl.reshape(unpack_codes(words, code_ptr, BITS, CODES, OFFSET, 0), (BLOCK_K, BLOCK_N))
    return b


@triton.jit
def load_cols_halves(w_ptr, cols, k0, KW, stride_wn, OFFSET: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """int4 (minimoe's codes) as tensor-core operands with no unpacking reshape: inputs k0 .. k0+BLOCK_K of output
    columns `cols` as two [BLOCK_K/2, BLOCK_N] tiles of fp32 code values, the even inputs and the odd ones. A
    word's eight codes sit low nibble first, so in little-endian memory byte j of a row holds input 2j in its low
    nibble and 2j + 1 in its high one: the bytes are loaded in the tile's shape and split with a mask and a shift
    (the caller multiplies them by the even and odd columns of A). Bytes past the row's words: code 0, as masked
    words are (A is zero there)."""
    offs = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    ptrs = w_ptr.to(tl.pointer_type(tl.uint8)) + cols[None, :] * (stride_wn * 4) + offs[:, None]
    u = tl.load(ptrs, mask=(offs < KW * 4)[:, None], other=0).to(tl.int32)
    return codes_to_float(u & 15, OFFSET), codes_to_float(u >> 4, OFFSET)


def _nibbles_asm(magic: int) -> str:
    """PTX, four bytes (one register, pack=4) -> their low nibbles and their high nibbles, each as two 16-bit pairs
    OR'd into the mantissa of a magic float: a PRMT spreads bytes 0, 1 (then 2, 3) into the two 16-bit lanes of a
    register, a LOP3 keeps the nibble and ORs the magic in, (t & 0x000F000F) | magic; the high nibbles are shifted
    right by 4 first (the low lane picks up the next byte's bits 12-15, which the mask drops). 8 integer
    instructions for 8 codes (the 2^23 trick then a pack to 16 bits: ~5 a code)."""
    m = f"0x{magic:04X}{magic:04X}"
    return ("{\n.reg .b32 t0, t1;\n"
            "prmt.b32 t0, $4, 0, 0x4140;\nprmt.b32 t1, $4, 0, 0x4342;\n"
            f"lop3.b32 $0, t0, 0x000F000F, {m}, 0xEA;\nlop3.b32 $1, t1, 0x000F000F, {m}, 0xEA;\n"
            "shr.u32 t0, t0, 4;\nshr.u32 t1, t1, 4;\n"
            f"lop3.b32 $2, t0, 0x000F000F, {m}, 0xEA;\nlop3.b32 $3, t1, 0x000F000F, {m}, 0xEA;\n}}")


# Magic floats whose mantissa takes a code by OR: bf16 128.0 (0x4300; 7 mantissa bits, 128 + u for u < 128) and fp16
# 1024.0 (0x6400; 10 bits, 1024 + u for u < 1024).
_NIBBLES_BF16 = tl.constexpr(_nibbles_asm(0x4300))
_NIBBLES_FP16 = tl.constexpr(_nibbles_asm(0x6400))
_FLAT_BF16 = tl.constexpr("mov.b32 $0, 0x43004300;\nmov.b32 $1, 0x43004300;")    # 128.0 whatever the byte
_FLAT_FP16 = tl.constexpr("mov.b32 $0, 0x64006400;\nmov.b32 $1, 0x64006400;")    # 1024.0


@triton.jit
def nibble_tiles(u, DTYPE: tl.constexpr, ASM: tl.constexpr):
    """uint8 bytes of int4 codes -> (MAGIC + low nibbles, MAGIC + high nibbles), tensor-core operands in the 16-bit
    activation dtype (MAGIC = bf16 128.0, fp16 1024.0; each the shape of u): each code OR'd into the mantissa of the
    magic float, so the bits are exactly MAGIC + code with no int->float conversion and no fp32 round trip. A·t
    minus MAGIC x (the sum of A's row) is A·codes, exactly in real arithmetic (the caller takes off the zero point
    the same way). ASM: the PTX above (GPU only, four bytes a register); else the same bits from Triton integer ops
    (the interpreter; on a GPU ~2x the instructions: the bytes are unpacked and repacked one by one)."""
    if ASM:
        if DTYPE == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(_NIBBLES_BF16, "=r,=r,=r,=r,r", [u],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(_NIBBLES_FP16, "=r,=r,=r,=r,r", [u],
                                               dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        v = u.to(tl.int16)
        magic: tl.constexpr = 0x4300 if DTYPE == tl.bfloat16 else 0x6400
        lo = ((v & 15) | magic).to(DTYPE, bitcast=True)
        hi = ((v >> 4) | magic).to(DTYPE, bitcast=True)
    return lo, hi


@triton.jit
def flat_tile(u, DTYPE: tl.constexpr, ASM: tl.constexpr):
    """A tile of u's shape with every entry MAGIC (bf16 128.0, fp16 1024.0): A · flat = MAGIC x the sums of A's rows,
    broadcast over the columns, on the tensor cores. With ASM the constant comes out of an asm that takes u (and
    ignores it), so the compiler gives it u's operand layout rather than a constant's, and A is converted to one
    operand layout for all its dots, not two (the constant's own layout cost a conversion through shared memory and
    barriers every K step; a tl.sum of A's rows, a cross-warp reduction, likewise)."""
    if ASM:
        if DTYPE == tl.bfloat16:
            flat = tl.inline_asm_elementwise(_FLAT_BF16, "=r,=r,r", [u], dtype=tl.bfloat16, is_pure=True, pack=4)
        else:
            flat = tl.inline_asm_elementwise(_FLAT_FP16, "=r,=r,r", [u], dtype=tl.float16, is_pure=True, pack=4)
    else:
        flat = tl.full(u.shape, 128.0 if DTYPE == tl.bfloat16 else 1024.0, DTYPE)
    return flat


@triton.jit
def load_col_bytes(w_ptr, cols, k0, n_bytes, stride_wn, BLOCK_B: tl.constexpr):
    """Bytes k0 .. k0+BLOCK_B of the rows of output columns `cols` as a [BLOCK_B, BLOCK_N] uint8 tile (a row's words
    read as the bytes they are: little-endian, low codes first), 0 past the row's n_bytes."""
    offs = k0 + tl.arange(0, BLOCK_B)
    ptrs = w_ptr.to(tl.pointer_type(tl.uint8)) + cols[None, :] * (stride_wn * 4) + offs[:, None]
    return tl.load(ptrs, mask=(offs < n_bytes)[:, None], other=0)


@triton.jit
def round_to_e4m3(v):
    """Round fp32 |v| <= 448 to the nearest e4m3 value (ties to even; 3 mantissa bits) in integer ops,
    so the conversion after it is exact. (Triton's interpreter rounds some values across a power of
    two the wrong way; this keeps CPU tests and the GPU bit-identical to torch's e4m3 cast.) Below
    e4m3's normal range, 2^-6, the spacing is a fixed 2^-9: adding and removing 1.5 * 2^14 rounds to it."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576          # keep sign, exponent, 3 mantissa bits
    mag = (tl.abs(v) + 24576.0) - 24576.0
    subnormal = tl.where(v < 0, -mag, mag)                             # keeps -0.0, as the cast does
    return tl.where(tl.abs(v) < 0.015625, subnormal, bits.to(tl.float32, bitcast=True))


@triton.jit
def _quant_rows_fp8_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, stride_s,
                           GROUP: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Row r (GROUP 0: all of it, in BLOCK chunks) or group program_id(1) of row r -> e4m3 + scale."""
    wait_then_release(PDL)
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    if GROUP == 0:
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK):
            x = tl.load(x_ptr + r * stride_x + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.maximum(tl.max(amax, axis=0), 1e-12) / FP8_MAX
        for k0 in range(0, K, BLOCK):
            m = k0 + offs < K
            x = tl.load(x_ptr + r * stride_x + k0 + offs, mask=m, other=0.0).to(tl.float32)
            q = round_to_e4m3(tl.clamp(tl.math.div_rn(x, s), -FP8_MAX, FP8_MAX))
            tl.store(q_ptr + r * stride_q + k0 + offs, q.to(tl.float8e4nv), mask=m)
        tl.store(s_ptr + r * stride_s, s)
    else:
        g = tl.program_id(1)
        cols = g * GROUP + offs
        m = cols < K
        x = tl.load(x_ptr + r * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        s = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / FP8_MAX
        q = round_to_e4m3(tl.clamp(tl.math.div_rn(x, s), -FP8_MAX, FP8_MAX))
        tl.store(q_ptr + r * stride_q + cols, q.to(tl.float8e4nv), mask=m)
        tl.store(s_ptr + r * stride_s + g, s)


def quant_rows_fp8(x: torch.Tensor, group: int = 0, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, K] (contiguous) -> (e4m3 codes [R, K], fp32 scales [R, NG]); group 0: one scale a row,
    else one per `group` columns (a power of two). Matches qweights.quant_rows_fp8."""
    R, K = x.shape
    ng = 1 if group == 0 else triton.cdiv(K, group)
    q = torch.empty(R, K, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(R, ng, dtype=torch.float32, device=x.device)
    if R == 0:
        return q, s
    block = group or min(4096, triton.next_power_of_2(K))
    _quant_rows_fp8_kernel[(R, ng)](x, q, s, K, x.stride(0), q.stride(0), s.stride(0),
                                    GROUP=group, BLOCK=block, num_warps=4, **launch_args(pdl))
    return q, s


def layout_args(m, vec: bool = False) -> dict:
    """The constexprs of a weight stack `m` (a qweights.QuantMatrix or anything with its fields); vec:
    also VEC, the codes a GEMV tile keeps together (a word's, or 16 fp8 bytes)."""
    args = dict(BITS=m.bits, CODES=m.codes, GROUP=m.group, ROW_BLOCK=m.row_block, OFFSET=float(m.zero_point),
                HAS_ZERO=m.zero is not None)
    if vec:
        args["VEC"] = 16 if m.bits == 0 else 32 // m.bits
    return args


def pointer_args(m) -> tuple:
    """(data, scale, zero, codebook, K, words a row, groups a row): a stack's runtime arguments
    (the scale tensor stands in for a missing zero or codebook: never read)."""
    data, scale = m.data3, m.scale3
    zero = m.zero3 if m.zero is not None else scale
    code = m.codebook if m.codes == 1 else scale
    return data, scale, zero, code, m.K, data.shape[2] if m.bits else 0, scale.shape[2]


def stride_args(m) -> tuple:
    """(expert, row, group strides of the scales; expert, row strides of the data)."""
    data, scale = m.data3, m.scale3
    return data.stride(0), data.stride(1), scale.stride(0), scale.stride(1), scale.stride(2)
