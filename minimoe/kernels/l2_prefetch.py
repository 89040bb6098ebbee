"""Ask the L2 for a list of byte ranges (weights a later kernel will read), from a side stream.

Shape legend: C chunks, each (address, bytes) with a 16-byte-aligned address and a size that is a positive
multiple of 16; P programs of BLOCK threads.

A batch-1 decode step is a chain of dependent kernels: norm -> q/k/v GEMV -> attention -> o GEMV -> router ->
experts. Only the GEMVs keep the HBM busy; between them (the norm, the attention over a short cache, the router)
it is idle, and each GEMV pays its own ramp and tail (the twentieth session's profile: Qwen3-30B-A3B's q/k/v and o
GEMVs at ~30% of their bytes' time). The weights do not depend on the token, so a kernel on a second stream can
issue `cp.async.bulk.prefetch.L2` for the next GEMV's weights while the chain is elsewhere; the GEMV then finds
them in the L2. The expert kernels load with evict_first, so a stream of expert bytes evicts its own lines
before the prefetched ones; EVICT_LAST adds the L2::evict_last cache policy to the prefetch as well.

`l2_prefetch_kernel` program p issues the prefetches of chunks p*BLOCK .. p*BLOCK + BLOCK - 1 (one a thread:
BLOCK equals the program's threads, so no chunk is issued twice) and exits: a prefetch has no completion to
wait for. The table is padded to a multiple of BLOCK with copies of its last chunk (`chunk_table`), so no
lane needs a mask. sm90+ only (the PTX instruction); the TRITON_INTERPRET interpreter cannot run inline asm.
Source: the PTX ISA's cp.async.bulk.prefetch (sm_90); CUTLASS and DeepGEMM issue it for TMA tiles.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 32           # chunks a program (one a thread: one warp)


@triton.jit
def _l2_prefetch_kernel(addr_ptr, size_ptr, BLOCK: tl.constexpr, EVICT_LAST: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    addr = tl.load(addr_ptr + offs)                    # int64 byte addresses
    size = tl.load(size_ptr + offs)                    # int32 bytes, multiples of 16
    if EVICT_LAST:
        tl.inline_asm_elementwise(
            "{\n .reg .b64 pol;\n createpolicy.fractional.L2::evict_last.b64 pol, 1.0;\n"
            " cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol;\n mov.u32 $0, 0;\n}",
            "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n mov.u32 $0, 0;", "=r,l,r",
                                  [addr, size], dtype=tl.int32, is_pure=False, pack=1)


def chunk_table(tensors, chunk_bytes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The byte ranges of `tensors` (each contiguous; overlapping or adjacent ranges merged, so a joined buffer's
    views are asked for once) cut into chunks of at most `chunk_bytes` -> (addr int64 [C'], size int32 [C']) on
    `device`, C' a multiple of BLOCK (the last chunk repeated). A range's ends are rounded out to 16 bytes (a
    prefetch is a hint: a few bytes past a tensor stay inside its 16-byte-aligned allocation block). Raises
    ValueError for a tensor that is not contiguous, a chunk size that is not a positive multiple of 16, or an
    empty list."""
    if chunk_bytes <= 0 or chunk_bytes % 16:
        raise ValueError(f"chunk_table: chunk_bytes {chunk_bytes} is not a positive multiple of 16")
    ranges = []
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError(f"chunk_table: a tensor {tuple(t.shape)} is not contiguous")
        if t.numel():
            start = t.data_ptr() // 16 * 16
            ranges.append((start, -(-(t.data_ptr() + t.numel() * t.element_size()) // 16) * 16))
    if not ranges:
        raise ValueError("chunk_table: no bytes to prefetch")
    merged = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    addrs, sizes = [], []
    for lo, hi in merged:
        for a in range(lo, hi, chunk_bytes):
            addrs.append(a)
            sizes.append(min(chunk_bytes, hi - a))
    pad = -len(addrs) % BLOCK
    addrs += [addrs[-1]] * pad
    sizes += [sizes[-1]] * pad
    return (torch.tensor(addrs, dtype=torch.int64, device=device),
            torch.tensor(sizes, dtype=torch.int32, device=device))


def l2_prefetch(addr: torch.Tensor, size: torch.Tensor, evict_last: bool = False) -> None:
    """Issue the table's prefetches (`chunk_table`'s output) on the current stream: one launch of
    len(addr) / BLOCK programs. Raises ValueError for a table that is not chunk_table's shape."""
    if addr.dtype != torch.int64 or size.dtype != torch.int32 or addr.shape != size.shape or addr.numel() % BLOCK:
        raise ValueError("l2_prefetch: addr int64 and size int32 of one length, a multiple of BLOCK")
    _l2_prefetch_kernel[(addr.numel() // BLOCK,)](addr, size, BLOCK=BLOCK, EVICT_LAST=bool(evict_last),
                                                  num_warps=max(1, BLOCK // 32))
