"""MLA between its projections and attention: latent norm, rotary keys and queries, cache write, one kernel.

DeepSeek's multi-head latent attention (MLA) projects each token to
    q  [H, nope + rope]          (wq, or wq_b after the q LoRA)
    kv [r + rope]                (wkv_a: the latent c, r = kv_lora_rank = 512, then one shared k_pe)
and before attention it must: RMSNorm the latent c, rotate k_pe and every head's q_pe by the
token's position, and write [c, k_pe] (576 numbers) into the latent cache. In PyTorch that is about
twenty kernels per layer (a norm, two rotary chains of float casts, slices, multiplies, adds and a
cat, another cat for the cache row, an index_put), each moving a few kilobytes: at batch 1 they cost
more than the layer's attention weights take to stream. Here one program takes one token (b, s):

  latent[b, pos, :r]   = w * rmsnorm(kv[:r])          fp32 statistics, rounded as rmsnorm.py rounds
  latent[b, pos, r:]   = rotate(kv[r:], pos)          the one rotary key all heads share
  q_pe_out[b, s, h, :] = rotate(q[b, s, h, nope:], pos)   every head, [H, rope/2] tiles

`q_pe_out` may alias q's own rope columns (rotate in place, the prefill layout q = [q_nope, q_pe])
or point into a separate buffer (the absorbed decode writes it beside q_lat, so attention's query
[q_lat, q_pe] is assembled without a cat). Rotary pairs follow rope.py: interleaved (DeepSeek's
checkpoints: 2j, 2j+1) or "rotate half" (j, j + rope/2), cos/sin read from the full tables at the
token's position, which stays on the device (CUDA-graph safe, no host sync).

Roundings are the PyTorch twin's (minimoe/ops.py `mla_rope_cache_torch`): the norm as rms_norm_torch
(normalised in fp32, rounded, times the weight, rounded), rope in fp32 with x1·cos and x2·sin rounded
separately (no FMA), rounded once to the activations' dtype.
Reference: DeepSeek-V2, arXiv 2405.04434 §2.1 (MLA, decoupled rotary key); DeepSeek-V3
`inference/model.py` (the same steps in PyTorch); SGLang / vLLM fuse the same prologue.

At decode (`absorb`, up to ABSORB_MAX_T tokens) the same launch also absorbs the queries into the latent, in
programs after the tokens': program (head h, latent columns c) computes q_lat[t, h, c] = q_nope[t, h] @ W_uk[h][:, c]
for every token t, reading its [nope, BLOCK_C] tile of W_uk once (mla.py's absorbed form; a batched GEMM otherwise).

Shapes: B batch, S new tokens, H heads, nope the non-rotary query width, r latent rank, rope rotary width, P table
rows.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release


# Warps a program (one token); None: 4, or 8 past 4,096 query elements a token. A knob for scripts/bench_mla_prefill.py
# and step_probe (docs/results/2026-12-02-s25): with split pairs, DeepSeek-V2-Lite's 8,192-token prefill took 10.4 /
# 10.7 / 13.5 / 22.5 µs at 1 / 2 / 4 / 8 warps (call 3), but the bs-64 decode step was +0.25% / +0.09% at 1 / 2 (call
# 4), so 4 stays. The warps change the norm's summation order, so the bits. (Warps by token count: a small lead.)
WARPS: int | None = None
# Interleaved pairs (DeepSeek's 2j, 2j + 1) loaded and stored as whole contiguous rows and taken apart in registers
# (tl.reshape + tl.split, put back with tl.join). False: two stride-2 loads and two stride-2 stores a row, which
# made the kernel 75 µs a layer at DeepSeek-V2-Lite's 8,192-token prefill against 13.8 for the "rotate half" pairs'
# contiguous halves, the same bytes (s25 call 2). The same bits either way.
SPLIT_PAIRS = True
# Absorbed MLA's query absorption (`absorb`) inside this launch for at most this many tokens (0: always a torch.bmm
# after it), in programs of ABSORB_BLOCK_C latent columns of one head (DeepSeek: 512 / 64 = 8 a head, 16 KB of W_uk).
# DeepSeek-V2-Lite's graphed decode step against the bmm (docs/results/2026-12-03-s26, call 2): -4.82% at bs 1,
# -0.57% at bs 4; 32 / 128 columns a program +2.1% / +0.4% against 64.
ABSORB_MAX_T = 4
ABSORB_BLOCK_C = 64
ABSORB_W_EARLY = False   # with PDL: the W_uk tile loaded before the wait (a weight no kernel writes)


@triton.jit
def _rotate(x1, x2, cos, sin):
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def _absorb_q(q_ptr, wuk_ptr, ql_ptr, idx, S, stride_qb, stride_qs, stride_qh, stride_wh, stride_wk,
              stride_qlb, stride_qls, stride_qlh, T: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr,
              BLOCK_NOPE: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr, W_EARLY: tl.constexpr):
    """q_lat[t, h, chunk] = q_nope[t, h] @ W_uk[h][:, chunk] for all T tokens, chunk c: idx = h * (R / BLOCK_C) + c.
    W_uk [H, NOPE, R] (unit last stride) tile loaded once, fp32 sums, one rounding to q_lat's dtype. Waits for the
    predecessor itself: W_EARLY loads the tile first (a weight no kernel writes)."""
    nc = tl.cdiv(R, BLOCK_C)
    h = idx // nc
    offs_c = (idx % nc) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_NOPE)
    c_ok = offs_c < R
    k_ok = offs_k < NOPE
    w_ptrs = wuk_ptr + h * stride_wh + offs_k[:, None] * stride_wk + offs_c[None, :]
    if W_EARLY:
        w = tl.load(w_ptrs, mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        wait_then_release(PDL)
    else:
        wait_then_release(PDL)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & c_ok[None, :], other=0.0)          # [BLOCK_NOPE, BLOCK_C]
    w = w.to(tl.float32)
    for tt in tl.static_range(T):
        b = tt // S
        s = tt % S
        x = tl.load(q_ptr + b * stride_qb + s * stride_qs + h * stride_qh + offs_k, mask=k_ok,
                    other=0.0).to(tl.float32)
        acc = tl.sum(w * x[:, None], axis=0)
        tl.store(ql_ptr + b * stride_qlb + s * stride_qls + h * stride_qlh + offs_c,
                 acc.to(ql_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _mla_rope_cache_kernel(
    q_ptr, kv_ptr, pos_ptr, cos_ptr, sin_ptr, lat_ptr, w_ptr, qo_ptr,
    S, stride_qb, stride_qs, stride_qh, stride_kvb, stride_kvs, stride_pb, stride_ps,
    stride_cos, stride_sin, stride_lb, stride_ls, stride_ob, stride_os, stride_oh, eps,
    wuk_ptr, ql_ptr, stride_wh, stride_wk, stride_qlb, stride_qls, stride_qlh,
    H: tl.constexpr, NOPE: tl.constexpr, R: tl.constexpr, ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr,
    INTERLEAVE: tl.constexpr, SPLIT_PAIRS: tl.constexpr, PDL: tl.constexpr,
    ABSORB_T: tl.constexpr = 0, BLOCK_NOPE: tl.constexpr = 16, BLOCK_C: tl.constexpr = 16,
    W_EARLY: tl.constexpr = False,
):
    t = tl.program_id(0)
    if ABSORB_T > 0:
        if t >= ABSORB_T:          # programs past the tokens': q's absorption, (head, latent chunk) each
            _absorb_q(q_ptr, wuk_ptr, ql_ptr, t - ABSORB_T, S, stride_qb, stride_qs, stride_qh, stride_wh,
                      stride_wk, stride_qlb, stride_qls, stride_qlh, ABSORB_T, NOPE, R, BLOCK_NOPE, BLOCK_C,
                      PDL, W_EARLY)
            return
    wait_then_release(PDL)
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    pos = tl.load(pos_ptr + b * stride_pb + s * stride_ps).to(tl.int64)
    OUT_T: tl.constexpr = lat_ptr.dtype.element_ty
    kv_row = kv_ptr + b * stride_kvb + s * stride_kvs
    lat_row = lat_ptr + b * stride_lb + pos * stride_ls

    # the latent: RMSNorm over r channels
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    x = tl.load(kv_row + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / R + eps)
    y = (x * inv_rms).to(kv_ptr.dtype.element_ty).to(tl.float32)  # rounded before the weight
    w = tl.load(w_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    tl.store(lat_row + offs_r, (w * y).to(kv_ptr.dtype.element_ty).to(OUT_T), mask=r_ok)

    # the rotary pairs of this position
    j = tl.arange(0, BLOCK_HALF)
    j_ok = j < ROPE // 2
    cos = tl.load(cos_ptr + pos * stride_cos + j, mask=j_ok, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_sin + j, mask=j_ok, other=0.0)
    heads = tl.arange(0, BLOCK_H)
    q_row = q_ptr + b * stride_qb + s * stride_qs + heads[:, None] * stride_qh + NOPE
    o_row = qo_ptr + b * stride_ob + s * stride_os + heads[:, None] * stride_oh
    if INTERLEAVE and SPLIT_PAIRS:
        # pairs (2j, 2j + 1): whole contiguous rows in and out, the pairs taken apart in registers
        cols = tl.arange(0, 2 * BLOCK_HALF)
        c_ok = cols < ROPE
        kk = tl.load(kv_row + R + cols, mask=c_ok, other=0.0).to(tl.float32)
        k1, k2 = tl.split(tl.reshape(kk, [BLOCK_HALF, 2]))
        o1, o2 = _rotate(k1, k2, cos, sin)
        ko = tl.reshape(tl.join(o1, o2), [2 * BLOCK_HALF])
        tl.store(lat_row + R + cols, ko.to(kv_ptr.dtype.element_ty).to(OUT_T), mask=c_ok)
        mask = (heads < H)[:, None] & c_ok[None, :]
        qq = tl.load(q_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        q1, q2 = tl.split(tl.reshape(qq, [BLOCK_H, BLOCK_HALF, 2]))
        p1, p2 = _rotate(q1, q2, cos[None, :], sin[None, :])
        qo = tl.reshape(tl.join(p1, p2), [BLOCK_H, 2 * BLOCK_HALF])
        tl.store(o_row + cols[None, :], qo.to(qo_ptr.dtype.element_ty), mask=mask)
    else:
        # "rotate half" (j, j + rope/2): two contiguous half rows; or interleaved pairs read as two strided halves
        if INTERLEAVE:
            c1 = 2 * j
            c2 = 2 * j + 1
        else:
            c1 = j
            c2 = j + ROPE // 2
        # the shared rotary key
        k1 = tl.load(kv_row + R + c1, mask=j_ok, other=0.0).to(tl.float32)
        k2 = tl.load(kv_row + R + c2, mask=j_ok, other=0.0).to(tl.float32)
        o1, o2 = _rotate(k1, k2, cos, sin)
        tl.store(lat_row + R + c1, o1.to(kv_ptr.dtype.element_ty).to(OUT_T), mask=j_ok)
        tl.store(lat_row + R + c2, o2.to(kv_ptr.dtype.element_ty).to(OUT_T), mask=j_ok)
        # every head's rotary query
        mask = (heads < H)[:, None] & j_ok[None, :]
        q1 = tl.load(q_row + c1[None, :], mask=mask, other=0.0).to(tl.float32)
        q2 = tl.load(q_row + c2[None, :], mask=mask, other=0.0).to(tl.float32)
        p1, p2 = _rotate(q1, q2, cos[None, :], sin[None, :])
        tl.store(o_row + c1[None, :], p1.to(qo_ptr.dtype.element_ty), mask=mask)
        tl.store(o_row + c2[None, :], p2.to(qo_ptr.dtype.element_ty), mask=mask)


def mla_rope_cache(q, kv, positions, cos, sin, latent, norm_weight, eps: float, *, nope: int,
                   interleave: bool, q_pe_out, absorb=None, pdl: bool = False) -> None:
    """Writes latent[b, positions[b, s]] = [rmsnorm(kv[..., :r]) * w, rope(kv[..., r:])] and
    q_pe_out = rope(q[..., nope:]); returns nothing.

    q [B, S, H, nope + rope] and kv [B, S, r + rope] in the activations' dtype (unit stride on the
    last dim; heads of q contiguous rows of nope + rope); positions [B, S] int64 on the device;
    cos, sin [P, rope/2] float32 tables; latent [B, S_max, r + rope] (unit last stride);
    norm_weight [r]; q_pe_out [B, S, H, rope] (unit last stride; may alias q[..., nope:]).
    absorb (W_uk [H, nope, r], q_lat [B, S, H, r], unit last strides): also q_lat = q_nope @ W_uk per head
    (absorbed MLA's query), in the same launch for at most ABSORB_MAX_T tokens (extra programs, one per head and
    BLOCK_C latent columns), else a torch.bmm after it.
    Raises AssertionError on shape or layout mismatches.
    """
    B, S, H, qd = q.shape
    rope = qd - nope
    r = latent.shape[-1] - rope
    assert rope % 2 == 0 and rope > 0 and r > 0, (q.shape, nope, latent.shape)
    assert kv.shape == (B, S, r + rope) and q_pe_out.shape == (B, S, H, rope), (kv.shape, q_pe_out.shape)
    assert q.stride(-1) == kv.stride(-1) == latent.stride(-1) == q_pe_out.stride(-1) == 1
    assert q.stride(2) == qd or H == 1, "q heads must be contiguous rows"
    assert latent.shape[0] == B and positions.shape == (B, S) and norm_weight.numel() == r
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape[-1] == rope // 2
    assert cos.stride(-1) == sin.stride(-1) == 1 and norm_weight.is_contiguous()
    if B * S == 0:
        return
    fused = absorb is not None and B * S <= ABSORB_MAX_T
    if absorb is not None:
        w_uk, q_lat = absorb
        rl = r                           # the kernel's absorb programs cover the cache's latent width
        assert w_uk.shape == (H, nope, r) and q_lat.shape == (B, S, H, r), (w_uk.shape, q_lat.shape)
        assert w_uk.stride(-1) == q_lat.stride(-1) == 1 and w_uk.dtype == q_lat.dtype == q.dtype
    else:
        w_uk = q_lat = q                                                    # never read
        rl = 16
    extra = H * triton.cdiv(rl, ABSORB_BLOCK_C) if fused else 0
    block_h, block_half = triton.next_power_of_2(H), triton.next_power_of_2(rope // 2)
    _mla_rope_cache_kernel[(B * S + extra,)](
        q, kv, positions, cos, sin, latent, norm_weight, q_pe_out,
        S, q.stride(0), q.stride(1), q.stride(2), kv.stride(0), kv.stride(1),
        positions.stride(0), positions.stride(1), cos.stride(0), sin.stride(0),
        latent.stride(0), latent.stride(1), q_pe_out.stride(0), q_pe_out.stride(1), q_pe_out.stride(2), eps,
        w_uk, q_lat, w_uk.stride(0), w_uk.stride(1) if fused else 0, q_lat.stride(0), q_lat.stride(1),
        q_lat.stride(2), ABSORB_T=B * S if fused else 0, BLOCK_NOPE=triton.next_power_of_2(nope),
        BLOCK_C=min(ABSORB_BLOCK_C, triton.next_power_of_2(rl)), W_EARLY=bool(ABSORB_W_EARLY and pdl),
        H=H, NOPE=nope, R=r, ROPE=rope, BLOCK_H=block_h, BLOCK_R=triton.next_power_of_2(r),
        BLOCK_HALF=block_half, INTERLEAVE=interleave, SPLIT_PAIRS=SPLIT_PAIRS,
        num_warps=WARPS or (4 if block_h * block_half <= 4096 else 8),
        enable_fp_fusion=False,  # torch rounds x1·cos and x2·sin separately (see rope.py)
        **launch_args(pdl),
    )
    if absorb is not None and not fused:     # q_nope [H, T, nope] @ W_uk [H, nope, r] -> q_lat's [H, T, r] view
        T = B * S
        torch.bmm(q[..., :nope].reshape(T, H, nope).transpose(0, 1), w_uk,
                  out=q_lat.view(T, H, -1).transpose(0, 1))
