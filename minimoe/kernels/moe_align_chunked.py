"""Expert alignment for prefill sizes: a histogram per chunk of ids, then a scatter per chunk (two launches).

moe_align.py's parallel kernel has every program count ALL ids (a launch has no grid-wide barrier to share a
histogram), so its work per program grows with numel: fine at decode, 100 µs at prefill's 49,152 pairs. Here the
count is shared through memory between two launches instead, and each program only ever touches its own chunk:

  launch 1 (`_align_chunk_count_kernel`), program p: counts[p, e] = ids of chunk p that go to local expert e
      (tl.histogram; foreign ids count nowhere)
  launch 2 (`_align_chunk_scatter_kernel`), program p: reads the whole [n_chunks, E_P2] table; segment starts from
      its column sums (each padded up to a multiple of BLOCK_M), its own offset in each segment from the rows
      above row p; then ranks chunk p's ids inside the chunk (an exclusive cumsum of their one-hot columns) and
      writes slot = segment start + offset + rank. Expert e's sentinel padding is written by program e mod
      n_chunks, block_expert and the sorted_ids tail by contiguous block ranges (moe_align_common.py).

Work per program is one chunk, not all ids, so it scales to prefill's 10^4-10^5 pairs: 29.0 µs against the
parallel kernel's 100.6 and the torch ops' 151 at DeepSeek-V2-Lite's 49,152 pairs (H200, graphed; moe_align.py's
docstring has the other sizes). The output equals every other method's (sorted_ids, block_expert, num_padded),
bit for bit: order inside an expert follows the flat index. `moe_align.align_tokens_by_expert` picks this path
above ONE_PROGRAM_MAX_NUMEL pairs (LARGE_METHOD = "chunked").
Reference: vLLM's moe_align_block_size does the same split at large sizes, with atomics; ours keeps the flat order.

Shapes: numel = T·K flat (token, slot) pairs, E local experts (E_P2 = E rounded up to a power of 2), n_chunks
chunks of CHUNK ids (P_P2 = n_chunks rounded up), counts [n_chunks, E_P2] int32 (a workspace), sorted_ids
[num_blocks·BLOCK_M], block_expert [num_blocks], num_padded [1].
"""

import torch
import triton
import triton.language as tl

from .moe_align_common import _load_local, _write_block_owners
from .pdl import launch_args, wait_then_release

# The chunked alignment cuts the ids into at most CHUNKS chunks of at least CHUNK_MIN (a power of 2), a program each.
CHUNKS = 128
CHUNK_MIN = 512


