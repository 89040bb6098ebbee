"""Align (token, slot) pairs by expert so a grouped GEMM can run on fixed-size M-blocks.

A router gives every token K expert ids. Flatten them: flat index i stands for token i // K, slot
i % K, and there are numel = T·K of them. A grouped GEMM wants the rows of one expert side by side,
in blocks of BLOCK_M rows that all use the same weight matrix. So we build

    sorted_ids   [num_blocks·BLOCK_M]  flat indices grouped by local expert, each expert's segment
                                       padded up to a multiple of BLOCK_M with the sentinel numel
    block_expert [num_blocks]          local expert that owns M-block b, or -1 past the end
    num_padded   [1]                   total padded length (= live blocks · BLOCK_M), on the device

Worked example, K = 2, BLOCK_M = 4, topk_ids = [[1, 0], [1, 2]] (numel = 4, sentinel 4):
expert 0 gets flat index 1, expert 1 gets 0 and 2, expert 2 gets 3, so
sorted_ids = [1 4 4 4 | 0 2 4 4 | 3 4 4 4], block_expert = [0, 1, 2], num_padded = 12.

Everything stays on the device and every size depends only on (numel, E, BLOCK_M), so the whole
thing can be captured in a CUDA graph. Ids outside this layer's experts (expert parallelism: the
layer holds global experts expert_offset .. expert_offset+E-1) are dropped while counting.

Two implementations with identical output (order inside an expert follows the flat index):
- `_align_one_program_kernel`: ONE Triton program. Decode runs this once per layer, and a single
  launch beats a chain of small torch ops (each a few microseconds). It walks the ids in chunks,
  counting with a one-hot [CHUNK, E] tile and ranking with a cumulative sum down the chunk.
- `_align_torch`: sync-free torch ops (scatter_add_, cumsum, stable sort, searchsorted). Its cost is
  independent of numel per launch, so it wins for prefill where one program would loop too long.
Reference: vLLM `moe_align_block_size` (the CUDA kernel counts in shared memory and scatters with
atomics, so its order inside an expert is not deterministic; ours is).
"""

import torch
import triton
import triton.language as tl

# Above this many (token, slot) pairs the single-program kernel's serial chunk loop costs more than
# the ~15 launches of the torch path (a guess to be checked on the GPU: both are sync-free).
ONE_PROGRAM_MAX_NUMEL = 4096


def num_blocks_bound(numel: int, E: int, block_m: int) -> int:
    """Most M-blocks the alignment can produce: each live block holds >= 1 real row (so <= numel),
    and padding adds at most BLOCK_M-1 rows per expert. Static for given shapes: this sizes buffers."""
    return min(numel, triton.cdiv(numel + E * (block_m - 1), block_m))


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_blocks"])
def _align_one_program_kernel(ids_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr,
                              numel, expert_offset, E, num_blocks,
                              BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr):
    experts = tl.arange(0, E_P2)
    rows = tl.arange(0, CHUNK)
    real_expert = experts < E

    # Pass 1: tokens per local expert. A one-hot [CHUNK, E_P2] tile summed down its rows is a
    # histogram that needs no atomics; foreign ids (local id < 0 or >= E) match no column.
    counts = tl.zeros([E_P2], dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        idx = start + rows
        local = tl.load(ids_ptr + idx, mask=idx < numel, other=-1).to(tl.int32) - expert_offset
        hit = ((local[:, None] == experts[None, :]) & real_expert[None, :]
               & (idx < numel)[:, None]).to(tl.int32)                    # [CHUNK, E_P2]
        counts += tl.sum(hit, axis=0)

    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    seg_end = tl.cumsum(padded, axis=0)
    seg_start = seg_end - padded
    total = tl.sum(padded, axis=0)
    tl.store(num_padded_ptr, total)

    # Padding slots of each segment get the sentinel. They are disjoint from the slots pass 2
    # writes, so no barrier is needed between the two.
    pad = seg_start[:, None] + counts[:, None] + tl.arange(0, BLOCK_M)[None, :]  # [E_P2, BLOCK_M]
    tl.store(sorted_ptr + pad, pad * 0 + numel, mask=pad < seg_end[:, None])

    # Pass 2: scatter. Rank within the chunk = exclusive cumsum of the one-hot column; `cursor`
    # carries each expert's next free slot across chunks.
    cursor = seg_start
    for start in range(0, numel, CHUNK):
        idx = start + rows
        local = tl.load(ids_ptr + idx, mask=idx < numel, other=-1).to(tl.int32) - expert_offset
        hit = ((local[:, None] == experts[None, :]) & real_expert[None, :]
               & (idx < numel)[:, None]).to(tl.int32)
        slot = tl.cumsum(hit, axis=0) - hit + cursor[None, :]
        dest = tl.sum(hit * slot, axis=1)                                # [CHUNK]
        tl.store(sorted_ptr + dest, idx, mask=tl.sum(hit, axis=1) > 0)
        cursor += tl.sum(hit, axis=0)

    _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, num_blocks,
                        BLOCK_M, E_P2, CHUNK)


