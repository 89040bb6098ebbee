"""Fused MoE on quantized weights: fused_moe's aligned tensor-core GEMMs with the dequantization inside.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width.

    out[t] = Σ_k w[t,k] · W2[e] · ( silu(Wg[e]·x[t]) ⊙ (Wu[e]·x[t]) ),   W = dequant(codes, scales)

Decode-sized calls (fused_moe.plan: T·K·4 <= E) go to the decode GEMVs that fused_moe_quant_small.decode_variant
picks: fused_moe_quant_pair.py's fp16 pairs by default on a GPU (DECODE_VARIANT), fused_moe_quant_gemv.py's 2-D
tiles for fp32 activations, fp8 rows of partial words and the interpreter, fused_moe_quant_small.py's own 3-D tiles
for bitsandbytes' nf4 / LLM.int8 codes (config["variant"] "small" / "gemv" / "pair" overrides). Larger
ones run the aligned path of fused_moe.py (align pairs by expert into BLOCK_M-row blocks, GEMM1 with
SiLU·up, GEMM2 with the routing weight, the combine kernel), with each B tile dequantized in the K
loop by quant_tiles.load_cols:

  int8, int4 (W8A16, W4A16)   codes − zero point are small integers, exact in bf16/fp16: the tile is
                              cast to the activation dtype and fed to tl.dot; with scale groups
                              (int4, BLOCK_K = group) each step's fp32 product is multiplied by its
                              group's scales before it is added (Triton's GPTQ/AWQ MoE kernel does
                              the same, scaling the tile instead); a row scale waits for the epilogue.
  fp8 (W8A8)                  activations are quantized per token (quant_tiles.quant_rows_fp8: x
                              before GEMM1, h before GEMM2) and tl.dot multiplies e4m3 by e4m3 on the
                              fp8 tensor cores into fp32; per-row scales (token x channel) in the
                              epilogue, or, for 128x128 block scales, per K-step: the step's product
                              times its token-group and weight-block scales, then added (DeepGEMM's
                              and vLLM's promotion, which keeps fp8 accumulation error per block).
Nothing syncs with the host and every buffer size depends on (T, K, E, config): CUDA-graph safe.
"""


import torch
import triton
import triton.language as tl

from . import fused_moe as _fused_moe
from .fused_moe import _block_rows, _tile_coords, plan
from .fused_moe_quant_small import fused_moe_quant_small
from .moe_align import align_tokens_by_expert
from .moe_combine import _combine_kernel
from .moe_dequant import DEQUANT_MIN_M, DEQUANT_MIN_ROWS, fused_moe_dequant
from .moe_configs import (CONFIG_DIR, default_config, interpreter_config, nearest_bucket, on_gpu, pipeline_stages,
                          tuned_table)
from .pdl import launch_args, wait_then_release
from .quant_dot import dot_step, epilogue_scale, load_a
from .quant_tiles import layout_args, pointer_args, quant_rows_fp8, stride_args


