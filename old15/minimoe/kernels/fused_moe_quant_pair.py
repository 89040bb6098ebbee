"""Decode MoE on int4 / int8 / fp8 weights, third design (after fused_moe_quant_small's 3-D tiles and
fused_moe_quant_gemv's fp32 2-D tiles): two fp16 weights a register (Marlin's trick).

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width,
PW codes an int32 word (8 for int4, 4 for int8: vLLM's and AWQ's pack factor), V words a tile row per step.
Inputs: x bf16 / fp16 (fp32 works, in fp16 precision), ids int32/int64 [T, K], routing weights [T, K];
outputs in x's dtype. Raises ValueError for a stack that is not minimoe's int4 / int8 codes or fp8 in whole
4-byte words, or a BLOCK_K
that is not a power of two holding whole words and scale groups.

The arithmetic (the PTX, the paired order, the precision bounds) is in pair_codes.py; this file holds
the two GEMV kernels, their tiles and launchers.

Config: the "pair" key of a fused_moe config, GEMM1's tiles with GEMM2's in "down" (as "gemv").
"""

import torch
import triton
import triton.language as tl

from .fused_moe_small import _flat_slot, _local_expert
from .moe_configs import on_gpu
from .pair_codes import (H_SCALE, X_SCALE, _X_SCALE, _H_SCALE, _pair_step, _wide_step, _zero_of,  # noqa: F401
                         pack_pairs, pair_bits, pair_supported, pair_words)
from .pdl import launch_args, wait_then_release
from .quant_tiles import layout_args


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _gate_up_pair_kernel(x_ptr, w_ptr, s_ptr, z_ptr, h_ptr, ids_ptr, top_k, expert_offset, E, I, IP, D, KW,
                         stride_xt, stride_we, stride_wn, stride_se, stride_sn, stride_sg, stride_ht,
                         BITS: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr, OFFSET: tl.constexpr,
                         HAS_ZERO: tl.constexpr, H_PW: tl.constexpr, X_PACKED: tl.constexpr, ASM: tl.constexpr,
                         WIDE: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         STAGES: tl.constexpr, PDL: tl.constexpr, FP8: tl.constexpr = False):
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
                              ROW_BLOCK, OFFSET, HAS_ZERO, X_PACKED, ASM, 2 * BLOCK_N, STEP, FP8)
        for gi in tl.static_range(N_SUB):
            kk = k0 + gi * STEP
            g = 0                                    # a row scale
            if GROUP > 0:
                g = kk // GROUP
            part = _pair_step(w_e, rows, x_row, kk, D, KW, KW, _zero_of(z_e, rows, g, rows * 0 + kk < D, stride_sn,
                              stride_sg, OFFSET, HAS_ZERO), stride_wn, BITS, X_PACKED, ASM, 2 * BLOCK_N, STEP,
                              EVEN and X_PACKED, FP8)
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
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr, FP8: tl.constexpr = False):
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
        pair, k0, e64, k_lim, kw_lim, route_w = _flat_slot(j, n_chunks, t, top_k, ids_ptr, weights_ptr, expert_offset,
                                                           E, I, KW, BLOCK_K, DENSE)
        w_e, s_e, z_e = w_ptr + e64 * stride_we, s_ptr + e64 * stride_se, z_ptr + e64 * stride_se
        if WIDE:
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
            part = _pair_step(w_e, rows, h_ptr + pair.to(tl.int64) * stride_ht, kk, k_lim, kw_lim, KW,
                              _zero_of(z_e, rows, g, rows * 0 + kk < k_lim, stride_sn, stride_sg, OFFSET, HAS_ZERO),
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
# fp8 takes int8's tiles (the same bytes a weight), but GEMM1 at T = 1 is its own: the e4m3 conversion is cheaper
# than int8's, and the fp8 sweep (scripts/pair_tiles.py --bits 0, docs/results/2026-12-01-s12 call 6) put int8's
# 16 x 512 / 4 warps behind: Mixtral 65.0 µs (16 x 256 / 2 warps: 58.8, 8 x 512 / 2 warps: 60.5), Qwen3-30B-A3B 11.3
# (10.7, 13.3), OLMoE 12.4 (12.4, 14.0). In the graphed bs-1 step (call 7) 16 x 256 won for Mixtral's wide experts
# (-0.74%; 8 x 512 +0.92%) and 8 x 512 for the narrow ones (Qwen3 -0.42%, OLMoE -0.55%; 16 x 256 +4.6 / +2.3%).
FP8_UP_T1 = (8, 512, 2, 1, False, False)             # experts narrower than 4096
FP8_UP_T1_WIDE = (16, 256, 2, 1, False, False)       # I >= 4096
_DENSE = {4: (32, 512, 4, 3, True, False, 1), 8: (4, 1024, 2, 3, True, False, 1)}
_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "x_packed", "wide", "split")


