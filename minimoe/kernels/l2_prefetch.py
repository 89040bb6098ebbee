"""Ask the L2 for the first bytes of weights a later kernel will stream, while the HBM has little else to do.

At decode batch 16-64 an MoE layer's experts stream at ~98% of the HBM's bandwidth (the aligned GEMM1 and GEMM2,
docs/perf_notes.md), but between two layers' expert GEMMs come ~25-80 µs of small kernels (norms, q/k/v, attention,
o, router, top-k, alignment) that read a few MB each and leave the HBM mostly idle. The L2 (50 MB on the H200)
could take the first tiles the next GEMM1 will read during that window, so that GEMM1 reads fewer bytes from the
HBM. This kernel issues those requests and nothing else:

    program p, lane l:   cp.async.bulk.prefetch.L2 [base + (p·LANES + l)·CHUNK, CHUNK bytes]   (pdl.prefetch_l2)
                         (segment a's chunks first, then segment b's; lanes past a segment re-ask its last chunk)
    then                 gdc_wait / gdc_launch_dependents (kernels/pdl.py)

A prefetch is a hint: no register is written and the kernel does not wait for the bytes, so it is done in ~1 µs and
the data arrive while the next kernels run. Launched with PDL it starts while its predecessor drains and waits for
that predecessor only at its end, so its successor (which waits for it) still sees every earlier write: the chain's
ordering is kept, and nothing it does changes what any kernel computes (the weights are read-only).

Which bytes: the aligned fused MoE (kernels/fused_moe.py) runs its M-blocks in expert order (the fused shared expert's
blocks first) with GROUP_M blocks sweeping the N tiles together, so the first programs read the first experts'
gate/up rows: the prefix of the shared w13, then of w13 [E, 2I, D], is what the first wave reads. moe.py's caller
(`expert_prefetch.py`) picks the segments and the size. sm90+ only (the PTX instruction); the CPU interpreter has no
inline assembly, so the caller never launches it there.

Idea: the L2 prefetch of weights ahead of a memory-bound GEMM, as TensorRT-LLM's and FlashInfer's "weight prefetch"
options for small-batch decode do with a side stream; here it is one kernel in the same stream, graph-capturable.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, prefetch_l2_lanes, wait_then_release

CHUNK_BYTES = 16384   # bytes one lane asks for (a multiple of 16)
LANES = 128           # chunks a program asks for: one a thread of its 4 warps


@triton.jit
def _l2_prefetch_kernel(a_ptr, a_chunks, b_ptr, b_chunks, progs_a,
                        CHUNK: tl.constexpr, LANES: tl.constexpr, PDL: tl.constexpr):
    """Programs 0 .. progs_a - 1 ask for segment a's chunks, the rest for segment b's (CHUNK in elements)."""
    pid = tl.program_id(0)
    lane = tl.arange(0, LANES)
    nbytes = tl.full((LANES,), CHUNK * a_ptr.dtype.element_ty.primitive_bitwidth // 8, tl.int32)
    if pid < progs_a:
        idx = tl.minimum(pid.to(tl.int64) * LANES + lane, a_chunks - 1)
        prefetch_l2_lanes(a_ptr + idx * CHUNK, nbytes, tl.full((LANES,), LANES, tl.int32))
    else:
        idx = tl.minimum((pid - progs_a).to(tl.int64) * LANES + lane, b_chunks - 1)
        prefetch_l2_lanes(b_ptr + idx * CHUNK, nbytes, tl.full((LANES,), LANES, tl.int32))
    wait_then_release(PDL)


def plan_chunks(sizes: list[int], budget: int, chunk: int = CHUNK_BYTES) -> list[int]:
    """Whole chunks to ask for from each segment, in order, within `budget` bytes: sizes and budget in bytes,
    chunk a multiple of 16. [2048, 100] with budget 3000 and chunk 1024 -> [2, 0] (a partial chunk is never
    asked for, so no request reaches past a tensor's end)."""
    out = []
    for size in sizes:
        n = max(0, min(size, budget) // chunk)
        out.append(n)
        budget -= n * chunk
    return out


def l2_prefetch(segments: list[torch.Tensor], budget_bytes: int, pdl: bool = False) -> int:
    """Ask the L2 for the first `budget_bytes` of segments (one or two contiguous CUDA tensors of one 2-byte or
    4-byte dtype, in the order their bytes will be read) in one launch; returns the bytes asked for (0: nothing
    launched). ValueError for more than two segments, mixed dtypes or a non-contiguous tensor."""
    if not 1 <= len(segments) <= 2:
        raise ValueError(f"l2_prefetch takes one or two segments, got {len(segments)}")
    if any(not t.is_contiguous() or t.dtype != segments[0].dtype for t in segments):
        raise ValueError("l2_prefetch segments must be contiguous and of one dtype")
    elt = segments[0].element_size()
    counts = plan_chunks([t.numel() * elt for t in segments], budget_bytes)
    if sum(counts) == 0:
        return 0
    a, na = segments[0], counts[0]
    b, nb = (segments[1], counts[1]) if len(segments) == 2 else (a, 0)
    if na == 0:                      # a is shorter than one chunk: b alone
        a, na, b, nb = b, nb, b, 0
    progs_a = triton.cdiv(na, LANES)
    grid = (progs_a + triton.cdiv(nb, LANES),)
    _l2_prefetch_kernel[grid](a, na, b, max(nb, 1), progs_a, CHUNK=CHUNK_BYTES // elt, LANES=LANES, num_warps=4,
                              **launch_args(pdl))
    return (na + nb) * CHUNK_BYTES
