"""The split kernel of `decode_attention.py`: one program a (kv head x head tile, sequence, split), a partial softmax.

Each program loads its sequence's q rows for one kv head (the G = H / Hkv query heads sharing it, times S new tokens,
padded to BLOCK_H >= 16 rows for tl.dot), walks its chunk of the cache in BLOCK_N-position K / V tiles with an online
softmax (`_online_softmax_step`, log2 domain), and writes the chunk-normalised output and its log-sum-exp for the merge
(decode_attention_merge.py), or the final output when there is one split (DIRECT). The split plan, the knobs and the
launcher live in decode_attention.py, which explains the design; this file holds only the Triton code.

Shapes: B batch, S new tokens a sequence, S_max cache capacity, H query heads, Hkv kv heads, G = H / Hkv, Dk / Dv head
dims (BLOCK_DK + BLOCK_DR: a power-of-two main block and a masked remainder, MLA's 512 + 64).
Reference: Dao et al., "Flash-Decoding for long-context inference" (2023); Milakov & Gimelshein, "Online normalizer
calculation for softmax" (2018).
"""
import triton
import triton.language as tl

from .pdl import wait_then_release


@triton.jit
def _online_softmax_step(qk, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold one [BLOCK_H, BLOCK_N] score tile into the running (max, sum, output), log2 domain.

    Milakov & Gimelshein's online softmax: rescale what we have by exp2(m_old - m_new), add the
    tile. A row with no valid position yet (a later query token's causal limit lies past this
    split's start only for some rows) keeps max -inf: it is shifted by 0 instead, so it adds
    exp2(-inf) = 0 and never produces inf - inf.
    """
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(qk - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, seq_lens_ptr, pos_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_pb, stride_ps, stride_ob, stride_oq, stride_oh, stride_os, stride_lb, stride_lq, stride_lh,
    qk_scale, S_max, CHUNK, cnt_ptr, fin_ptr, stride_fb, stride_fq, stride_fh,
    G: tl.constexpr, S_Q: tl.constexpr, HEAD_TILES: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_DV: tl.constexpr, V_FROM_K: tl.constexpr, DIRECT: tl.constexpr, USE_POS: tl.constexpr,
    PRECISION: tl.constexpr, PDL: tl.constexpr, MERGE: tl.constexpr = False, EARLY: tl.constexpr = False,
    KV_EVICT: tl.constexpr = "",
):
    wait_then_release(PDL)
    # Head tiles are the fastest grid axis so sibling tiles of one kv head (MLA: G = 128 in tiles
    # of BLOCK_H) run side by side and their repeated reads of the same K chunk hit L2.
    kv_head = tl.program_id(0) // HEAD_TILES
    head_tile = tl.program_id(0) % HEAD_TILES
    b = tl.program_id(1).to(tl.int64)  # int64: b * stride_kb overflows int32 for a 32k x 256 cache
    split = tl.program_id(2)
    if EARLY:  # one K tile a split, one new token, no MLA: q, K and V loaded before seq_len is known (see below)
        e_rows = head_tile * BLOCK_H + tl.arange(0, BLOCK_H)
        e_heads = kv_head * G + e_rows % G
        e_d = tl.arange(0, BLOCK_DK)
        e_n = split * CHUNK + tl.arange(0, BLOCK_N)
        e_in = e_n < S_max                                   # inside the cache: stale rows are dropped below
        q_early = tl.load(q_ptr + b * stride_qb + e_heads[:, None] * stride_qh + e_d[None, :],
                          mask=(e_rows < G)[:, None], other=0.0).to(k_ptr.dtype.element_ty)
        k_early = tl.load(k_ptr + b * stride_kb + kv_head * stride_kh + e_n[:, None] * stride_ks + e_d[None, :],
                          mask=e_in[:, None], other=0.0, eviction_policy=KV_EVICT)
        e_v = tl.arange(0, BLOCK_DV)
        v_early = tl.load(v_ptr + b * stride_vb + kv_head * stride_vh + e_n[:, None] * stride_vs + e_v[None, :],
                          mask=e_in[:, None] & (e_v[None, :] < DV), other=0.0, eviction_policy=KV_EVICT)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), S_max)
    start = split * CHUNK
    if start >= seq_len:  # early exit: the merge kernel knows this split is empty from seq_len
        return
    end = tl.minimum(start + CHUNK, seq_len)

    # Rows are (query token s, head g of this kv head's group): S_Q new tokens of a sequence share
    # every K/V tile, as the G heads do. BLOCK_H >= 16 rows because tl.dot needs M >= 16; rows past
    # G * S_Q are masked (q = 0, never stored). Padding small groups (MHA, one token: 1 row) wastes
    # tensor-core work, which is free in a memory-bound kernel, and keeps a single code path.
    rows = head_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < G * S_Q
    s_q = rows // G
    heads = kv_head * G + rows % G  # [BLOCK_H] query heads of this tile
    if USE_POS:  # token s sees the cache up to its own position (causal within the new tokens)
        limit = tl.load(pos_ptr + b * stride_pb + s_q * stride_ps, mask=row_ok, other=0) + 1
    else:
        limit = tl.zeros([BLOCK_H], tl.int64) + seq_len
    offs_d = tl.arange(0, BLOCK_DK)
    offs_v = tl.arange(0, BLOCK_DV)
    q_rows = q_ptr + b * stride_qb + s_q[:, None] * stride_qs + heads[:, None] * stride_qh
    cache_t = k_ptr.dtype.element_ty
    if EARLY:
        q_main = q_early
    else:
        q_main = tl.load(q_rows + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(cache_t)
    if BLOCK_DR > 0:  # constexpr branch: names bound here stay visible below
        offs_r = BLOCK_DK + tl.arange(0, BLOCK_DR)
        q_rest = tl.load(q_rows + offs_r[None, :], mask=row_ok[:, None] & (offs_r[None, :] < DK),
                         other=0.0).to(cache_t)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max, log2 domain
    l_i = tl.zeros([BLOCK_H], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)  # [BLOCK_H, Dv] unnormalised output
    if EARLY:  # the loop's one step on the tiles loaded above, rows past seq_len (stale, maybe NaN) zeroed first
        n_ok = (e_n < end)[:, None]
        qk = tl.dot(q_early, tl.trans(tl.where(n_ok, k_early, 0.0)), input_precision=PRECISION)
        qk = tl.where((e_n[None, :] < end) & (e_n[None, :] < limit[:, None]), qk * qk_scale, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(qk, tl.where(n_ok, v_early, 0.0), m_i, l_i, acc, PRECISION)
    if not EARLY:
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < end
            k_rows = k_base + offs_n[:, None] * stride_ks
            k_main = tl.load(k_rows + offs_d[None, :], mask=n_ok[:, None], other=0.0,
                             eviction_policy=KV_EVICT)                                    # [N, BLOCK_DK]
            qk = tl.dot(q_main, tl.trans(k_main), input_precision=PRECISION)  # [BLOCK_H, N]
            if BLOCK_DR > 0:
                k_rest = tl.load(k_rows + offs_r[None, :],
                                 mask=n_ok[:, None] & (offs_r[None, :] < DK), other=0.0, eviction_policy=KV_EVICT)
                qk += tl.dot(q_rest, tl.trans(k_rest), input_precision=PRECISION)
            valid = n_ok[None, :] & (offs_n[None, :] < limit[:, None])
            qk = tl.where(valid, qk * qk_scale, float("-inf"))
            if V_FROM_K:  # MLA: V is the first Dv columns of the K tile already in hand
                v = k_main
            else:
                v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_v[None, :],
                            mask=n_ok[:, None] & (offs_v[None, :] < DV), other=0.0, eviction_policy=KV_EVICT)
            m_i, l_i, acc = _online_softmax_step(qk, v, m_i, l_i, acc, PRECISION)

    seen = l_i > 0  # a split can hold no position a later row may see: weight 0 in the merge
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptrs = o_ptr + b * stride_ob + s_q[:, None] * stride_oq + heads[:, None] * stride_oh + offs_v[None, :]
    store_ok = row_ok[:, None] & (offs_v[None, :] < DV)
    if DIRECT:  # a single split is already the final answer: skip the merge kernel
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=store_ok)
    else:
        tl.store(o_ptrs + split * stride_os, out, mask=store_ok)
        lse_ptrs = lse_ptr + b * stride_lb + s_q * stride_lq + heads * stride_lh
        tl.store(lse_ptrs + split,
                 tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf")), mask=row_ok)
        if MERGE:  # the last of this (sequence, head tile)'s non-empty splits merges them: no second kernel
            tl.debug_barrier()                                # every thread's partial is out before the count
            cnt = cnt_ptr + b * tl.num_programs(0) + tl.program_id(0)
            n_valid = tl.cdiv(seq_len, CHUNK)                 # splits past this exited above, uncounted
            if tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu") == n_valid - 1:
                tl.store(cnt, 0)                              # ready for the next call (self-resetting)
                lse_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
                for sp in range(0, n_valid):
                    lse_max = tl.maximum(lse_max, tl.load(lse_ptrs + sp, mask=row_ok, other=0.0, volatile=True))
                denom = tl.zeros([BLOCK_H], tl.float32)
                total = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
                for sp in range(0, n_valid):
                    w = tl.exp2(tl.load(lse_ptrs + sp, mask=row_ok, other=0.0, volatile=True) - lse_max)
                    denom += w
                    total += w[:, None] * tl.load(o_ptrs + sp * stride_os, mask=store_ok, other=0.0, volatile=True)
                f_ptrs = fin_ptr + b * stride_fb + s_q[:, None] * stride_fq + heads[:, None] * stride_fh + offs_v[None, :]
                tl.store(f_ptrs, (total / denom[:, None]).to(fin_ptr.dtype.element_ty), mask=store_ok)
