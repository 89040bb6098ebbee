"""The q/k norm, rotary embedding and this step's KV-cache write as the decode attention's prologue (`--attn-rope`).

At decode a layer's attention side runs, per one-token step,

    qkv = x Wqkvᵀ (+ b)                                   the q/k/v GEMV
    q, k, v = split(qkv); q, k = norm(q, k); rope(q, k)  kernels/rope.py: one small kernel; k, v into the cache
    out = attention(q, cache)                              kernels/decode_attention.py: split programs (+ a merge)

and the middle kernel moves a few kilobytes between two larger ones. Here the split attention kernel reads the raw
q/k/v row instead (`attend_with_rope`): every program issues its first K / V tile's loads, then normalises and
rotates the q heads it attends with, in registers, while they are in flight; the one program a (sequence, kv head)
whose rows hold the new position also makes that head's k and v, stores them into the cache for the next steps and
uses them from registers for this one (no barrier: no other program reads that row this step). One launch a layer
fewer; the same maths as kernels/rope.py, but the RMS sums reduce in another order (and the compiler may fuse the
rotation's multiply-add), so the results may differ from the unfused path in the last bit of an element (tested to
that).

Rotation without splitting a head into halves: out[c] = x[c]·cos[j(c)] + sign(c)·x[p(c)]·sin[j(c)] with the partner
channel p(c) = (c + d/2) mod d, j = c mod d/2 and sign -1 below d/2 ("rotate half", NeoX), or p(c) = c xor 1, j = c // 2
and sign -1 on even c (interleaved, DeepSeek). Each head is loaded twice, at c and at p(c), both from L2.
Families: plain (Mixtral, Qwen1.5/2-MoE), q/k RMSNorm over the whole projection (OLMoE, "full", with its optional
clip) or per head (Qwen3, "head"). Not MLA (its rope and latent cache are kernels/mla_rope.py's).
Peers: TensorRT-LLM's masked multi-head attention kernel applies rope and writes the KV cache inside its decoding
attention, FlashInfer's decode kernels rotate q and k on the fly (pos_encoding_mode "ROPE_LLAMA"); vLLM and SGLang
keep a separate rotary kernel.

Shapes: B batch, H / Hkv query / kv heads, d head dim (a power of two, >= 16), P rotary table rows.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .online_softmax import online_softmax_step

QK_NORMS = {None: 0, "full": 1, "head": 2}  # -> the QK_NORM constexpr (kernels/rope.py's numbering)


class RopeIn(NamedTuple):
    """What the prologue needs besides the raw q/k/v row. positions [B, 1] int64 (device); cos, sin [P, d/2] fp32
    (unit last stride); qk_norm None | "full" | "head" with weights [H·d] / [Hkv·d] or [d] (contiguous); clip: OLMoE's
    clip_qkv or None."""
    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    qk_norm: str | None = None
    q_norm_w: torch.Tensor | None = None
    k_norm_w: torch.Tensor | None = None
    eps: float = 1e-6
    interleave: bool = False
    clip: float | None = None


@triton.jit
def channel_pairs(D: tl.constexpr, INTERLEAVE: tl.constexpr):
    """(c, p(c), sign(c), j(c)) over the head's D channels: see the module docstring."""
    cols = tl.arange(0, D)
    if INTERLEAVE:
        partner = cols ^ 1
        sign = tl.where(cols % 2 == 0, -1.0, 1.0)
        j = cols // 2
    else:
        partner = (cols + D // 2) % D
        sign = tl.where(cols < D // 2, -1.0, 1.0)
        j = cols % (D // 2)
    return cols, partner, sign, j


@triton.jit
def _rounded(x, inv_rms, w, OUT_T: tl.constexpr):
    """torch's RMSNorm roundings: x / rms to the activation dtype, times the weight in fp32, rounded again."""
    return (w * (x * inv_rms).to(OUT_T).to(tl.float32)).to(OUT_T).to(tl.float32)


@triton.jit
def norm_rope_rows(base, heads, ok, w_ptr, cols, partner, sign, cos, sin, eps, clip,
                   N_ALL: tl.constexpr, BLOCK_ALL: tl.constexpr, D: tl.constexpr,
                   QK_NORM: tl.constexpr, CLIP: tl.constexpr):
    """Rows `heads` [R] (mask ok [R]) of one token's q (or k) block at `base` (head h at base + h·D), normed,
    clipped and rotated -> [R, D] fp32 (round to the cache dtype at the caller). N_ALL heads in the block ("full"
    norm sums all of them; BLOCK_ALL its power-of-two cover)."""
    OUT_T: tl.constexpr = base.dtype.element_ty
    m = ok[:, None]
    x = tl.load(base + heads[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    xp = tl.load(base + heads[:, None] * D + partner[None, :], mask=m, other=0.0).to(tl.float32)
    if QK_NORM == 1:  # over the whole projection: every head of the token, once per program (L2 reads)
        every = tl.arange(0, BLOCK_ALL)
        xa = tl.load(base + every[:, None] * D + cols[None, :], mask=(every < N_ALL)[:, None], other=0.0)
        xa = xa.to(tl.float32)
        inv_rms = tl.rsqrt(tl.sum(tl.sum(xa * xa, axis=1), axis=0) / (N_ALL * D) + eps)
        w = tl.load(w_ptr + heads[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
        wp = tl.load(w_ptr + heads[:, None] * D + partner[None, :], mask=m, other=0.0).to(tl.float32)
        x = _rounded(x, inv_rms, w, OUT_T)
        xp = _rounded(xp, inv_rms, wp, OUT_T)
    if CLIP:
        x = tl.clamp(x, -clip, clip).to(OUT_T).to(tl.float32)
        xp = tl.clamp(xp, -clip, clip).to(OUT_T).to(tl.float32)
    if QK_NORM == 2:  # per head: the pair load holds the same channels, so one sum serves both
        inv_rms = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]
        w = tl.load(w_ptr + cols).to(tl.float32)[None, :]
        wp = tl.load(w_ptr + partner).to(tl.float32)[None, :]
        x = _rounded(x, inv_rms, w, OUT_T)
        xp = _rounded(xp, inv_rms, wp, OUT_T)
    return x * cos[None, :] + (sign[None, :] * xp) * sin[None, :]


@triton.jit
def new_kv(row, kv_head, kw_ptr, cols, partner, sign, cos, sin, eps, clip, OUT_T: tl.constexpr,
           H: tl.constexpr, HKV: tl.constexpr, BLOCK_HKV: tl.constexpr, D: tl.constexpr,
           QK_NORM: tl.constexpr, CLIP: tl.constexpr):
    """Head kv_head of the token's k (normed, rotated) and v (clipped) from its q/k/v row `row` -> two [D] in OUT_T."""
    one = tl.arange(0, 2)  # a two-row tile (tl.arange needs a power of two), the second row masked
    k = norm_rope_rows(row + H * D, kv_head + one, one < 1, kw_ptr, cols, partner, sign, cos, sin, eps, clip,
                       HKV, BLOCK_HKV, D, QK_NORM, CLIP)
    k = tl.sum(tl.where(one[:, None] < 1, k, 0.0), axis=0)  # row 0 (exact: adds zeros)
    v = tl.load(row + (H + HKV + kv_head) * D + cols)
    if CLIP:  # clamp in fp32, round once (kernels/rope.py's _copy_v)
        v = tl.clamp(v.to(tl.float32), -clip, clip)
    return k.to(OUT_T), v.to(OUT_T)


@triton.jit
def _tile(q, k, v, offs_n, n_ok, pos, k_new, v_new, limit, qk_scale, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold one K / V tile into the online softmax, the new position's row taken from registers (k_new, v_new)."""
    new = (offs_n == pos)[:, None]
    k = tl.where(new, k_new[None, :], k)
    v = tl.where(new, v_new[None, :], v)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_H, N]
    valid = n_ok[None, :] & (offs_n[None, :] < limit[:, None])
    qk = tl.where(valid, qk * qk_scale, float("-inf"))
    return online_softmax_step(qk, v, m_i, l_i, acc, PRECISION)


@triton.jit
def attend_with_rope(tok, heads, row_ok, k_base, v_base, stride_ks, stride_vs, start, end, limit, qk_scale,
                     pos_ptr, cos_ptr, sin_ptr, stride_cos, stride_sin, qw_ptr, kw_ptr, eps, clip, kv_head,
                     H: tl.constexpr, BLOCK_H_ALL: tl.constexpr, HKV: tl.constexpr, BLOCK_HKV_ALL: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr,
                     CLIP: tl.constexpr, INTERLEAVE: tl.constexpr, PRECISION: tl.constexpr):
    """The split program's whole attention over cache rows [start, end) of one (sequence, kv head) with the prologue:
    tok points at the token's raw q/k/v row (q heads first), heads / row_ok [BLOCK_H] its query heads, limit
    [BLOCK_H] the causal bound -> the online softmax's (max, sum, unnormalised output [BLOCK_H, D]).

    The first tile's loads are issued before the prologue's, so their latency hides behind its loads and arithmetic
    (a prologue in front of them measured +1.2-2.3% a step, docs/results/2026-12-03-s29 call 2). The program whose
    rows hold the new position uses that row from registers and stores it for the next steps: no barrier."""
    cache_t: tl.constexpr = k_base.dtype.element_ty
    cols = tl.arange(0, D)
    offs_n = start + tl.arange(0, BLOCK_N)
    n_ok = offs_n < end
    k0 = tl.load(k_base + offs_n[:, None] * stride_ks + cols[None, :], mask=n_ok[:, None], other=0.0)
    v0 = tl.load(v_base + offs_n[:, None] * stride_vs + cols[None, :], mask=n_ok[:, None], other=0.0)
    pos = tl.load(pos_ptr)
    cols, partner, sign, j = channel_pairs(D, INTERLEAVE)
    cos = tl.load(cos_ptr + pos * stride_cos + j)
    sin = tl.load(sin_ptr + pos * stride_sin + j)
    q = norm_rope_rows(tok, heads, row_ok, qw_ptr, cols, partner, sign, cos, sin, eps, clip,
                       H, BLOCK_H_ALL, D, QK_NORM, CLIP).to(cache_t)
    if (pos >= start) & (pos < end):  # this program's rows hold the new position: make it, and keep it
        k_new, v_new = new_kv(tok, kv_head, kw_ptr, cols, partner, sign, cos, sin, eps, clip, cache_t,
                              H, HKV, BLOCK_HKV_ALL, D, QK_NORM, CLIP)
        tl.store(k_base + pos * stride_ks + cols, k_new)
        tl.store(v_base + pos * stride_vs + cols, v_new)
    else:
        k_new = tl.zeros([D], cache_t)
        v_new = tl.zeros([D], cache_t)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    m_i, l_i, acc = _tile(q, k0, v0, offs_n, n_ok, pos, k_new, v_new, limit, qk_scale, m_i, l_i, acc, PRECISION)
    for n0 in range(start + BLOCK_N, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        k = tl.load(k_base + offs_n[:, None] * stride_ks + cols[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vs + cols[None, :], mask=n_ok[:, None], other=0.0)
        m_i, l_i, acc = _tile(q, k, v, offs_n, n_ok, pos, k_new, v_new, limit, qk_scale, m_i, l_i, acc, PRECISION)
    return m_i, l_i, acc


def kernel_args(rope: RopeIn | None, q4: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_dk: int, block_dr: int) -> dict:
    """The split kernel's prologue arguments: the real ones for `rope`, inert ones without it.

    With rope, q4 [B, 1, H, d] must be the q columns of the q/k/v projection's rows (qkv[:, :, :H·d] viewed as heads:
    the kernel finds k and v after them in the same row). Raises ValueError on shapes the prologue cannot take."""
    if rope is None:
        return dict(rope_pos_ptr=q4, stride_rpb=0, cos_ptr=q4, sin_ptr=q4, stride_cos=0, stride_sin=0,
                    qw_ptr=q4, kw_ptr=q4, rope_eps=0.0, rope_clip=0.0, ROPE=False)
    B, S, H, d = q4.shape
    hkv = k_cache.shape[2]
    if S != 1 or block_dr != 0 or block_dk != d or d % 2:
        raise ValueError(f"--attn-rope takes one new token a sequence and a power-of-two head dim >= 16 "
                         f"(got {S} tokens, head dim {d})")
    if q4.stride(2) != d or q4.stride(3) != 1:
        raise ValueError("--attn-rope needs q as the raw q/k/v row's q columns (heads d apart, unit stride)")
    if rope.qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm must be one of {list(QK_NORMS)}, not {rope.qk_norm!r}")
    if rope.qk_norm is not None:
        want = (H * d, hkv * d) if rope.qk_norm == "full" else (d, d)
        if (rope.q_norm_w.numel(), rope.k_norm_w.numel()) != want or not (
                rope.q_norm_w.is_contiguous() and rope.k_norm_w.is_contiguous()):
            raise ValueError(f"q/k norm weights: want {want} contiguous elements")
    pos, cos, sin = rope.positions, rope.cos, rope.sin
    if pos.shape != (B, 1) or pos.dtype != torch.int64 or cos.shape[-1] != d // 2 or sin.shape[-1] != d // 2 \
            or cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        raise ValueError("--attn-rope: positions [B, 1] int64 and cos / sin [P, d/2] fp32 tables")
    if v_cache.data_ptr() == k_cache.data_ptr() or v_cache.shape[-1] != d:
        raise ValueError("--attn-rope: K and V caches must be separate, both of head dim d (not MLA's latent)")
    return dict(rope_pos_ptr=pos, stride_rpb=pos.stride(0), cos_ptr=cos, sin_ptr=sin, stride_cos=cos.stride(0),
                stride_sin=sin.stride(0), qw_ptr=rope.q_norm_w if rope.qk_norm else q4,
                kw_ptr=rope.k_norm_w if rope.qk_norm else q4, rope_eps=float(rope.eps),
                rope_clip=0.0 if rope.clip is None else float(rope.clip), ROPE=True,
                QK_NORM=QK_NORMS[rope.qk_norm], CLIP=rope.clip is not None, INTERLEAVE=bool(rope.interleave),
                H_ALL=H, BLOCK_H_ALL=triton.next_power_of_2(H), H_KV=hkv, BLOCK_HKV_ALL=triton.next_power_of_2(hkv))