@triton.jit(do_not_specialize=["numel", "top_k", "expert_offset", "E", "num_pid_m"])
def _gate_up_q_kernel(a_ptr, sa_ptr, w_ptr, s_ptr, z_ptr, c_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr,
                      num_padded_ptr, numel, top_k, expert_offset, E, num_pid_m, I, D, KW, NG,
                      stride_at, stride_sat, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                      BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                      OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
                      BYTES: tl.constexpr = False):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, I, BLOCK_N, GROUP_M)
    rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                         sorted_ids_ptr, numel, expert_offset, E, BLOCK_M, False)
    if expert < 0:
        return
    e64 = expert.to(tl.int64)
    w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % I        # wrap past I: loads in bounds, store drops
    tokens = (rows // top_k).to(tl.int64)
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sa = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(D, BLOCK_K)):
        k0 = k * BLOCK_K
        a, a_odd = load_a(a_ptr + tokens * stride_at, row_mask, k0, D, BLOCK_K, BITS, CODES, BYTES)   # [BM, BK]
        if BITS == 0 and GROUP > 0:
            sa = tl.load(sa_ptr + tokens * stride_sat + k0 // GROUP, mask=row_mask, other=0.0)
        acc_gate = dot_step(acc_gate, a, a_odd, w_e, s_e, z_e, c_ptr, cols, k0, D, KW, NG, sa, stride_wn, stride_sn,
                            stride_sg, BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, BLOCK_K, BLOCK_N,
                            DOT_PRECISION, BYTES)
        acc_up = dot_step(acc_up, a, a_odd, w_e, s_e, z_e, c_ptr, cols + I, k0, D, KW, NG, sa, stride_wn, stride_sn,
                          stride_sg, BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, BLOCK_K, BLOCK_N,
                          DOT_PRECISION, BYTES)
    if BITS == 0 and GROUP == 0:
        sa = tl.load(sa_ptr + tokens * stride_sat, mask=row_mask, other=0.0)
    acc_gate = epilogue_scale(acc_gate, s_e, cols, sa, stride_sn, BITS, GROUP)
    acc_up = epilogue_scale(acc_up, s_e, cols + I, sa, stride_sn, BITS, GROUP)
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    out_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * stride_ht + out_cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (out_cols < I)[None, :])


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_pid_m"])
def _down_q_kernel(a_ptr, sa_ptr, w_ptr, s_ptr, z_ptr, c_ptr, y_ptr, weights_ptr, sorted_ids_ptr, block_expert_ptr,
                   num_padded_ptr, numel, expert_offset, E, num_pid_m, D, I, KW, NG,
                   stride_at, stride_sat, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_yt,
                   BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                   OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
                   BYTES: tl.constexpr = False):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, D, BLOCK_N, GROUP_M)
    rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                         sorted_ids_ptr, numel, expert_offset, E, BLOCK_M, False)
    if expert < 0:
        return
    e64 = expert.to(tl.int64)
    w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % D
    rows64 = rows.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sa = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(I, BLOCK_K)):
        k0 = k * BLOCK_K
        a, a_odd = load_a(a_ptr + rows64 * stride_at, row_mask, k0, I, BLOCK_K, BITS, CODES, BYTES)
        if BITS == 0 and GROUP > 0:
            sa = tl.load(sa_ptr + rows64 * stride_sat + k0 // GROUP, mask=row_mask, other=0.0)
        acc = dot_step(acc, a, a_odd, w_e, s_e, z_e, c_ptr, cols, k0, I, KW, NG, sa, stride_wn, stride_sn, stride_sg,
                       BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, BLOCK_K, BLOCK_N, DOT_PRECISION, BYTES)
    if BITS == 0 and GROUP == 0:
        sa = tl.load(sa_ptr + rows64 * stride_sat, mask=row_mask, other=0.0)
    acc = epilogue_scale(acc, s_e, cols, sa, stride_sn, BITS, GROUP)
    acc = acc * tl.load(weights_ptr + rows, mask=row_mask, other=0.0)[:, None]   # routing weight, still fp32
    out_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + rows64[:, None] * stride_yt + out_cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (out_cols < D)[None, :])


# fp8 decode from this many tokens (still decode-sized: fused_moe.plan) runs these 16-row tensor-core tiles, not
# the GEMVs: fp8 tl.dot reads each weight once for all tokens, the GEMVs once per (token, slot). Measured on the
# H200 (scripts/quant_decode_sweep.py, µs per layer): Qwen3-30B-A3B T=4 GEMVs 104.5 -> 58.1 here (bf16 82.3);
# at T=2 the GEMVs still win (37.9 vs 41.1 for Qwen3, 40.9 vs 44.4 for OLMoE).
FP8_DOT_MIN_T = 3
FP8_DOT_TILES = {"BLOCK_M": 16, "BLOCK_N": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 4}


