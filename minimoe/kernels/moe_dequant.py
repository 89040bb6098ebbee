"""Prefill on integer weights: dequantize a few experts at a time to the activation dtype, run the bf16 fused MoE.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width, G experts per chunk.

At decode a quantized MoE layer is a stream of weight bytes, and dequantizing each tile inside the GEMM
(fused_moe_quant.py) is what makes int4 / int8 fast. At prefill it is the other way round: thousands of tokens
reuse every weight tile, the layer is bound by the tensor cores, and the in-kernel dequantization (codes -> floats
per tile, once per M-block of every expert) sits on that critical path: measured on the H200 (docs/results/
2026-12-01-s15, call 3), Mixtral-8x7B int4 at bs 64 x 128 prompt tokens took 1.54-2.43 s to first token against
0.38 s in bf16. Here each chunk of G experts is decoded once into a scratch stack (one pass: 0.5 or 1 byte read,
2 written a weight) and the bf16 kernels of fused_moe.py run on it; the chunks' outputs add up in fp32. Scratch is
bounded by CHUNK_BYTES (about three Mixtral experts), so the memory saved by the format stays saved. vLLM does the
same for AWQ past a token count (awq_dequantize + a dense GEMM), and TensorRT-LLM's weight-only GEMMs switch
kernels by batch size likewise.

Numerics are those of the PyTorch oracle (qweights.QuantMatrix.dequantize, then a matmul): codes minus the zero
point times the scale in fp32, rounded once to the activation dtype; the kernel gives the oracle's bits.
"""
import torch
import triton
import triton.language as tl

from .fused_moe import fused_moe
from .quant_tiles import layout_args, unpack_codes

CHUNK_BYTES = 1 << 30          # scratch for the dequantized experts of one chunk (w13 and w2), in bytes
DEQUANT_MIN_M = 128            # fused_moe_quant takes this path for aligned tiles of at least this many rows
# ... and, by code width, at least this many routed rows an expert (T·K/E; the in-kernel path decodes each weight tile
# again for each of the T·K/(E·BLOCK_M) M-blocks). One Mixtral-8x7B layer on the H200 (scripts/int4_paths.py,
# dequant / in-kernel): int4 0.70 at 256 tokens (64 rows an expert), 0.39 at 1,024 (docs/results/2026-12-01-s15,
# call 5; OLMoE and Qwen3-30B-A3B from their first 128-row tiles: docs/results/2026-12-02-s18, call 3); int8, whose
# byte tiles decode cheaply, 2.08 / 1.48 / 1.10 / 0.885 / 0.736 at 512 / 1,024 / 2,048 / 4,096 / 8,192 tokens
# (128-2,048 rows; docs/results/2026-12-02-s18, call 5): the crossing lies between 512 and 1,024 rows (~670-750
# interpolated). int8 was measured on Mixtral's wide experts only; E is the local expert count, so under expert
# parallelism the rows an expert are over-counted ep times (not measured there).
DEQUANT_MIN_ROWS = {4: 0, 8: 768}