@triton.jit
def _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, num_blocks,
                        BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr):
    """Owner of block b = number of segments that end at or before its first row. Empty experts
    have zero-length segments and are counted correctly; past the end the count reaches E -> -1.
    The tail of sorted_ids (past num_padded) is never read by the GEMMs; it is filled anyway so
    every entry is defined."""
    real_expert = tl.arange(0, E_P2) < E
    for start in range(0, num_blocks, CHUNK):
        blk = start + tl.arange(0, CHUNK)
        first_row = blk * BLOCK_M
        owner = tl.sum(((seg_end[None, :] <= first_row[:, None]) & real_expert[None, :])
                       .to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blk, tl.where(owner < E, owner, -1), mask=blk < num_blocks)
        tail = first_row[:, None] + tl.arange(0, BLOCK_M)[None, :]      # [CHUNK, BLOCK_M]
        tl.store(sorted_ptr + tail, tail * 0 + numel,
                 mask=(tail >= total) & (blk < num_blocks)[:, None])


def _align_one_program(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded):
    e_p2 = triton.next_power_of_2(max(E, 2))
    chunk = max(16, min(128, 8192 // e_p2))  # keep the one-hot tile near 8K elements
    _align_one_program_kernel[(1,)](flat_ids, sorted_ids, block_expert, num_padded,
                                    flat_ids.numel(), expert_offset, E, block_expert.numel(),
                                    BLOCK_M=block_m, E_P2=e_p2, CHUNK=chunk, num_warps=4)


def _align_torch(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded):
    numel = flat_ids.numel()
    local = flat_ids.long() - expert_offset
    # Foreign ids go to bucket E, which sorts last and is never given a segment.
    local = torch.where((local >= 0) & (local < E), local, E)          # [numel]
    counts = torch.zeros(E + 1, dtype=torch.long, device=flat_ids.device)
    counts.scatter_add_(0, local, torch.ones_like(local))
    counts = counts[:E]
    padded = (counts + block_m - 1) // block_m * block_m
    seg_end = padded.cumsum(0)
    seg_start = seg_end - padded
    raw_start = counts.cumsum(0) - counts
    order = torch.sort(local, stable=True).indices                     # flat ids grouped by expert
    expert_of = local[order]
    rank = torch.arange(numel, device=flat_ids.device)
    valid = expert_of < E
    e = expert_of.clamp(max=E - 1)
    # Foreign entries are sent to one extra scratch slot past the end instead of being filtered
    # out with a boolean mask (which would be a host sync).
    dest = torch.where(valid, seg_start[e] + rank - raw_start[e], sorted_ids.numel())
    scratch = torch.full((sorted_ids.numel() + 1,), numel, dtype=torch.int32, device=flat_ids.device)
    scratch.scatter_(0, dest, order.int())
    sorted_ids.copy_(scratch[:-1])
    first_row = torch.arange(block_expert.numel(), device=flat_ids.device) * block_m
    owner = torch.searchsorted(seg_end, first_row, right=True)
    block_expert.copy_(torch.where(owner < E, owner, -1))
    num_padded.copy_(padded.sum().view(1))


def align_tokens_by_expert(topk_ids: torch.Tensor, E: int, block_m: int, expert_offset: int = 0,
                           method: str | None = None):
    """Group flattened topk_ids [T, K] by local expert -> (sorted_ids, block_expert, num_padded).

    method: "triton" (one program), "torch", or None to pick by size. Output is identical."""
    flat_ids = topk_ids.reshape(-1)
    numel = flat_ids.numel()
    n_blocks = num_blocks_bound(numel, E, block_m)
    dev = topk_ids.device
    sorted_ids = torch.empty(n_blocks * block_m, dtype=torch.int32, device=dev)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    if method is None:
        method = "triton" if numel <= ONE_PROGRAM_MAX_NUMEL else "torch"
    impl = {"triton": _align_one_program, "torch": _align_torch}[method]
    impl(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded)
    return sorted_ids, block_expert, num_padded