# Tuned tables (scripts/tune_fused_moe_quant.py) are files of moe_configs' kind, named as vLLM names its quantized
# ones: fp8 and int8 per row, int4 in groups of 128 (its tables' BLOCK_K is the group; another group size, fp8's
# 128 x 128 blocks and bitsandbytes' codes take the heuristic).
TUNED_DTYPE = {"fp8": "fp8_w8a8", "int8": "int8_w8a16", "int4": "int4_w4a16"}
# CONFIG_DIR (imported from moe_configs) is where tuned_config looks: a path or a str (step_probe variants point it at
# a freshly tuned directory)
USE_TUNED = True                    # False: the heuristic below only (scripts/step_probe.py A/B's the tables)
# Integer B tiles read as bytes instead of words unpacked through a reshape (a shared-memory round trip a tile on a
# GPU): int8 (quant_tiles.load_cols BYTES) gives the same values in the [BK, BN] shape; int4 (load_cols_halves) splits
# each byte into an even-input and an odd-input tile, multiplied by A's even and odd columns (two dots of BK/2).
# The thirteenth session found the word path at 22-37% of its bytes whatever the tile. Measured in the fourteenth
# (scripts/step_probe.py, graphed Mixtral-8x7B decode step, H200, docs/results/2026-12-01-s14 calls 1-3): int8 bs 16
# 30.76 -> 13.77 ms, bs 64 35.29 -> 19.91; int4 with A split in registers bs 16 23.57 -> 17.16, bs 64 29.86 -> 21.42
# (A loaded strided: 23.06 / 50.31, scalar loads of A cost more than the reshape they save).
INT8_BYTE_TILES = True
INT4_BYTE_TILES = True
INT4_A_SPLIT = "registers"          # int4 byte tiles' A halves: "registers" (one load, split) | "strided" (two loads)
# int4 byte tiles made biased 16-bit operands with no conversion instruction (quant_tiles.nibble_tiles): "asm" (its
# PTX on a GPU; the interpreter runs "ops"), "ops" (Triton integer ops), "off" (codes -> fp32 by the 2^23 trick -> a
# pack to 16 bits, the fourteenth session's path). Compiled for sm90 (scripts/sass_mix.py; Mixtral int4 GEMM1, one K
# step of 128 for gate and up, per thread): 16 x 128 tiles 1,388 instructions (off), 1,027 (ops), 560 (asm); 32 x 64
# tiles 849 (off), 455 (asm): with bf16 activations the off path was bound by the integer pipe and by the
# quarter-rate fp32 -> bf16 packs. Measured in the graphed Mixtral int4 step (docs/results/2026-12-01-s15, call 2):
# bs 16 17.17 -> 12.10 ms (with its re-tuned table), bs 64 21.29 -> 16.29. int8 was tried the same way (bf16 holds 7
# mantissa bits: two nibble tiles a byte) and lost: +61% / +222% a step with A's row sums from a tl.sum (call 1),
# no fewer instructions with them from a dot (675 vs 651), out of shared memory at its bs-64 tile (call 2).
BIASED_TILES = "asm"
# ... on tiles of up to this many rows (the aligned MoE; the skinny dense GEMM's tiles, 16-64 rows, all take it). The
# row sums cost two more dots a K step: at 16-32 rows (mma.sync) ptxas folds most of them (HMMA 64 -> 72 / 80 a
# step), but 64+-row tiles run wgmma, where they double (HGMMA 16 -> 32) and the tile needs more shared memory; on
# compute-bound prefill tiles (128 rows) a Mixtral int4 layer was 1.5-1.6x slower (docs/results/2026-12-01-s15,
# call 4). Measured wins: 16- and 32-row MoE tiles and the skinny GEMM's 64-row tiles (inside the bs-64 steps); the
# MoE's 64-row tiles (Mixtral at ~129-191 tokens) were not measured, so they keep the plain byte tiles.
BIASED_MAX_M = 32
SKINNY_BIASED_MAX_M = 64


# Prefill-sized calls on int4 / int8 experts (tiles of DEQUANT_MIN_M rows or more: compute-bound; int8 from
# DEQUANT_MIN_ROWS routed rows an expert) dequantize a few experts at a time into bf16 and run the bf16 kernels
# (kernels/moe_dequant.py) instead of dequantizing each tile inside the GEMM; config {"in_kernel": True} keeps the
# in-kernel path (benchmarks, tests).
PREFILL_DEQUANT = True


def byte_tiles(w, block_k: int, block_m: int = 16, max_m: int | None = None) -> int:
    """The kernels' BYTES constexpr for this stack and K steps of block_k inputs: 0 = words unpacked through a reshape;
    1 / 2 = tiles loaded as bytes (minimoe's int8 codes under INT8_BYTE_TILES; its int4 codes under INT4_BYTE_TILES
    with block_k >= 32, two dots of at least 16 inputs, and A's halves split in registers (2) or loaded strided (1));
    3 / 4 = int4 byte tiles made biased 16-bit operands (BIASED_TILES "ops" / "asm", A split in registers, tiles of
    block_m <= max_m rows, default BIASED_MAX_M; fp32 activations keep the exact 2^23 path, decided in the kernel)."""
    if w.codes != 0:
        return 0
    if w.bits == 8 and INT8_BYTE_TILES:
        return 1
    if w.bits == 4 and INT4_BYTE_TILES and block_k >= 32:
        if INT4_A_SPLIT != "registers":
            return 1
        if BIASED_TILES == "off" or block_m > (BIASED_MAX_M if max_m is None else max_m):
            return 2
        return 4 if BIASED_TILES == "asm" and on_gpu() else 3
    return 0


