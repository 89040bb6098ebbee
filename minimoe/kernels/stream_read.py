"""A read-only bandwidth probe: how fast can this GPU stream bytes it never writes back?

A decode step is almost pure reads (weights, KV cache), so its ceiling is a read stream, not a
copy. `torch.sum` is a reduction tuned for many shapes and reads a little below what a plain
streaming kernel reaches; a GEMV-shaped kernel that beats it would look like ">100% of peak".
Here each of `programs` programs sums one contiguous slice in BLOCK-wide tiles (16-byte loads,
`evict_first` so the stream does not thrash L2) and writes a single float, so the traffic is the
array once. Each loop step issues UNROLL independent tile loads (the adds wait on them, not the
loads on the adds), so a program can keep up to UNROLL x BLOCK elements in flight: the fused MoE GEMMs (TMA, several stages) read Mixtral's experts at ~4.25-4.4 TB/s on an
H200 where one tile in flight read ~4.13 (docs/results.md, the "(!)" rows). `measure_ceilings`
takes the best of a few grid sizes and depths.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _stream_sum_kernel(x_ptr, out_ptr, per_program, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    pid = tl.program_id(0)
    base = x_ptr + pid.to(tl.int64) * per_program
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, per_program, BLOCK * UNROLL):
        for u in tl.static_range(UNROLL):
            acc += tl.load(base + start + u * BLOCK + tl.arange(0, BLOCK), eviction_policy="evict_first").to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def stream_sum(x: torch.Tensor, programs: int, block: int = 4096, unroll: int = 1) -> torch.Tensor:
    """x 1-D, numel divisible by programs * block * unroll -> [programs] partial sums (float32)."""
    assert x.dim() == 1 and x.numel() % (programs * block * unroll) == 0, (x.numel(), programs, block, unroll)
    out = torch.empty(programs, dtype=torch.float32, device=x.device)
    _stream_sum_kernel[(programs,)](x, out, x.numel() // programs, BLOCK=block, UNROLL=unroll, num_warps=8)
    return out
