"""From the fused q/k/v projection to attention-ready q and a written KV cache, in one kernel.

Between the qkv GEMM and attention, PyTorch runs a chain of small kernels per token: split, the
optional q/k RMSNorm (~8 each), rotary embedding (~9 each for q and k: float, two slices, four
multiplies, two adds, cat, cast) and two scatter writes into the cache. At decode they move a few
kilobytes each and cost a launch apiece. Here one launch does everything on the way through; a token's q heads
are spread over Q_PROGRAMS programs (one where a "full" q norm needs every head) and one more takes its k and v
(each issues all of its loads before its first store, so the kernel's time is about one L2 round trip, not one per
q / k / v turn); heads sit in registers as [heads, d/2] tiles:

  q, k, v = split(qkv)                       columns: H heads of q, then Hkv of k, then Hkv of v
  q, k    = RMSNorm over the whole q / k     "full" (OLMoE), weights [H·d] / [Hkv·d]
  q, k, v = clamp(., -clip, clip)            OLMoE's optional clip_qkv
  q, k    = RMSNorm over each head           "head" (Qwen3), weights [d]
  q, k    = rotate(q, k, position)           rotary embedding, fp32 maths
  k_cache[b, position], v_cache[b, position] = k, v;   q is returned [B, S, H, d]

Rotary embedding turns each channel pair (x1, x2) by the angle of its frequency times the position:
(x1·cos − x2·sin, x2·cos + x1·sin). Which channels pair up is the only difference between layouts:
"rotate half" (NeoX, most families) pairs j with j + d/2, interleaved (DeepSeek) pairs 2j with 2j+1.
So the kernel loads each head as two [heads, d/2] tiles, x1 and x2, at column offsets c1 and c2
chosen by the layout, and the rest of the code never knows which layout it runs. Norm sums simply
add the two halves.

Roundings follow the PyTorch twin `minimoe.ops.qkv_rope_cache_torch`: each norm's output is rounded to the
activation dtype, multiplied by its weight in fp32 and rounded again; rope reads those rounded
values, rotates in fp32 and rounds once. No host syncs (positions stay on the device), so the
kernel can be captured in a CUDA graph.
Reference: Su et al., "RoFormer" (2021); OLMoE and Qwen3 model cards for the q/k norms.

Shapes: B batch, S new tokens per sequence, H / Hkv query / kv heads, d head dim, P table rows.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

QK_NORMS = {None: 0, "full": 1, "head": 2}  # -> the QK_NORM constexpr
# Programs a token's q heads are spread over (_qkv_rope_cache_split_kernel, plus one for k and v; at least 1). A "full"
# q norm sums over every head, so it keeps one q program. In the graphed step
# (docs/results/2026-12-04-s32, call 2; medians of 3, the baseline repeated within 0.08%) against the one-program
# kernel: OLMoE bs 1 -1.46% (its full norm: one q program, so 1, 4 and 8 are the same launch), Qwen3-30B-A3B bs 1
# -0.73% (1), -2.04% (4), -2.50% (8); bs 64 with 8: OLMoE -0.29%, Qwen3-30B-A3B -0.65%, Qwen1.5-MoE -0.11% (the
# one-program kernel is gone); 16 and 32 programs +0.97% on Qwen3-30B-A3B (call 3).
Q_PROGRAMS = 8
SPLIT_WARPS: int | None = None   # the split kernel's warps (None: 4, or 8 for a q tile over 2,048 elements)
# A "full" q norm over Q_PROGRAMS programs too, each summing Σ q² over the whole q row itself (OLMoE: 4 KB from L2
# beside its own heads), in the one-q-program launch's [H, d/2] tile order (the same bits). In the graphed OLMoE step
# (docs/results/2026-12-04-s32, call 7) a tie at bs 1 (-0.26 / -0.21% with the baseline repeated at -0.20%) and
# +0.14 / +0.17% at bs 64: off (the whole-row sum sits before each program's own loads are used).
FULL_SPLIT = False
# L2 eviction priority of the k / v cache stores ("" default; "evict_last"): a step-probe knob, with
# decode_attention.KV_EVICT (which explains it and gives the measurement: ties, off).
KV_EVICT = ""


@triton.jit
def _inv_rms_all(sq, N_HEADS: tl.constexpr, D: tl.constexpr, eps):
    """1 / rms over a [heads, d/2] tile of squared pairs holding every head (OLMoE's "full" q/k norm)."""
    return tl.rsqrt(tl.sum(tl.sum(sq, axis=1), axis=0) / (N_HEADS * D) + eps)


@triton.jit
def _rms_norm_pairs(x1, x2, w_ptr, heads, c1, c2, mask, eps, N_HEADS: tl.constexpr,
                    D: tl.constexpr, PER_HEAD: tl.constexpr, OUT_T: tl.constexpr, inv_full, USE_INV: tl.constexpr):
    """RMSNorm of [heads, d/2] halves, per head (weights [d]) or over all heads (weights [H·d]; with USE_INV the
    caller's 1 / rms over every head, inv_full, where the tile holds only some of them)."""
    sq = x1 * x1 + x2 * x2
    if PER_HEAD:
        inv_rms = tl.rsqrt(tl.sum(sq, axis=1) / D + eps)[:, None]
        w1 = tl.load(w_ptr + c1[None, :], mask=mask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + c2[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        if USE_INV:
            inv_rms = inv_full
        else:
            inv_rms = _inv_rms_all(sq, N_HEADS, D, eps)
        w1 = tl.load(w_ptr + heads[:, None] * D + c1[None, :], mask=mask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + heads[:, None] * D + c2[None, :], mask=mask, other=0.0).to(tl.float32)
    y1 = (x1 * inv_rms).to(OUT_T).to(tl.float32)  # rounded before the weight, as torch does
    y2 = (x2 * inv_rms).to(OUT_T).to(tl.float32)
    return (w1 * y1).to(OUT_T).to(tl.float32), (w2 * y2).to(OUT_T).to(tl.float32)


@triton.jit
def _norm_rope_heads(row_ptr, w_ptr, c1, c2, j_ok, cos, sin, eps, clip,
                     N_HEADS: tl.constexpr, BLOCK_HEADS: tl.constexpr, D: tl.constexpr,
                     QK_NORM: tl.constexpr, CLIP: tl.constexpr, h0, h_end, inv_full, USE_INV: tl.constexpr):
    """Load heads [h0, h_end) of the N_HEADS starting at row_ptr, norm / clip / rotate them -> (o1, o2, heads, mask).

    A "full" norm sums over every head: it needs h0 = 0 and h_end = N_HEADS, or USE_INV with the caller's 1 / rms over
    every head in inv_full (the host sees to it)."""
    OUT_T: tl.constexpr = row_ptr.dtype.element_ty
    heads = h0 + tl.arange(0, BLOCK_HEADS)
    mask = (heads < h_end)[:, None] & j_ok[None, :]  # [heads, d/2], both padded to powers of two
    x1 = tl.load(row_ptr + heads[:, None] * D + c1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(row_ptr + heads[:, None] * D + c2[None, :], mask=mask, other=0.0).to(tl.float32)
    if QK_NORM == 1:
        x1, x2 = _rms_norm_pairs(x1, x2, w_ptr, heads, c1, c2, mask, eps, N_HEADS, D, False, OUT_T, inv_full, USE_INV)
    if CLIP:
        # rounded as torch's clamp of a half tensor rounds a bound like 0.3; other values are exact
        x1 = tl.clamp(x1, -clip, clip).to(OUT_T).to(tl.float32)
        x2 = tl.clamp(x2, -clip, clip).to(OUT_T).to(tl.float32)
    if QK_NORM == 2:
        x1, x2 = _rms_norm_pairs(x1, x2, w_ptr, heads, c1, c2, mask, eps, N_HEADS, D, True, OUT_T, 0.0, False)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    return o1.to(OUT_T), o2.to(OUT_T), heads, mask


@triton.jit
def _qkv_rope_cache_split_kernel(
    qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr,
    S, stride_xb, stride_xs, stride_pb, stride_ps, stride_cos, stride_sin,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, eps, clip,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, QG: tl.constexpr, BLOCK_QG: tl.constexpr,
    BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr, QK_NORM: tl.constexpr,
    CLIP: tl.constexpr, INTERLEAVE: tl.constexpr, PDL: tl.constexpr, BLOCK_H: tl.constexpr = 1,
    FULL_INV: tl.constexpr = False, ROWS: tl.constexpr = False, KV_EVICT: tl.constexpr = "",
):
    """Grid [B·S, P + 1] (P = cdiv(H, QG) q programs): program (t, g < P) takes token t's q heads [g·QG, g·QG + QG),
    program (t, P) its k and v; each issues all of its loads before its first store. (The kernel this replaced, one
    program doing q, then k, then v, waited an L2 round trip per store -> load turn, since the compiler may not move
    a load above a store it cannot prove disjoint, and ran 32 heads' work in one program: 3.2 µs against 1.7 a
    Qwen3-30B-A3B layer, docs/results/2026-12-04-s32.)"""
    wait_then_release(PDL)
    t = tl.program_id(0)
    g = tl.program_id(1)
    b = (t // S).to(tl.int64)  # int64: b * stride_kb overflows int32 for a large cache slice
    s = (t % S).to(tl.int64)
    pos = tl.load(pos_ptr + b * stride_pb + s * stride_ps).to(tl.int64)
    row = qkv_ptr + b * stride_xb + s * stride_xs

    j = tl.arange(0, BLOCK_HALF)
    j_ok = j < D // 2
    if INTERLEAVE:  # DeepSeek: channel pairs (2j, 2j+1)
        c1 = 2 * j
        c2 = 2 * j + 1
    else:  # NeoX "rotate half": channel pairs (j, j + d/2)
        c1 = j
        c2 = j + D // 2
    if ROWS:  # this step's rows, in token order: no wait on the position before these loads
        cos = tl.load(cos_ptr + t.to(tl.int64) * stride_cos + j, mask=j_ok, other=0.0)
        sin = tl.load(sin_ptr + t.to(tl.int64) * stride_sin + j, mask=j_ok, other=0.0)
    else:
        cos = tl.load(cos_ptr + pos * stride_cos + j, mask=j_ok, other=0.0)
        sin = tl.load(sin_ptr + pos * stride_sin + j, mask=j_ok, other=0.0)

    if g * QG < H:
        inv_q = 0.0
        if FULL_INV:  # a "full" q norm over several q programs: each sums Σ q² over the whole q row itself
            ha = tl.arange(0, BLOCK_H)
            ma = (ha < H)[:, None] & j_ok[None, :]
            a1 = tl.load(row + ha[:, None] * D + c1[None, :], mask=ma, other=0.0).to(tl.float32)
            a2 = tl.load(row + ha[:, None] * D + c2[None, :], mask=ma, other=0.0).to(tl.float32)
            inv_q = _inv_rms_all(a1 * a1 + a2 * a2, H, D, eps)
        q1, q2, hq, mq = _norm_rope_heads(row, qw_ptr, c1, c2, j_ok, cos, sin, eps, clip, H, BLOCK_QG, D,
                                          QK_NORM, CLIP, g * QG, tl.minimum(g * QG + QG, H), inv_q, FULL_INV)
        q_row = q_ptr + t.to(tl.int64) * (H * D) + hq[:, None] * D
        tl.store(q_row + c1[None, :], q1, mask=mq)
        tl.store(q_row + c2[None, :], q2, mask=mq)
    else:
        k1, k2, hk, mk = _norm_rope_heads(row + H * D, kw_ptr, c1, c2, j_ok, cos, sin, eps, clip,
                                          HKV, BLOCK_HKV, D, QK_NORM, CLIP, 0, HKV, 0.0, False)
        v_src = row + (H + HKV) * D + hk[:, None] * D
        v1 = tl.load(v_src + c1[None, :], mask=mk, other=0.0)   # before the k stores: one round trip
        v2 = tl.load(v_src + c2[None, :], mask=mk, other=0.0)
        k_row = k_ptr + b * stride_kb + pos * stride_ks + hk[:, None] * stride_kh
        tl.store(k_row + c1[None, :], k1.to(k_ptr.dtype.element_ty), mask=mk, eviction_policy=KV_EVICT)
        tl.store(k_row + c2[None, :], k2.to(k_ptr.dtype.element_ty), mask=mk, eviction_policy=KV_EVICT)
        if CLIP:  # clamp in fp32, round once on the store: torch's clamp of a half tensor does the same
            v1 = tl.clamp(v1.to(tl.float32), -clip, clip)
            v2 = tl.clamp(v2.to(tl.float32), -clip, clip)
        v_row = v_ptr + b * stride_vb + pos * stride_vs + hk[:, None] * stride_vh
        tl.store(v_row + c1[None, :], v1.to(v_ptr.dtype.element_ty), mask=mk, eviction_policy=KV_EVICT)
        tl.store(v_row + c2[None, :], v2.to(v_ptr.dtype.element_ty), mask=mk, eviction_policy=KV_EVICT)


def qkv_rope_cache(qkv, positions, cos, sin, k_cache, v_cache, n_heads: int, n_kv_heads: int,
                   head_dim: int, *, qk_norm: str | None = None, q_norm_w=None, k_norm_w=None,
                   eps: float = 1e-6, interleave: bool = False,
                   clip_qkv: float | None = None, rows: bool = False, pdl: bool = False) -> torch.Tensor:
    """qkv [B, S, (H + 2·Hkv)·d] -> q [B, S, H, d] (normed, rotated); writes k and v into the caches.

    positions [B, S] int64 on the device; cos, sin [P, d/2] float32 tables read at the positions, or with `rows`
    this step's rows [B·S, d/2] in token order (minimoe.rope.STEP_ROWS: the kernel then loads them without
    waiting for the position); k_cache, v_cache [B, S_max, Hkv, d] views (any strides, unit stride on d). qk_norm
    None | "full" | "head" with weights [H·d] / [Hkv·d] or [d]. clip_qkv: OLMoE's clamp, applied after a "full" norm.
    """
    B, S, width = qkv.shape
    H, Hkv, d = n_heads, n_kv_heads, head_dim
    assert width == (H + 2 * Hkv) * d and d % 2 == 0, (qkv.shape, H, Hkv, d)
    assert qkv.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert k_cache.shape[0] == v_cache.shape[0] == B and k_cache.shape[2:] == (Hkv, d)
    assert positions.shape == (B, S) and cos.shape[-1] == d // 2 and sin.shape[-1] == d // 2
    assert cos.dtype == sin.dtype == torch.float32 and cos.stride(-1) == sin.stride(-1) == 1
    assert not rows or cos.shape == sin.shape == (B * S, d // 2), (cos.shape, B, S)
    assert qk_norm in QK_NORMS, f"qk_norm must be one of {list(QK_NORMS)}, not {qk_norm!r}"
    if qk_norm is not None:
        want = (H * d, Hkv * d) if qk_norm == "full" else (d, d)
        assert (q_norm_w.numel(), k_norm_w.numel()) == want, (q_norm_w.shape, k_norm_w.shape)
        assert q_norm_w.is_contiguous() and k_norm_w.is_contiguous()
    q = torch.empty(B, S, H, d, dtype=qkv.dtype, device=qkv.device)
    if B * S == 0:
        return q
    block_h, block_hkv, block_half = (triton.next_power_of_2(n) for n in (H, Hkv, d // 2))
    args = (qkv, positions, cos, sin, q, k_cache, v_cache,
            q_norm_w if qk_norm else qkv, k_norm_w if qk_norm else qkv,  # unread without a norm
            S, qkv.stride(0), qkv.stride(1), positions.stride(0), positions.stride(1),
            cos.stride(0), sin.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            eps, 0.0 if clip_qkv is None else float(clip_qkv))
    # no fused multiply-add: torch rounds x1·cos and x2·sin separately (one kernel each), and
    # a fused x1·cos − x2·sin would differ in the last fp32 bit and flip a few bf16 roundings
    common = dict(H=H, HKV=Hkv, D=d, BLOCK_HKV=block_hkv, BLOCK_HALF=block_half, QK_NORM=QK_NORMS[qk_norm],
                  CLIP=clip_qkv is not None, INTERLEAVE=interleave, enable_fp_fusion=False, **launch_args(pdl))
    q_progs = 1 if qk_norm == "full" and not FULL_SPLIT else max(1, min(Q_PROGRAMS, H))
    qg = triton.cdiv(H, q_progs)
    q_progs = triton.cdiv(H, qg)                      # every q program holds at least one head
    block_qg = triton.next_power_of_2(qg)
    full_inv = qk_norm == "full" and q_progs > 1
    warps = SPLIT_WARPS or (4 if block_qg * block_half <= 2048 else 8)   # q tile: 2 x [QG, d/2] fp32
    _qkv_rope_cache_split_kernel[(B * S, q_progs + 1)](*args, QG=qg, BLOCK_QG=block_qg, BLOCK_H=block_h,
                                                        FULL_INV=full_inv, ROWS=rows, KV_EVICT=KV_EVICT, **common,
                                                        num_warps=warps)
    return q