def tuned_config(w13, E: int, I: int, D: int, K: int, T: int) -> dict | None:
    """The tuned table's config for the bucket nearest T, or None: no table, T more than 2x outside its buckets,
    a format without tables (fp8 128 x 128 blocks, int4 in groups other than 128, bitsandbytes' codes), the
    interpreter, or USE_TUNED off. int4 with zero points (GPTQ / AWQ) reads the int4_w4a16 table too."""
    fmt = {0: "fp8", 8: "int8", 4: "int4"}.get(w13.bits)
    if not (USE_TUNED and on_gpu() and fmt and w13.group == (128 if fmt == "int4" else 0) and w13.codes == 0):
        return None
    table = tuned_table(E, I, D, K, TUNED_DTYPE[fmt], CONFIG_DIR)
    if not table or not min(table) / 2 <= T <= max(table) * 2:      # a table speaks only for the sizes it was tuned at
        return None
    return nearest_bucket(table, T)


def untuned_config(w13, w2, E: int, I: int, D: int, K: int, T: int) -> dict:
    """Aligned-path tiles without a table: the bf16 heuristic (moe_configs.default_config) with BLOCK_K =
    the scale group (one group a step), or 128 for row scales (a multiple of the codes per word and of the
    16 a tl.dot needs after unpacking), and the pipeline depth recomputed for the smaller B tiles; fp8
    decode sizes (fused_moe.plan says "small", T >= FP8_DOT_MIN_T) take FP8_DOT_TILES."""
    if w13.bits == 0 and T >= FP8_DOT_MIN_T and plan(T, K, E) != "aligned":
        return dict(FP8_DOT_TILES, BLOCK_K=w13.group or 128, down={"BLOCK_N": 64, "num_stages": 4})
    base = interpreter_config() if not on_gpu() else default_config(E, I, D, K, T, torch.bfloat16, prefill_tma=False)
    cfg = dict(base, BLOCK_K=w13.group or 128)
    elem = 1 if w13.bits == 0 else 2                 # B tiles are fp8, or the activation dtype after unpacking
    if on_gpu():
        bk = cfg["BLOCK_K"]
        cfg["num_stages"] = pipeline_stages(cfg["BLOCK_M"], cfg["BLOCK_N"], bk, 2, elem, cfg["num_stages"])
        down_n = base.get("down", {}).get("BLOCK_N", cfg["BLOCK_N"])
        cfg["down"] = {"BLOCK_N": down_n, "num_stages": pipeline_stages(cfg["BLOCK_M"], down_n, bk, 1, elem, 4)}
    return cfg


def quant_config(w13, w2, E: int, I: int, D: int, K: int, T: int) -> dict:
    """The tensor-core path's config for T tokens: the tuned table's (tuned_config), else untuned_config."""
    return tuned_config(w13, E, I, D, K, T) or untuned_config(w13, w2, E, I, D, K, T)


def _check(x, w13, w2, ids, weights):
    T, D = x.shape
    E, two_i, d_in = w13.stack_shape
    assert two_i % 2 == 0 and d_in == D, f"w13 {w13.stack_shape} does not match x {tuple(x.shape)}"
    assert w2.stack_shape == (E, D, two_i // 2), f"w2 {w2.stack_shape} is not [E, D, I]"
    assert x.is_contiguous() and ids.shape == weights.shape and ids.shape[0] == T
    assert ids.dtype in (torch.int32, torch.int64), "topk_ids must be int32 or int64"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), "activations are fp32, fp16 or bf16"