@triton.jit
def _dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, rows, N, K, KW, NG,
                    stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_oe, stride_on,
                    BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                    OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[e, n, k] = (code − zero) · scale for BLOCK_N rows (over E·N) and BLOCK_K inputs; codes as [BN, W, VEC]
    (one int32 word a run), stored in the same shape: no reshape."""
    VEC: tl.constexpr = 32 // BITS
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = r < rows
    e, n = (r // N).to(tl.int64), r % N
    k0 = tl.program_id(1) * BLOCK_K
    j = tl.arange(0, BLOCK_K // VEC)
    offs_w = k0 // VEC + j                                                               # [W] word of each run
    words = tl.load(w_ptr + e[:, None] * stride_we + n[:, None] * stride_wn + offs_w[None, :],
                    mask=r_ok[:, None] & (offs_w < KW)[None, :], other=0)                 # [BN, W]
    codes = unpack_codes(words, s_ptr, BITS, CODES, OFFSET, 1)                            # [BN, W, VEC] u − OFFSET
    s_rows = s_ptr + e * stride_se + (n // ROW_BLOCK) * stride_sn
    if GROUP == 0:
        scale = tl.load(s_rows, mask=r_ok, other=0.0)[:, None, None]
    else:
        g = (k0 + j * VEC) // GROUP
        g_ok = r_ok[:, None] & (g < NG)[None, :]
        scale = tl.load(s_rows[:, None] + g[None, :] * stride_sg, mask=g_ok, other=0.0)[:, :, None]
        if HAS_ZERO:
            z = tl.load(z_ptr + e[:, None] * stride_se + n[:, None] * stride_sn + g[None, :] * stride_sg,
                        mask=g_ok, other=0.0)
            codes = codes - z[:, :, None]
    k = k0 + j[:, None] * VEC + tl.arange(0, VEC)[None, :]                                # [W, VEC]
    out = out_ptr + e[:, None, None] * stride_oe + n[:, None, None] * stride_on + k[None, :, :]
    tl.store(out, (codes * scale).to(out_ptr.dtype.element_ty), mask=r_ok[:, None, None] & (k < K)[None, :, :])


def dequantize_stack(m, experts: slice, dtype: torch.dtype) -> torch.Tensor:
    """Experts `experts` (a slice of E) of an int4 / int8 stack (qweights.QuantMatrix, minimoe's codes) -> dense
    [E', N, K] in dtype, the oracle's bits (QuantMatrix.dequantize). Raises ValueError for other formats."""
    if m.bits not in (4, 8) or m.codes != 0:
        raise ValueError(f"moe_dequant: int4 / int8 stacks only, got {m.describe() if hasattr(m, 'describe') else m}")
    if m.zero is not None and not m.group:
        raise ValueError("moe_dequant: zero points come per scale group")
    data, scale = m.data3[experts], m.scale3[experts]
    zero = m.zero3[experts] if m.zero is not None else scale
    E, N, KW = data.shape
    out = torch.empty(E, N, m.K, device=data.device, dtype=dtype)
    if out.numel() == 0:
        return out
    block_n, block_k = 16, 256
    grid = (triton.cdiv(E * N, block_n), triton.cdiv(m.K, block_k))
    _dequant_kernel[grid](data, scale, zero, out, E * N, N, m.K, KW, scale.shape[2],
                          data.stride(0), data.stride(1), scale.stride(0), scale.stride(1), scale.stride(2),
                          out.stride(0), out.stride(1), **layout_args(m), BLOCK_N=block_n, BLOCK_K=block_k,
                          num_warps=4)
    return out


def fused_moe_dequant(x: torch.Tensor, w13, w2, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *,
                      expert_offset: int = 0, pdl: bool = False, chunk_bytes: int | None = None) -> torch.Tensor:
    """out [T, D] in x.dtype = Σ_k topk_weights[:, k] · expert(topk_ids[:, k])(x) for int4 / int8 stacks w13
    [E, 2I, D] and w2 [E, D, I] (experts expert_offset .. +E-1; other ids add zero): G experts at a time
    (G · (3 I D) · 2 bytes <= chunk_bytes, default CHUNK_BYTES; at least one; the chunks as even as that allows)
    dequantized into x.dtype and run through fused_moe, which picks its config for a G-expert layer (with G = E the
    bf16 tuned table of the shape; a chunk, as measured on Mixtral, the heuristic's prefill tiles); each chunk's output
    (rounded to x.dtype) summed in fp32 (one chunk: fused_moe's output as is)."""
    E, two_i, D = w13.stack_shape
    per_expert = (two_i * D + D * (two_i // 2)) * x.element_size()
    G = max(1, min(E, (chunk_bytes or CHUNK_BYTES) // per_expert))
    G = -(-E // -(-E // G))                        # as many chunks as G allows, of even sizes (64 = 32 + 32, not 62 + 2)
    if G == E:
        return fused_moe(x, dequantize_stack(w13, slice(None), x.dtype), dequantize_stack(w2, slice(None), x.dtype),
                         topk_ids, topk_weights, expert_offset=expert_offset, pdl=pdl)
    acc = torch.zeros(x.shape, device=x.device, dtype=torch.float32)                    # [T, D]
    for e0 in range(0, E, G):
        sel = slice(e0, min(E, e0 + G))
        acc += fused_moe(x, dequantize_stack(w13, sel, x.dtype), dequantize_stack(w2, sel, x.dtype), topk_ids,
                         topk_weights, expert_offset=expert_offset + e0, pdl=pdl).float()
    return acc.to(x.dtype)
