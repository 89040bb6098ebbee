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

Four implementations with identical output (order inside an expert follows the flat index):
- `_align_parallel_kernel` ("parallel", the default up to ONE_PROGRAM_MAX_NUMEL pairs): one program
  per local expert (or per small group of experts when E is large). There is no grid-wide barrier
  inside a launch, so every program counts ALL ids itself (redundant but parallel, no atomics),
  derives every segment start from that histogram, then ranks and writes only its own experts'
  ids. block_expert and the tail past num_padded are shared out as contiguous block ranges. No
  program reads what another writes, so one launch suffices.
- `_align_one_program_kernel` ("triton"): the same two passes in ONE program over all experts. It
  was measured at 19 us per call on an H200 for OLMoE decode at batch 64 (512 pairs, E = 64,
  BLOCK_M = 16), 6.6% of the decode step: its chunk loops run serially on one SM while the rest
  of the GPU idles. That is why the parallel kernel exists; this one stays as a simpler reference.
- `_align_chunked` ("chunked", the default above ONE_PROGRAM_MAX_NUMEL pairs: prefill; moe_align_chunked.py, with
  its knobs CHUNKS / CHUNK_MIN): two launches. One program per chunk of ids histograms its chunk into a [chunks, E]
  table; then one program per chunk reads the whole table (segment starts from the column sums, its own offset in
  each segment from the rows above it) and scatters its chunk's ids. Work per program is one chunk, not all ids,
  so it scales to prefill's 10^4-10^5 pairs.
- `_align_torch` ("torch"): sync-free torch ops (scatter_add_, cumsum, stable sort, searchsorted), ~15
  launches whose cost barely depends on numel. It was prefill's path until the chunked kernels, and stays as the
  oracle: 151 µs a call graphed at DeepSeek-V2-Lite's 49,152 pairs (8,192 tokens; bench_align, s25 call 1).
