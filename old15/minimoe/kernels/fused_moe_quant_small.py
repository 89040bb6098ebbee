"""Decode MoE on quantized weights: fused_moe_small's two GEMVs, reading fp8 / int8 / int4 codes.

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width.

At decode a layer is a stream of the chosen experts' weights, so the time is bytes over bandwidth
and the design is fused_moe_small.py's, unchanged: GEMM1 gives every (token, slot) pair its own run
of programs, each owning BLOCK_N rows of the gate AND the up half of its expert, walking D in long
BLOCK_K steps of contiguous loads; GEMM2 owns one token's BLOCK_N output columns, walks all K slots
and folds the routing weights and the top-k sum into its fp32 accumulator (no y buffer, no combine
launch). What changes is the tile: quant_tiles.tile_dot loads codes (1 byte or half a byte a weight) as
16-byte runs, makes them floats with the 2^23 trick, multiplies by the activation, sums each run and
scales the run sums. BLOCK_K counts weights, so the bytes a step loads are BLOCK_N x BLOCK_K x bits/8.

The activation stays in the compute dtype here, for fp8 too: on CUDA cores an fp8 activation would
save no bytes (the weights are the stream) and would cost a quantization pass; the aligned
(prefill) kernels quantize activations because fp8 tensor cores need both operands in fp8. So fp8
decode numerics are W8A16, slightly closer to the bf16 model than the prefill's W8A8.

A dense layer is the down kernel with one expert, one slot and weight 1 (DENSE): `quant_gemv`,
the decode path of qweights.QuantWeight.

DECODE_VARIANT picks, per format (its bits), which decode kernels a decode-sized call runs: "small",
these, "gemv", fused_moe_quant_gemv.py's 2-D tiles, or "pair", fused_moe_quant_pair.py's fp16 pairs
(int4, int8, and fp8 whose rows hold whole 4-byte words); config["variant"] ("small" / "gemv" / "pair") overrides
it per call. An entry flips only once scripts/quant_decode_sweep.py (and scripts/pair_tiles.py) have
measured the new kernels on the H200.
"""

import torch
import triton
import triton.language as tl

from . import fused_moe_quant_gemv, fused_moe_quant_pair
from .fused_moe_small import _flat_slot, _local_expert
from .moe_configs import on_gpu
from .pdl import launch_args, wait_then_release
from .quant_tiles import layout_args, load_x, pointer_args, stride_args, tile_dot

SMALL_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
# format bits -> decode kernels ("small", "gemv" or "pair"): "pair" (fp16 pairs, fused_moe_quant_pair.py) for int8
# and int4, 1.4-2.5x faster than "gemv" (fused_moe_quant_pair._TILES), and for fp8 (cvt.e4m3x2 pairs, twelfth
# session, docs/results/2026-12-01-s12/call5: one layer at M = 1 Mixtral 127.4 -> 90.8 µs, Qwen3-30B-A3B 24.6 ->
# 18.5; the graphed bs-1 step Mixtral 5.08 -> 3.94 ms, Qwen3 2.58 -> 2.21, OLMoE 0.865 -> 0.779); "gemv" stays for
# fp8 rows of partial words, fp32 activations and the interpreter; the others stay tested alternatives (config
# {"variant": ...})
DECODE_VARIANT = {0: "pair", 8: "pair", 4: "pair"}


