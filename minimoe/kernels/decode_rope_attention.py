"""The q/k norm, rotary embedding and KV-cache write inside the split decode-attention kernel: one launch, not two.

At decode, between the q/k/v projection and attention, kernels/rope.py runs one small kernel: it norms and rotates q
and k, writes k and v into the cache at the new position and stores q; then the split kernel of
kernels/decode_attention.py reads q back and streams the cache. The first launch moves a few kilobytes, yet costs a
place in the chain of dependent launches (~1.7 µs a Qwen3-30B-A3B layer at bs 1 with PDL off). Here each split
program (kv head g, sequence b, split s) starts from the raw projection row instead:

  q[g's G heads]  = rope(norm(q columns))          [G, d]: its own heads only (a "full" norm sums over all H heads)
  k_new, v_new    = rope(norm(k columns))[g], v[g]   the new position's K / V row, in registers
  for each K / V tile of the split:                  the row at the new position is taken from k_new / v_new, not
      the online-softmax step of decode_attention    read from the cache, whose slot is still stale there
  partials (or the output when there is one split)   merged by decode_attention_merge.py as before
  the split holding the new position writes k_new / v_new into the cache, after its last load (no store -> load
  turn); no other program reads that slot in this launch.

The roundings are kernels/rope.py's (norm output rounded to the activation dtype, times the weight, rounded again;
rope in fp32 without FMA, rounded once; k / v rounded to the cache's dtype), so the cache gets the same bits as the
rope kernel writes, and q the same values up to the order of the per-head norm's sum (another tile shape). The rest
is the split kernel's arithmetic on the same tiles. Only the one-new-token decode of a power-of-two head dim without
MLA runs here (`usable`); everything else keeps the two launches.
Measured no faster (docs/results/2026-12-04-s33, call 3): a tie on Qwen3-30B-A3B at bs 1, +0.6% to +7.7% on OLMoE;
under PDL the launch boundary it removes costs little, and the norm + rope chain now sits in front of every split's
first dot. Kept as the `--fuse-rope-attn` ablation (rope_attn_fusion.py), off by default.
Peer design: FlashInfer's decode attention applies RoPE to q and k on the fly (`pos_encoding_mode="ROPE_LLAMA"`);
here the new key is also written to the cache, as vLLM's separate rotary + reshape_and_cache kernels do before it.

Shapes: B sequences, H / Hkv query / kv heads, G = H / Hkv, d head dim, S_max cache positions, P rope table rows.
"""

import torch
import triton
import triton.language as tl

from . import decode_attention as _attn
from .decode_attention_split import _online_softmax_step
from .pdl import launch_args, wait_then_release
from .rope import QK_NORMS, _inv_rms_all, _norm_rope_heads

# The split kernel's warps (None: decode_attention's plan, 4 at bs 1). Compiled for the H200, Qwen3-30B-A3B's program
# at 4 warps holds 255 registers and spills 48 bytes (the early K / V tiles, q and the rope tiles live together); at 8
# it takes 169 and spills none.
WARPS: int | None = None


@triton.jit
def _concat_pairs(x1, x2, ROWS: tl.constexpr, D: tl.constexpr, INTERLEAVE: tl.constexpr):
    """[ROWS, d/2] halves -> [ROWS, d] in the head's channel order: (x1 | x2) for rotate-half, interleaved pairs
    (x1[0], x2[0], x1[1], ...) for DeepSeek's layout."""
    both = tl.join(x1, x2)                                # [ROWS, d/2, 2]
    if not INTERLEAVE:
        both = tl.permute(both, (0, 2, 1))                # [ROWS, 2, d/2]
    return tl.reshape(both, (ROWS, D))