def pair_config(m, K_in: int, down: bool = False, T: int = 1, width: int = 0, dense: bool = False) -> dict:
    """Tiles for a weight stack `m` reduced over K_in at T tokens (the measured table above); width: the
    experts' I (GEMM1), dense: a plain linear (quant_pair_2d)."""
    if not on_gpu():          # the interpreter pays per program and per op: few, mid-sized tiles
        return {"BLOCK_N": 16, "BLOCK_K": max(64, m.group), "num_warps": 4, "num_stages": 1, "x_packed": False,
                "wide": False, "split": 1}
    bits = pair_bits(m)                    # fp8 takes int8's tiles: the same bytes a weight
    if dense:
        tiles = _DENSE[bits]
    elif m.bits == 0 and T == 1 and not down:
        tiles = FP8_UP_T1_WIDE if width >= 4096 else FP8_UP_T1
    elif bits == 4 and T == 1 and not down and width < 4096:
        tiles = _NARROW_INT4_UP
    else:
        tiles = _TILES[(bits, min(T, 2))][1 if down else 0]
    cfg = dict(zip(_KEYS, tiles + (1,) * (len(_KEYS) - len(tiles))))
    cfg["BLOCK_K"] = max(m.group, min(cfg["BLOCK_K"], triton.next_power_of_2(K_in)))
    return cfg


def _tiles(config, key, base):
    given = (config or {}).get("pair", {})
    given = given.get("down", {}) if key == "down" else given
    return {k: given.get(k, base[k]) for k in base}


def _check(cfg: dict, m) -> None:
    bk, pw = cfg["BLOCK_K"], 32 // pair_bits(m)
    if bk & (bk - 1) or bk % (4 * pw) or (m.group and bk % m.group):
        raise ValueError(f"pair kernels: BLOCK_K {bk} must be a power of two, a multiple of {4 * pw} "
                         f"and of the scale group {m.group}")


