"""The two @triton.jit pieces every Triton expert alignment shares (moe_align.py, moe_align_chunked.py).

Each alignment kernel reads the flat router ids and, after placing them, fills in the block table. Those two steps
do not depend on how the ids were counted or ranked, so they live here, below both kernel modules:

    _load_local         ids [numel] (global expert ids, flat index i = token i // K, slot i % K) -> local expert
                        ids of a chunk of flat indices, -1 for foreign ids and for lanes past numel
    _write_block_owners seg_end [E_P2] (end of each local expert's padded segment), total (= num_padded) ->
                        block_expert [num_blocks] for a range of M-blocks, and the sentinel tail of
                        sorted_ids [num_blocks·BLOCK_M] past total

Shapes: numel = T·K flat (token, slot) pairs, E local experts (E_P2 = E rounded up to a power of 2), BLOCK_M rows
an M-block, CHUNK blocks per pass. The layout they fill is moe_align.py's (sorted_ids, block_expert, num_padded).
"""

import triton
import triton.language as tl


@triton.jit
def _load_local(ids_ptr, idx, numel, expert_offset):
    """Local expert ids of flat indices idx; lanes past numel read -1, which matches no expert."""
    ids = tl.load(ids_ptr + idx, mask=idx < numel, other=0).to(tl.int32)
    return tl.where(idx < numel, ids - expert_offset, -1)


@triton.jit
def _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, first_block,
                        end_block, BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr):
    """block_expert for blocks first_block .. end_block-1. Owner of block b = number of segments
    that end at or before its first row. Empty experts have zero-length segments and are counted
    correctly; past the end the count reaches E -> -1. The tail of sorted_ids (past num_padded) is
    never read by the GEMMs; it is filled anyway so every entry is defined."""
    real_expert = tl.arange(0, E_P2) < E
    for start in range(first_block, end_block, CHUNK):
        blk = start + tl.arange(0, CHUNK)
        first_row = blk * BLOCK_M
        owner = tl.sum(((seg_end[None, :] <= first_row[:, None]) & real_expert[None, :])
                       .to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blk, tl.where(owner < E, owner, -1), mask=blk < end_block)
        tail = first_row[:, None] + tl.arange(0, BLOCK_M)[None, :]      # [CHUNK, BLOCK_M]
        tl.store(sorted_ptr + tail, tail * 0 + numel,
                 mask=(tail >= total) & (blk < end_block)[:, None])