@triton.jit
def _rope_split_kernel(
    qkv_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, k_ptr, v_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    stride_xb, stride_pb, stride_cos, stride_sin, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh, qk_scale, eps, clip, S_max, CHUNK,
    H: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_HALL: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_N: tl.constexpr, QK_NORM: tl.constexpr,
    CLIP: tl.constexpr, INTERLEAVE: tl.constexpr, DIRECT: tl.constexpr, EARLY: tl.constexpr,
    PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    """Program (kv head, sequence, split): module docstring. EARLY (every split one K tile): the tile's K / V are
    loaded before seq_len, as decode_attention.EARLY_TILE."""
    wait_then_release(PDL)
    kv_head = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    HALF: tl.constexpr = D // 2
    row = qkv_ptr + b * stride_xb
    j = tl.arange(0, HALF)
    j_ok = j < HALF
    if INTERLEAVE:
        c1 = 2 * j
        c2 = 2 * j + 1
    else:
        c1 = j
        c2 = j + HALF
    offs_d = tl.arange(0, D)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh
    if EARLY:                                             # independent of seq_len and of the position
        e_n = split * CHUNK + tl.arange(0, BLOCK_N)
        e_in = e_n < S_max
        k_early = tl.load(k_base + e_n[:, None] * stride_ks + offs_d[None, :], mask=e_in[:, None], other=0.0)
        v_early = tl.load(v_base + e_n[:, None] * stride_vs + offs_d[None, :], mask=e_in[:, None], other=0.0)
    v_new = tl.load(row + (H + HKV + kv_head) * D + offs_d)   # the new position's raw v
    pos = tl.load(pos_ptr + b * stride_pb).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_cos + j)
    sin = tl.load(sin_ptr + pos * stride_sin + j)
    # q: this kv head's G query heads, rows padded to BLOCK_H (tl.dot's M >= 16); a "full" norm's 1 / rms over all H
    inv_q = 0.0
    inv_k = 0.0
    if QK_NORM == 1:
        ha = tl.arange(0, BLOCK_HALL)
        ma = (ha < H)[:, None] & j_ok[None, :]
        a1 = tl.load(row + ha[:, None] * D + c1[None, :], mask=ma, other=0.0).to(tl.float32)
        a2 = tl.load(row + ha[:, None] * D + c2[None, :], mask=ma, other=0.0).to(tl.float32)
        inv_q = _inv_rms_all(a1 * a1 + a2 * a2, H, D, eps)
    h0 = kv_head * G
    q1, q2, hq, mq = _norm_rope_heads(row, qw_ptr, c1, c2, j_ok, cos, sin, eps, clip, H, BLOCK_H, D, QK_NORM, CLIP,
                                      h0, h0 + G, inv_q, QK_NORM == 1)
    # k: every kv head, as the rope kernel's k program tiles them (a "full" norm needs them all), then row kv_head
    k1, k2, hk, mk = _norm_rope_heads(row + H * D, kw_ptr, c1, c2, j_ok, cos, sin, eps, clip, HKV, BLOCK_HKV, D,
                                      QK_NORM, CLIP, 0, HKV, inv_k, False)
    cache_t = k_ptr.dtype.element_ty
    pick = (hk == kv_head)[:, None]
    k1 = tl.sum(tl.where(pick, k1.to(tl.float32), 0.0), axis=0)  # [d/2]: one nonzero row, exact
    k2 = tl.sum(tl.where(pick, k2.to(tl.float32), 0.0), axis=0)
    k_new = tl.reshape(_concat_pairs(k1[None, :], k2[None, :], 1, D, INTERLEAVE), (D,)).to(cache_t)
    if CLIP:  # clamp in fp32, one rounding on the way to the cache, as the rope kernel's v
        v_new = tl.clamp(v_new.to(tl.float32), -clip, clip)
    v_new = v_new.to(v_ptr.dtype.element_ty)
    q = _concat_pairs(q1, q2, BLOCK_H, D, INTERLEAVE).to(cache_t)        # [BLOCK_H, d]; padding rows are 0

    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), S_max)
    start = split * CHUNK
    if start >= seq_len:                                  # an empty split: the merge knows it from seq_len
        return
    end = tl.minimum(start + CHUNK, seq_len)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    if EARLY:
        n_ok = (e_n < end)[:, None]
        new = (e_n == pos)[:, None]
        k_t = tl.where(new, k_new[None, :], tl.where(n_ok, k_early, 0.0))
        v_t = tl.where(new, v_new[None, :], tl.where(n_ok, v_early, 0.0))
        qk = tl.dot(q, tl.trans(k_t), input_precision=PRECISION)
        qk = tl.where((e_n < end)[None, :], qk * qk_scale, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(qk, v_t, m_i, l_i, acc, PRECISION)
    else:
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < end
            new = (offs_n == pos)[:, None]
            k_t = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=n_ok[:, None], other=0.0)
            k_t = tl.where(new, k_new[None, :], k_t)
            qk = tl.dot(q, tl.trans(k_t), input_precision=PRECISION)
            qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))
            v_t = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=n_ok[:, None], other=0.0)
            v_t = tl.where(new, v_new[None, :], v_t)
            m_i, l_i, acc = _online_softmax_step(qk, v_t, m_i, l_i, acc, PRECISION)

    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < G
    heads = h0 + rows
    out = acc / l_i[:, None]                              # one token: every row saw position 0 of its split
    o_ptrs = o_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    if DIRECT:
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs + split * stride_os, out, mask=row_ok[:, None])
        tl.store(lse_ptr + b * stride_lb + heads * stride_lh + split, m_i + tl.log2(l_i), mask=row_ok)
    if (pos >= start) & (pos < end):                      # this split holds the new position: the one cache write
        tl.store(k_base + pos * stride_ks + offs_d, k_new)
        tl.store(v_base + pos * stride_vs + offs_d, v_new)


def usable(B: int, S: int, H: int, hkv: int, d: int, qkv_dtype: torch.dtype, cache_dtype: torch.dtype) -> bool:
    """Whether `decode_rope_attention` runs this step: one new token a sequence, a power-of-two head dim of 16-256,
    G = H / Hkv query heads a kv head in one tile (<= 128), the caches in the projection's dtype."""
    return (B >= 1 and S == 1 and hkv >= 1 and H % hkv == 0 and H // hkv <= 128 and 16 <= d <= 256
            and d & (d - 1) == 0 and qkv_dtype == cache_dtype
            and qkv_dtype in (torch.float32, torch.float16, torch.bfloat16))