def decode_variant(w, config: dict | None = None, dtype: torch.dtype | None = None, w2=None) -> str:
    """"small", "gemv" or "pair" for a stack `w` and activations of `dtype`: config["variant"] if it names
    one, else DECODE_VARIANT. "pair" computes in fp16, so by default it serves bf16 / fp16 activations on a
    GPU; fp32 activations and the interpreter take "gemv" (exact fp32 sums) unless a config asks for "pair".
    nf4 and LLM.int8 (bitsandbytes' storage) stay on "small" unless a config asks for "gemv".
    w2: an MoE layer's second stack, which "pair" must read too (fp8 whose I is not a multiple of 4 takes "gemv").
    Raises ValueError for an unknown variant or a config asking "pair" of a format it does not read."""
    forced = (config or {}).get("variant")
    stacks = [w] if w2 is None else [w, w2]
    pair_ok = all(fused_moe_quant_pair.pair_supported(m) for m in stacks)
    if forced is not None and forced not in ("small", "gemv", "pair"):
        raise ValueError(f"unknown decode variant {forced!r}: small, gemv or pair")
    if forced == "pair" and not pair_ok:
        bad = next(m for m in stacks if not fused_moe_quant_pair.pair_supported(m))
        raise ValueError(f"the pair decode kernels read int4 and int8 codes and fp8 in whole words, not "
                         f"{getattr(bad, 'describe', lambda: type(bad).__name__)()}")
    if forced in ("small", "gemv", "pair"):
        return forced
    if w.codes != 0:
        return "small"
    variant = DECODE_VARIANT[w.bits]
    if variant == "pair" and (not on_gpu() or dtype not in (torch.bfloat16, torch.float16)
                              or not pair_ok):                                  # fp8 rows of whole words only
        variant = "gemv"
    return variant


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _gate_up_qgemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, c_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, D, KW,
                          NG, stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                          BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                          OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, VEC: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """h[pair, cols] = silu(Wg[e] x[t]) * (Wu[e] x[t]) for one pair and BLOCK_N columns of I."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(I, BLOCK_N)
    pair, col0 = tl.program_id(0) // n_blocks, (tl.program_id(0) % n_blocks) * BLOCK_N
    expert = _local_expert(ids_ptr, pair, expert_offset, E)
    if expert < 0:
        return                                   # foreign or skipped slot: GEMM2 never reads this h row
    rows = (col0 + tl.arange(0, BLOCK_N)) % I    # rows past I wrap (loads in bounds); the store drops them
    e64 = expert.to(tl.int64)
    w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
    x_row = x_ptr + (pair // top_k).to(tl.int64) * stride_xt
    acc_gate = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(D, BLOCK_K), num_stages=STAGES):
        k0 = k * BLOCK_K
        xk = load_x(x_row, k0, D, VEC, BLOCK_K)                                        # [BK/VEC, VEC]
        acc_gate += tile_dot(w_e, s_e, z_e, c_ptr, rows, k0, xk, D, KW, NG, stride_wn, stride_sn, stride_sg,
                             BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, VEC, BLOCK_K)
        acc_up += tile_dot(w_e, s_e, z_e, c_ptr, rows + I, k0, xk, D, KW, NG, stride_wn, stride_sn, stride_sg,
                           BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, VEC, BLOCK_K)
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + pair.to(tl.int64) * stride_ht + cols, h.to(h_ptr.dtype.element_ty), mask=cols < I)


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _down_qgemv_kernel(h_ptr, w_ptr, s_ptr, z_ptr, c_ptr, out_ptr, ids_ptr, weights_ptr, top_k, expert_offset,
                       E, D, I, KW, NG, stride_ht, stride_we, stride_wn, stride_se, stride_sn, stride_sg,
                       stride_ot, BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr,
                       ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, DENSE: tl.constexpr,
                       VEC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                       PDL: tl.constexpr):
    """out[t, cols] = Σ_k w[t,k] · W2[e_k][cols, :] · h[t·K + k]; DENSE: out[t, cols] = W[cols, :] · h[t]."""
    wait_then_release(PDL)
    n_blocks = tl.cdiv(D, BLOCK_N)
    t, col0 = tl.program_id(0) // n_blocks, (tl.program_id(0) % n_blocks) * BLOCK_N
    rows = (col0 + tl.arange(0, BLOCK_N)) % D
    n_chunks = tl.cdiv(I, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.range(0, top_k * n_chunks, num_stages=STAGES):
        pair, k0, e64, k_lim, kw_lim, route_w = _flat_slot(j, n_chunks, t, top_k, ids_ptr, weights_ptr, expert_offset,
                                                           E, I, KW, BLOCK_K, DENSE)
        hk = load_x(h_ptr + pair.to(tl.int64) * stride_ht, k0, k_lim, VEC, BLOCK_K)     # [BK/VEC, VEC]
        partial = tile_dot(w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se, c_ptr,
                           rows, k0, hk, k_lim, kw_lim, NG, stride_wn, stride_sn, stride_sg,
                           BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, VEC, BLOCK_K)
        acc += partial * route_w
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < D)


def small_quant_config(m, K_in: int, down: bool = False) -> dict:
    """GEMV tiles for a weight stack `m` reduced over K_in. The bf16 kernel's measured best (GEMM1
    [4, 1024] x 4 warps, GEMM2 [8, 512] x 4 warps, 3 stages) scaled so a step loads the same bytes
    with the same fp32 values per thread: BLOCK_K and the warps grow 2x for 8-bit codes, 4x for int4
    (then 2 x 2: 16 warps is the ceiling). A first guess for the GPU sweep (scripts/quant_gpu.py);
    never below a scale group or past the reduction (rounded up to a power of two)."""
    if not on_gpu():          # the interpreter pays per program and per op: few, mid-sized tiles
        return {"BLOCK_N": 32, "BLOCK_K": max(64, m.group), "num_warps": 4, "num_stages": 1}
    grow = 4 if m.bits == 4 else 2
    block_k = max(m.group, min((512 if down else 1024) * grow, triton.next_power_of_2(K_in)))
    return {"BLOCK_N": 8 if down else 4, "BLOCK_K": block_k, "num_warps": min(16, 4 * grow),
            "num_stages": 3 if down else 1}


def _pick(config: dict | None, key: str, base: dict) -> dict:
    """config["small"] (its "down" dict for GEMM2) over the default tiles, as fused_moe_small reads them."""
    return fused_moe_quant_gemv.pick_tiles(config, key, base, "small", SMALL_KEYS)


_check_block_k = fused_moe_quant_gemv.check_block_k


def fused_moe_quant_small(x, w13, w2, ids, topk_weights, expert_offset: int, config: dict | None = None,
                          pdl: bool = False) -> torch.Tensor:
    """The decode path of fused_moe_quant (inputs checked there): x [T, D], w13 / w2 quantized stacks
    (qweights.QuantMatrix) [E, 2I, D] / [E, D, I], ids/topk_weights [T, K] -> [T, D] in x.dtype."""
    variant = decode_variant(w13, config, x.dtype, w2)
    if variant == "gemv":
        return fused_moe_quant_gemv.fused_moe_quant_gemv(x, w13, w2, ids, topk_weights, expert_offset, config, pdl)
    if variant == "pair":
        return fused_moe_quant_pair.fused_moe_quant_pair(x, w13, w2, ids, topk_weights, expert_offset, config, pdl)
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, ids.shape[1]
    cfg1 = _pick(config, "gate_up", small_quant_config(w13, D))
    cfg2 = _pick(config, "down", small_quant_config(w2, I, down=True))
    _check_block_k(cfg1, w13)
    _check_block_k(cfg2, w2)
    h = x.new_empty(T * K, I)                                                          # [T·K, I]
    data, scale, zero, code, _, kw, ng = pointer_args(w13)
    _gate_up_qgemv_kernel[(T * K * triton.cdiv(I, cfg1["BLOCK_N"]),)](
        x, data, scale, zero, code, h, ids, K, expert_offset, E, I, D, kw, ng,
        x.stride(0), *stride_args(w13), h.stride(0), **layout_args(w13, vec=True),
        BLOCK_N=cfg1["BLOCK_N"], BLOCK_K=cfg1["BLOCK_K"], STAGES=cfg1["num_stages"],
        num_warps=cfg1["num_warps"], num_stages=cfg1["num_stages"], **launch_args(pdl))
    out = x.new_empty(T, D)
    weights = topk_weights.float().contiguous().view(-1)                               # [T·K]
    _launch_down(h, w2, out, ids, weights, K, expert_offset, E, cfg2, False, False)   # after GEMM1 (pdl.py)
    return out


def _launch_down(h, w, out, ids, weights, top_k, expert_offset, E, cfg, dense, pdl):
    T, D = out.shape
    data, scale, zero, code, I, kw, ng = pointer_args(w)
    _down_qgemv_kernel[(T * triton.cdiv(D, cfg["BLOCK_N"]),)](
        h, data, scale, zero, code, out, ids, weights, top_k, expert_offset, E, D, I, kw, ng,
        h.stride(0), *stride_args(w), out.stride(0), **layout_args(w, vec=True), DENSE=dense,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def quant_gemv(x: torch.Tensor, w, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """A dense quantized layer at decode: x [T, K] (contiguous) @ W[N, K]ᵀ -> [T, N] in x.dtype,
    W a qweights.QuantWeight (one expert, one slot, routing weight 1)."""
    variant = decode_variant(w, config, x.dtype)
    if variant == "gemv":
        return fused_moe_quant_gemv.quant_gemv_2d(x, w, config, pdl)
    if variant == "pair":
        return fused_moe_quant_pair.quant_pair_2d(x, w, config, pdl)
    T = x.shape[0]
    N = w.stack_shape[1]
    cfg = _pick(config, "down", small_quant_config(w, w.K, down=True))
    _check_block_k(cfg, w)
    out = x.new_empty(T, N)
    if T:
        _launch_down(x, w, out, x, x, 1, 0, 1, cfg, True, pdl)
    return out