The one-program and parallel kernels count with a one-hot [CHUNK, E] tile summed down its rows (O(numel·E) work per
program); the parallel one counts with tl.histogram instead (warp ballots, O(numel·log E)).
Measured on the H200 (scripts/bench_align.py, µs per call inside a CUDA graph): OLMoE at batch 64
(512 pairs, E = 64): one program 17.1, parallel one-hot 5.2, parallel histogram 4.2, torch 94;
Qwen3 (E = 128): 36.9 / 13.8 / 4.7 / 96; 4096 pairs (E = 64): 113 / 21.1 / 9.3 / 104. Chunked against parallel
(histogram) and torch (twenty-fifth session, call 1): 4096 pairs 24.6 / 9.2 / 104; 8192 pairs 27.1 / 17.2 / 146
(so "parallel" keeps sizes up to there); prefill, 8,192 tokens: DeepSeek-V2-Lite's 49,152 pairs 29.0 / 100.6 / 151,
OLMoE's 65,536 29.1 / 135.5 / 153, Qwen3's (E = 128) 62.3 / 207.6 / 150; DeepSeek-V3's 16,384 over 256 experts
85.5 / 85.0 / 153. In the graphed prefill of 64 x 128 tokens, torch against chunked: DeepSeek-V2-Lite +2.5%,
OLMoE +5.1%, Qwen3-30B-A3B +2.7%.
Reference: vLLM `moe_align_block_size` (the CUDA kernel counts in shared memory and scatters with
atomics, so its order inside an expert is not deterministic; ours is).
The Triton kernels here and in moe_align_chunked.py share `_load_local` and `_write_block_owners` (moe_align_common.py).
"""

import torch
import triton
import triton.language as tl

from .moe_align_chunked import _align_chunked
from .moe_align_common import _load_local, _write_block_owners
from .pdl import launch_args, wait_then_release

# Up to this many (token, slot) pairs "parallel" (every program counts all ids), above it LARGE_METHOD. Graphed µs
# a call, parallel / chunked (scripts/bench_align.py, docs/results/2026-12-02-s25, call 1): E = 64 at 4,096 pairs
# 9.2 / 24.6, at 8,192 17.2 / 27.1, at 49,152 100.6 / 29.0; E = 256 at 16,384 85.0 / 85.5. The name is historical
# (it once chose the one-program kernel); tests patch it.
ONE_PROGRAM_MAX_NUMEL = 8192
# Above ONE_PROGRAM_MAX_NUMEL pairs (prefill): "chunked" or "torch" (the sync-free torch ops, ~15 launches).
LARGE_METHOD = "chunked"
# Grid size the parallel kernel aims for: one program per expert up to this many experts, then
# 2, 4, ... experts per program, so the redundant histograms do not grow as E². A guess: tune it.
PARALLEL_PROGRAMS = 64


def num_blocks_bound(numel: int, E: int, block_m: int) -> int:
    """Most M-blocks the alignment can produce: each live block holds >= 1 real row (so <= numel),
    and padding adds at most BLOCK_M-1 rows per expert. Static for given shapes: this sizes buffers."""
    return min(numel, triton.cdiv(numel + E * (block_m - 1), block_m))


@triton.jit
def _count_local(ids_ptr, numel, expert_offset, E, E_P2: tl.constexpr, CHUNK: tl.constexpr,
                 HIST_BINS: tl.constexpr):
    """Ids per local expert, [E_P2] (zero past E); foreign ids count nowhere.
    HIST_BINS = 0: a one-hot [CHUNK, E_P2] tile summed down its rows, a histogram without atomics.
    HIST_BINS > 0: tl.histogram over HIST_BINS >= 2·E_P2 bins (a multiple of the warp size, as its
    lowering wants); foreign ids go to bin E_P2, and only the first E_P2 bins are kept."""
    experts = tl.arange(0, E_P2)
    real_expert = experts < E
    counts = tl.zeros([E_P2], dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        local = _load_local(ids_ptr, start + tl.arange(0, CHUNK), numel, expert_offset)
        if HIST_BINS > 0:
            mine = (local >= 0) & (local < E)
            bins = tl.histogram(tl.where(mine, local, E_P2), HIST_BINS)
            bins = tl.reshape(bins, [HIST_BINS // E_P2, E_P2])       # row 0 = the local experts
            first = tl.arange(0, HIST_BINS // E_P2)[:, None] == 0
            counts += tl.sum(tl.where(first, bins, 0), axis=0)
        else:
            hit = (local[:, None] == experts[None, :]) & real_expert[None, :]   # [CHUNK, E_P2]
            counts += tl.sum(hit.to(tl.int32), axis=0)
    return counts


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_blocks"])
def _align_one_program_kernel(ids_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr,
                              numel, expert_offset, E, num_blocks,
                              BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    experts = tl.arange(0, E_P2)
    rows = tl.arange(0, CHUNK)
    real_expert = experts < E

    # Pass 1: tokens per local expert.
    counts = _count_local(ids_ptr, numel, expert_offset, E, E_P2, CHUNK, 0)
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
        local = _load_local(ids_ptr, idx, numel, expert_offset)
        hit = ((local[:, None] == experts[None, :]) & real_expert[None, :]).to(tl.int32)
        slot = tl.cumsum(hit, axis=0) - hit + cursor[None, :]
        dest = tl.sum(hit * slot, axis=1)                                # [CHUNK]
        tl.store(sorted_ptr + dest, idx, mask=tl.sum(hit, axis=1) > 0)
        cursor += tl.sum(hit, axis=0)

    _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, 0, num_blocks,
                        BLOCK_M, E_P2, CHUNK)


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_blocks"])
def _align_parallel_kernel(ids_ptr, sorted_ptr, block_expert_ptr, num_padded_ptr,
                           numel, expert_offset, E, num_blocks,
                           BLOCK_M: tl.constexpr, E_P2: tl.constexpr, GROUP: tl.constexpr,
                           COUNT_CHUNK: tl.constexpr, HIST_BINS: tl.constexpr,
                           RANK_CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, PDL: tl.constexpr):
    """Program p owns local experts p·GROUP .. p·GROUP+GROUP-1 (columns >= E own nothing)."""
    wait_then_release(PDL)
    pid = tl.program_id(0)
    # Every program needs every segment start, and a launch has no grid-wide barrier to share a
    # histogram, so each one counts all ids itself: redundant, but in parallel and atomic-free.
    counts = _count_local(ids_ptr, numel, expert_offset, E, E_P2, COUNT_CHUNK, HIST_BINS)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    seg_end = tl.cumsum(padded, axis=0)
    total = tl.sum(padded, axis=0)
    tl.store(num_padded_ptr, total, mask=pid == 0)

    # Pick this program's experts out of the [E_P2] vectors (a one-hot gather across registers).
    mine = pid * GROUP + tl.arange(0, GROUP)                                   # [GROUP]
    pick = mine[:, None] == tl.arange(0, E_P2)[None, :]                        # [GROUP, E_P2]
    my_count = tl.sum(tl.where(pick, counts[None, :], 0), axis=1)
    my_end = tl.sum(tl.where(pick, seg_end[None, :], 0), axis=1)
    my_start = my_end - tl.sum(tl.where(pick, padded[None, :], 0), axis=1)
    _scatter_own_experts(ids_ptr, sorted_ptr, numel, expert_offset, E, mine, my_start, my_count,
                         my_end, BLOCK_M, RANK_CHUNK)

    # block_expert (live blocks and the -1 tail) and the sentinel tail of sorted_ids: an even,
    # contiguous share of all blocks per program, so no two programs write the same entry. Rows
    # below `total` are left to the segment owners above.
    per = tl.cdiv(num_blocks, tl.num_programs(0))
    first = pid * per
    _write_block_owners(seg_end, total, sorted_ptr, block_expert_ptr, numel, E, first,
                        tl.minimum(first + per, num_blocks), BLOCK_M, E_P2, BLOCK_CHUNK)


@triton.jit
def _scatter_own_experts(ids_ptr, sorted_ptr, numel, expert_offset, E, mine, my_start, my_count,
                         my_end, BLOCK_M: tl.constexpr, RANK_CHUNK: tl.constexpr):
    """Write the segments of experts `mine` [GROUP]: real flat indices in increasing order, then
    sentinel padding. Rank of an id = how many earlier ids went to the same expert: an exclusive
    cumsum of its one-hot column inside the chunk plus `cursor`, carried across chunks."""
    pad = (my_start + my_count)[:, None] + tl.arange(0, BLOCK_M)[None, :]      # [GROUP, BLOCK_M]
    tl.store(sorted_ptr + pad, pad * 0 + numel, mask=pad < my_end[:, None])
    live = mine < E              # the last group may run past E; foreign ids must not match those
    cursor = my_start
    for start in range(0, numel, RANK_CHUNK):
        idx = start + tl.arange(0, RANK_CHUNK)
        local = _load_local(ids_ptr, idx, numel, expert_offset)
        hit = ((local[:, None] == mine[None, :]) & live[None, :]).to(tl.int32)  # [RANK_CHUNK, G]
        slot = tl.cumsum(hit, axis=0) - hit + cursor[None, :]
        tl.store(sorted_ptr + tl.sum(hit * slot, axis=1), idx, mask=tl.sum(hit, axis=1) > 0)
        cursor += tl.sum(hit, axis=0)


def _align_one_program(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded, pdl=False):
    e_p2 = triton.next_power_of_2(max(E, 2))
    chunk = max(16, min(128, 8192 // e_p2))  # keep the one-hot tile near 8K elements
    _align_one_program_kernel[(1,)](flat_ids, sorted_ids, block_expert, num_padded,
                                    flat_ids.numel(), expert_offset, E, block_expert.numel(),
                                    BLOCK_M=block_m, E_P2=e_p2, CHUNK=chunk, num_warps=4, **launch_args(pdl))


def _align_parallel(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded,
                    experts_per_program=None, histogram=True, pdl=False):
    """experts_per_program (a power of 2) and histogram are knobs for scripts/bench_align.py.
    tl.histogram counts faster than the one-hot tile on the H200 at every size measured (e.g. 4.7
    vs 13.8 µs for Qwen3's 512 pairs over 128 experts, 9.3 vs 21.1 µs for 4096 over 64)."""
    e_p2 = triton.next_power_of_2(max(E, 2))
    group = experts_per_program or triton.next_power_of_2(triton.cdiv(E, PARALLEL_PROGRAMS))
    group = min(group, e_p2)
    if histogram:
        count_chunk, hist_bins = 1024, max(2 * e_p2, 64)  # 64: a whole warp on any GPU
    else:
        count_chunk, hist_bins = max(16, min(128, 8192 // e_p2)), 0
    _align_parallel_kernel[(triton.cdiv(E, group),)](
        flat_ids, sorted_ids, block_expert, num_padded,
        flat_ids.numel(), expert_offset, E, block_expert.numel(),
        BLOCK_M=block_m, E_P2=e_p2, GROUP=group, COUNT_CHUNK=count_chunk, HIST_BINS=hist_bins,
        RANK_CHUNK=max(128, 1024 // group),  # the [RANK_CHUNK, GROUP] rank tile stays ~1K
        BLOCK_CHUNK=32,  # a program's share of blocks is small (often 1-2 at decode)
        num_warps=4, **launch_args(pdl))


def _align_torch(flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded, pdl=False):
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
                           method: str | None = None, pdl: bool = False):
    """Group flattened topk_ids [T, K] by local expert -> (sorted_ids, block_expert, num_padded).

    method: "parallel" (one program per expert), "chunked" (a program per chunk of ids, two launches), "triton"
    (one program), "torch", or None to pick by size ("parallel" up to ONE_PROGRAM_MAX_NUMEL pairs, else
    LARGE_METHOD). Output is identical."""
    flat_ids = topk_ids.reshape(-1)
    numel = flat_ids.numel()
    n_blocks = num_blocks_bound(numel, E, block_m)
    dev = topk_ids.device
    sorted_ids = torch.empty(n_blocks * block_m, dtype=torch.int32, device=dev)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    if method is None:
        method = "parallel" if numel <= ONE_PROGRAM_MAX_NUMEL else LARGE_METHOD
    impls = {"parallel": _align_parallel, "chunked": _align_chunked, "triton": _align_one_program,
             "torch": _align_torch}
    impls[method](flat_ids, E, block_m, expert_offset, sorted_ids, block_expert, num_padded, pdl=pdl)
    return sorted_ids, block_expert, num_padded
