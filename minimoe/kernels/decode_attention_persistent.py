"""Persistent decode attention for full grids: each program streams several (sequence, kv head) items back to back.

Why. At batch 64 OLMoE's split plan has one split: 1,024 programs (64 sequences x 16 kv heads), each walking its
sequence's 3-4 K / V tiles of 64 positions, ~4 waves of them on 132 SMs (2 resident an SM: 3 stages of 32 KB tiles). A program's first tile is a full HBM round
trip that nothing inside the program overlaps, and a 4-tile loop never reaches a steady state, so the kernel's time
follows its tile count, not its bytes: 66% / 78% / 91% of the bytes' time at 138 / 202 / 256 cached entries
(docs/results/2026-12-04-s38, call 12), with a step up wherever the cache passes a multiple of 64.

What. P programs (about PROGRAMS_PER_SM an SM, sized so the items divide evenly), each taking items pid, pid + P,
pid + 2P, ... in one flat loop over (item, tile). The loop is what Triton's software pipeliner sees, so the loads of
the next item's first tiles are issued while the current item's last tiles are being multiplied: one exposed round
trip a program instead of one an item. The online softmax (Milakov & Gimelshein) restarts at each item's first tile
and the item's output is stored after its last. Every item runs over the same number of tiles: that of the longest
sequence in the batch (read from seq_lens on the device, so CUDA-graph safe); a shorter sequence's extra tiles are
fully masked (no traffic, an exact 0 in the softmax).

Shapes: B batch, S_max cache capacity, H query heads, Hkv kv heads, G = H / Hkv (one tile of BLOCK_H >= G rows:
head_tiles 1), d head dim (a power of two, Dk = Dv, no MLA). One new token a sequence. Only used where
`decode_attention.PERSISTENT` is on and the split plan asks for one split (the grid fills the SMs).
Reference: the stream-K / persistent-kernel idea (Osama et al., "Stream-K", PPoPP 2023), here at item granularity.

Measured on the H200 (docs/results/2026-12-04-s39, call 1; scripts/bench_attn_persistent.py), as a ratio to the
one-split kernel at B 64: OLMoE 0.93x / 0.94x / 1.01x / 1.02x at 138 / 202 / 256 / 1,000 cached entries, Mixtral
0.93x / 0.975x / 1.02x / 1.01x; Qwen3-30B-A3B's shape at B 128 1.04-1.10x. OLMoE's graphed bs-64 step +0.98% (slower).
So the cost of a tile is not a program's first round trip, and the knob stays off.
"""

import triton
import triton.language as tl

from .pdl import wait_then_release


@triton.jit
def _decode_persistent_kernel(
    q_ptr, k_ptr, v_ptr, seq_lens_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_ob, stride_oh,
    qk_scale, S_max, B, n_items,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ITEMS: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    # Every length in registers once: the loop picks its sequence's with a masked sum, not a load whose result a
    # later load's mask depends on (the pipeliner then keeps one chain of loads, not two).
    offs_b = tl.arange(0, BLOCK_B)
    lens = tl.minimum(tl.load(seq_lens_ptr + offs_b, mask=offs_b < B, other=0), S_max)
    n_tiles = tl.cdiv(tl.max(lens, axis=0), BLOCK_N)                  # the longest sequence's tiles, >= 1
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < G
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)               # running max, log2 domain
    l_i = tl.zeros([BLOCK_H], tl.float32)                             # running denominator
    acc = tl.zeros([BLOCK_H, D], tl.float32)                          # unnormalised output
    for it in tl.range(0, ITEMS * n_tiles, num_stages=STAGES):
        j = it // n_tiles
        t = it - j * n_tiles                                          # this item's tile
        item = pid + j * P
        item_ok = item < n_items
        item = tl.minimum(item, n_items - 1)                          # addresses stay in bounds; nothing stored
        b = item // HKV
        kv_head = item - b * HKV
        seq_len = tl.sum(tl.where(offs_b == b, lens, 0), axis=0)
        seq_len = tl.where(item_ok, seq_len, 0)                       # a program past the last item reads nothing
        b64 = b.to(tl.int64)                                          # b * stride_kb overflows int32 for long caches
        heads = kv_head * G + rows
        q = tl.load(q_ptr + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0).to(k_ptr.dtype.element_ty)          # [BLOCK_H, D]
        pos = t * BLOCK_N + offs_n
        n_ok = pos < seq_len
        k = tl.load(k_ptr + b64 * stride_kb + kv_head * stride_kh + pos[:, None] * stride_ks + offs_d[None, :],
                    mask=n_ok[:, None], other=0.0)                                     # [BLOCK_N, D]
        v = tl.load(v_ptr + b64 * stride_vb + kv_head * stride_vh + pos[:, None] * stride_vs + offs_d[None, :],
                    mask=n_ok[:, None], other=0.0)
        first = t == 0                                                # a new item: the softmax starts again
        m_i = tl.where(first, float("-inf"), m_i)
        l_i = tl.where(first, 0.0, l_i)
        acc = tl.where(first, 0.0, acc)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)          # an all-masked tile before any position
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        last = (t == n_tiles - 1) & item_ok                           # the item's output is complete
        store_ok = rows < tl.where(last, G, 0)                        # (a vector-and-scalar `&` trips the interpreter)
        tl.store(o_ptr + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=store_ok[:, None])


def persistent_grid(n_items: int, sm_count: int, programs_per_sm: int) -> tuple[int, int]:
    """(programs, items a program): at most programs_per_sm x sm_count programs, the items spread as evenly as
    whole items allow (1,024 items on 264 slots: 256 programs of 4, not 264 of 3-4)."""
    items = triton.cdiv(n_items, max(1, programs_per_sm * sm_count))
    return triton.cdiv(n_items, items), items