def decode_rope_attention(qkv, positions, seq_lens, cos, sin, k_cache, v_cache, n_heads: int, n_kv_heads: int,
                          head_dim: int, scale: float, *, qk_norm: str | None = None, q_norm_w=None, k_norm_w=None,
                          eps: float = 1e-6, interleave: bool = False, clip_qkv: float | None = None,
                          max_splits: int | None = None, min_tiles: int | None = None,
                          pdl: bool = False) -> torch.Tensor:
    """kernels/rope.py's `qkv_rope_cache` then kernels/decode_attention.py's `decode_attention`, for one new token a
    sequence, in one split-kernel launch (+ the merge kernel where there are several splits).

    qkv [B, 1, (H + 2·Hkv)·d] (unit last stride); positions [B, 1] int64 (the new token's position, which must be
    seq_lens[b] - 1); seq_lens [B] int32 counting the new token; cos, sin [P, d/2] float32; k_cache, v_cache
    [B, S_max, Hkv, d] (any strides, unit stride on d), written at the position. qk_norm None | "full" | "head" with
    weights [H·d] / [Hkv·d] or [d]; clip_qkv OLMoE's clamp; scale the softmax scale; max_splits / min_tiles as
    decode_attention's. -> [B, H, d] in qkv's dtype. Raises ValueError outside `usable`, AssertionError on bad shapes.
    """
    B, S, width = qkv.shape
    H, Hkv, d = n_heads, n_kv_heads, head_dim
    if not usable(B, S, H, Hkv, d, qkv.dtype, k_cache.dtype):
        raise ValueError(f"decode_rope_attention: qkv {tuple(qkv.shape)} {qkv.dtype}, H {H}, Hkv {Hkv}, d {d}, cache "
                         f"{k_cache.dtype}: outside what the fused kernel runs (one token, power-of-two d)")
    assert width == (H + 2 * Hkv) * d and qkv.stride(-1) == 1, (qkv.shape, H, Hkv, d)
    assert k_cache.stride(-1) == v_cache.stride(-1) == 1 and k_cache.dtype == v_cache.dtype
    assert k_cache.shape[0] == v_cache.shape[0] == B and k_cache.shape[2:] == v_cache.shape[2:] == (Hkv, d)
    assert positions.shape == (B, 1) and seq_lens.shape == (B,) and seq_lens.dtype == torch.int32
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape[-1] == sin.shape[-1] == d // 2
    assert cos.stride(-1) == sin.stride(-1) == 1
    assert qk_norm in QK_NORMS, f"qk_norm must be one of {list(QK_NORMS)}, not {qk_norm!r}"
    if qk_norm is not None:
        want = (H * d, Hkv * d) if qk_norm == "full" else (d, d)
        assert (q_norm_w.numel(), k_norm_w.numel()) == want, (q_norm_w.shape, k_norm_w.shape)
        assert q_norm_w.is_contiguous() and k_norm_w.is_contiguous()
    s_max = k_cache.shape[1]
    plan = _attn.split_plan(B, 1, H, Hkv, d, d, s_max, qkv.device, max_splits, min_tiles)
    out = torch.empty(B, 1, H, d, device=qkv.device, dtype=qkv.dtype)
    direct = plan.num_splits == 1
    if direct:
        part, lse = out[:, :, :, None], out                   # lse is never touched when DIRECT
    else:
        part = torch.empty(B, 1, H, plan.num_splits, d, device=qkv.device, dtype=torch.float32)
        lse = torch.empty(B, 1, H, plan.num_splits, device=qkv.device, dtype=torch.float32)
    _rope_split_kernel[(Hkv, B, plan.num_splits)](
        qkv, positions, cos, sin, q_norm_w if qk_norm else qkv, k_norm_w if qk_norm else qkv,   # unread without one
        k_cache, v_cache, seq_lens, part, lse,
        qkv.stride(0), positions.stride(0), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), part.stride(0), part.stride(2), part.stride(3), lse.stride(0), lse.stride(2),
        scale * 1.4426950408889634, eps, 0.0 if clip_qkv is None else float(clip_qkv), s_max, plan.chunk,
        H=H, HKV=Hkv, G=H // Hkv, D=d, BLOCK_H=plan.block_h, BLOCK_HALL=triton.next_power_of_2(H),
        BLOCK_HKV=triton.next_power_of_2(Hkv), BLOCK_N=plan.block_n, QK_NORM=QK_NORMS[qk_norm],
        CLIP=clip_qkv is not None, INTERLEAVE=interleave, DIRECT=direct,
        EARLY=_attn.EARLY_TILE and plan.chunk == plan.block_n,
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        enable_fp_fusion=False,          # rope's roundings: torch rounds x1·cos and x2·sin apart (kernels/rope.py)
        **{**plan.launch, **({"num_warps": WARPS} if WARPS else {})}, **launch_args(pdl),
    )
    if not direct:
        _attn.merge_partials(part, lse, seq_lens, out, plan, pdl)
    return out[:, 0]