def fused_moe_quant(x: torch.Tensor, w13, w2, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *,
                    expert_offset: int = 0, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """out [T, D] in x.dtype = Σ_k topk_weights[:, k] · expert(topk_ids[:, k])(x), the experts
    expert_offset .. expert_offset+E-1 held as quantized stacks (qweights.QuantMatrix) w13 [E, 2I, D]
    and w2 [E, D, I] of one format; ids outside that range (and -1) contribute zero."""
    _check(x, w13, w2, topk_ids, topk_weights)
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, topk_ids.shape[1]
    if T == 0:
        return x.new_empty(0, D)
    ids = topk_ids.contiguous()
    variant = plan(T, K, E, config)
    if variant not in ("small", "gemv", "pair", "aligned"):
        raise ValueError(f"unknown quantized MoE variant {variant!r}: small, gemv, pair or aligned")
    if variant in ("small", "gemv", "pair"):
        if not (w13.bits == 0 and T >= FP8_DOT_MIN_T and config is None):
            return fused_moe_quant_small(x, w13, w2, ids, topk_weights, expert_offset, config, pdl)
    cfg = dict(quant_config(w13, w2, E, I, D, K, T),
               **{k: v for k, v in (config or {}).items() if k != "small"})
    if (PREFILL_DEQUANT and w13.bits in (4, 8) and w13.codes == 0 and x.dtype != torch.float32
            and cfg["BLOCK_M"] >= DEQUANT_MIN_M and T * K >= DEQUANT_MIN_ROWS[w13.bits] * E
            and not (config or {}).get("in_kernel")):
        return fused_moe_dequant(x, w13, w2, ids, topk_weights, expert_offset=expert_offset, pdl=pdl)
    assert w13.group == w2.group and cfg["BLOCK_K"] == (w13.group or cfg["BLOCK_K"]), \
        f"a step must be one scale group: BLOCK_K {cfg['BLOCK_K']}, groups {w13.group} and {w2.group}"
    sorted_ids, block_expert, num_padded = align_tokens_by_expert(ids, E, cfg["BLOCK_M"], expert_offset, pdl=pdl)
    blocks = (sorted_ids, block_expert, num_padded, block_expert.numel(), T * K, expert_offset, E)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    a, sa = quant_rows_fp8(x, w13.group, pdl) if w13.bits == 0 else (x, x)
    h = x.new_empty(T * K, I)                                                         # [T·K, I]
    _launch(_gate_up_q_kernel, a, sa, w13, h, None, blocks, K, I, D, cfg, precision, pdl)
    a2, sa2 = quant_rows_fp8(h, w2.group, False) if w2.bits == 0 else (h, h)   # after GEMM1: no early launch (pdl.py)
    y = x.new_empty(T * K, D)                                                         # [T·K, D]
    weights = topk_weights.float().contiguous().view(-1)
    down = dict(cfg, **cfg.get("down", {}))
    _launch(_down_q_kernel, a2, sa2, w2, y, weights, blocks, None, D, I, down, precision, False)
    out = x.new_empty(T, D)
    block_d = min(_fused_moe.COMBINE_BLOCK_D, triton.next_power_of_2(D))     # the bf16 path's combine tile
    _combine_kernel[(T, triton.cdiv(D, block_d))](y, ids, out, K, expert_offset, E, D, 0, 0, BLOCK_D=block_d,
                                                  num_warps=_fused_moe.COMBINE_WARPS,
                                                  UNROLL_K=K if T <= _fused_moe.COMBINE_UNROLL_MAX_T else 0,
                                                  **launch_args(pdl))
    return out


def _launch(kernel, a, sa, w, out, weights, blocks, top_k, N, K_in, cfg, precision, pdl):
    sorted_ids, block_expert, num_padded, num_pid_m, numel, expert_offset, E = blocks
    data, scale, zero, code, _, kw, ng = pointer_args(w)
    grid = (num_pid_m * triton.cdiv(N, cfg["BLOCK_N"]),)
    routing = (top_k,) if weights is None else ()          # GEMM1 needs K for token = row // K
    head = (a, sa, data, scale, zero, code, out) + (() if weights is None else (weights,))
    kernel[grid](*head, sorted_ids, block_expert, num_padded, numel, *routing, expert_offset, E, num_pid_m,
                 N, K_in, kw, ng, a.stride(0), sa.stride(0), *stride_args(w), out.stride(0), **layout_args(w),
                 BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
                 DOT_PRECISION=precision, BYTES=byte_tiles(w, cfg["BLOCK_K"], cfg["BLOCK_M"]), num_warps=cfg["num_warps"],
                 num_stages=cfg["num_stages"], **launch_args(pdl))