def fused_moe_quant_pair(x, w13, w2, ids, topk_weights, expert_offset: int, config: dict | None = None,
                         pdl: bool = False) -> torch.Tensor:
    """The decode path of fused_moe_quant with these kernels (inputs checked there): x [T, D], w13 / w2
    int4, int8 or fp8 stacks [E, 2I, D] / [E, D, I], ids/topk_weights [T, K] -> [T, D] in x.dtype."""
    for w in (w13, w2):
        if not pair_supported(w):
            raise ValueError(f"the pair decode kernels read int4 and int8 codes and fp8 in whole words, not "
                             f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    h = gate_up_pair(x, w13, w2, ids, expert_offset, config, pdl)
    return down_pair(h, w2, ids, topk_weights, expert_offset, x.new_empty(x.shape), config, False)  # pdl.py


def gate_up_pair(x, w13, w2, ids, expert_offset: int, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """GEMM1 alone: h [T·K, IP] fp16 in GEMM2's paired order (IP: w2's padded width), times H_SCALE."""
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, ids.shape[1]
    cfg = _tiles(config, "gate_up", pair_config(w13, D, T=T, width=I))
    _check(cfg, w13)
    x_packed = bool(cfg["x_packed"])
    xin = pack_pairs(x, w13, pdl) if x_packed else x
    data, scale, zero, kw = _pointers(w13)
    h_pw = 32 // pair_bits(w2)
    ip = pair_words(w2).shape[2] * h_pw                 # GEMM2's padded reduction: h's width
    h = torch.empty(T * K, ip, dtype=torch.float16, device=x.device)                  # [T·K, IP] paired order
    _gate_up_pair_kernel[(T * K * triton.cdiv(ip, cfg["BLOCK_N"]),)](
        xin, data, scale, zero, h, ids, K, expert_offset, E, I, ip, D, kw,
        xin.stride(0), *_strides(w13), h.stride(0), **_layout(w13),
        H_PW=h_pw, X_PACKED=x_packed, ASM=on_gpu(), WIDE=bool(cfg["wide"]),
        EVEN=D % cfg["BLOCK_K"] == 0 and kw * (32 // pair_bits(w13)) == D,
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
    """The kernels' constexprs for a stack: fp8 is read as 8-bit fields of int32 words, FP8 marking them e4m3."""
    args = layout_args(m)
    del args["CODES"]
    if m.bits == 0:
        args.update(BITS=8, FP8=True)
    return args


def _pointers(m) -> tuple:
    """(int32 words [E, N, KW], scales, zero points (the scales when none: never read), KW)."""
    words = pair_words(m)
    scale = m.scale3
    return words, scale, m.zero3 if m.zero is not None else scale, words.shape[2]


def _strides(m) -> tuple:
    """(expert, row strides of the words; expert, row, group strides of the scales)."""
    words, scale = pair_words(m), m.scale3
    return words.stride(0), words.stride(1), scale.stride(0), scale.stride(1), scale.stride(2)


def _launch_down(h, packed, w, out, ids, weights, top_k, expert_offset, E, cfg, dense, pdl, in_unscale=1 / X_SCALE):
    T, D = out.shape
    data, scale, zero, kw = _pointers(w)
    I = w.K
    split = int(cfg["split"])
    blocks = T * triton.cdiv(D, cfg["BLOCK_N"])
    if split > 1:     # partials [SPLIT, T, D] fp32, then the counters [T·blocks] int32, zeroed: one memset
        ws = torch.zeros(split * T * D + blocks, dtype=torch.float32, device=out.device)
        ws, cnt = ws[:split * T * D], ws[split * T * D:].view(torch.int32)
    else:
        ws = cnt = out
    _down_pair_kernel[(blocks * split,)](
        h, data, scale, zero, out, ids, weights, ws, cnt, top_k, expert_offset, E, T, D, I, kw,
        h.stride(0), *_strides(w), out.stride(0), **_layout(w), X_PACKED=packed, DENSE=dense, ASM=on_gpu(),
        WIDE=bool(cfg["wide"]), IN_UNSCALE=float(in_unscale), SPLIT=split,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def quant_pair_2d(x: torch.Tensor, w, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """A dense int4 / int8 / fp8 layer at decode with these kernels: x [T, K] (contiguous) @ W[N, K]ᵀ -> [T, N] in
    x.dtype. Raises ValueError for another format or a bad BLOCK_K."""
    if not pair_supported(w):
        raise ValueError(f"the pair decode kernels read int4 and int8 codes and fp8 in whole words, not "
                             f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    T = x.shape[0]
    N = w.stack_shape[1]
    cfg = _tiles(config, "down", pair_config(w, w.K, down=True, T=T, dense=True))
    _check(cfg, w)
    out = x.new_empty(T, N)
    if T:
        packed = bool(cfg["x_packed"])
        xin = pack_pairs(x, w, pdl) if packed else x
        # DENSE: one "expert", one slot of weight 1; ids and routing weights are never read (x stands in)
        _launch_down(xin, packed, w, out, x, x, 1, 0, 1, cfg, True, pdl)
    return out