@triton.jit(do_not_specialize=["numel", "expert_offset", "E"])
def _align_chunk_count_kernel(ids_ptr, counts_ptr, numel, expert_offset, E, CHUNK: tl.constexpr,
                              E_P2: tl.constexpr, HIST_BINS: tl.constexpr, PDL: tl.constexpr):
    """counts[p, e] = ids of chunk p (flat indices p·CHUNK ..) that go to local expert e; [n_chunks, E_P2]."""
    wait_then_release(PDL)
    p = tl.program_id(0)
    local = _load_local(ids_ptr, p * CHUNK + tl.arange(0, CHUNK), numel, expert_offset)
    bins = tl.histogram(tl.where((local >= 0) & (local < E), local, E_P2), HIST_BINS)
    bins = tl.reshape(bins, [HIST_BINS // E_P2, E_P2])                     # row 0 = the local experts
    first = tl.arange(0, HIST_BINS // E_P2)[:, None] == 0
    tl.store(counts_ptr + p * E_P2 + tl.arange(0, E_P2), tl.sum(tl.where(first, bins, 0), axis=0))


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_blocks", "n_chunks"])
def _align_chunk_scatter_kernel(ids_ptr, counts_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr,
                                numel, expert_offset, E, num_blocks, n_chunks,
                                BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr,
                                P_P2: tl.constexpr, RANK_CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr,
                                PDL: tl.constexpr):
    """Program p writes chunk p's ids: an id's slot = its expert's segment start + the ids of that expert in
    chunks before p (the count table's column above row p) + its rank inside chunk p."""
    wait_then_release(PDL)
    p = tl.program_id(0)
    nprog = tl.num_programs(0)
    experts = tl.arange(0, E_P2)
    chunks = tl.arange(0, P_P2)
    table = tl.load(counts_ptr + chunks[:, None] * E_P2 + experts[None, :],
                    mask=(chunks < n_chunks)[:, None], other=0)                # [P_P2, E_P2]
    counts = tl.sum(table, axis=0)
    before = tl.sum(tl.where((chunks < p)[:, None], table, 0), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    seg_end = tl.cumsum(padded, axis=0)
    seg_start = seg_end - padded
    total = tl.sum(padded, axis=0)
    tl.store(num_padded_ptr, total, mask=p == 0)
    # each segment's sentinel padding, by the program of its expert's residue (disjoint from the id slots)
    pad = (seg_start + counts)[:, None] + tl.arange(0, BLOCK_M)[None, :]       # [E_P2, BLOCK_M]
    tl.store(sorted_ptr + pad, pad * 0 + numel, mask=(pad < seg_end[:, None]) & (experts % nprog == p)[:, None])
    real_expert = experts < E
    cursor = seg_start + before
    for start in range(0, CHUNK, RANK_CHUNK):
        idx = p * CHUNK + start + tl.arange(0, RANK_CHUNK)
        local = _load_local(ids_ptr, idx, numel, expert_offset)
        hit = ((local[:, None] == experts[None, :]) & real_expert[None, :]).to(tl.int32)   # [RANK_CHUNK, E_P2]
        slot = tl.cumsum(hit, axis=0) - hit + cursor[None, :]
        tl.store(sorted_ptr + tl.sum(hit * slot, axis=1), idx, mask=tl.sum(hit, axis=1) > 0)
        cursor += tl.sum(hit, axis=0)
    per = tl.cdiv(num_blocks, nprog)
    first = p * per
    _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, first,
                        tl.minimum(first + per, num_blocks), BLOCK_M, E_P2, BLOCK_CHUNK)


def _align_chunked(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded, chunks=None,
                   pdl=False):
    """Two launches for any numel (none for 0: num_padded = 0): a histogram per chunk of ids, then one program per
    chunk scatters its ids (vLLM's moe_align_block_size does the same split at large sizes, with atomics; ours keeps
    the flat order).
    chunks (a knob for scripts/bench_align.py): how many, at most; None = CHUNKS."""
    numel = flat_ids.numel()
    if numel == 0:                   # no ids: no blocks, an empty grid
        num_padded.zero_()
        return
    e_p2 = triton.next_power_of_2(max(E, 2))
    most = min(chunks or CHUNKS, max(8, 16384 // e_p2))       # the scatter's [chunks, E_P2] count table stays ~16K
    chunk = max(CHUNK_MIN, triton.next_power_of_2(triton.cdiv(numel, most)))
    n_chunks = triton.cdiv(numel, chunk)
    counts = torch.empty(n_chunks, e_p2, dtype=torch.int32, device=flat_ids.device)
    _align_chunk_count_kernel[(n_chunks,)](flat_ids, counts, numel, expert_offset, E, CHUNK=chunk, E_P2=e_p2,
                                           HIST_BINS=max(2 * e_p2, 64), num_warps=4, **launch_args(pdl))
    _align_chunk_scatter_kernel[(n_chunks,)](
        flat_ids, counts, sorted_ids, block_expert, num_padded, numel, expert_offset, E, block_expert.numel(),
        n_chunks, BLOCK_M=block_m, E_P2=e_p2, CHUNK=chunk, P_P2=triton.next_power_of_2(n_chunks),
        RANK_CHUNK=min(chunk, max(16, 8192 // e_p2)),   # the [RANK_CHUNK, E_P2] rank tile stays ~8K
        BLOCK_CHUNK=32, num_warps=4, **launch_args(pdl))
