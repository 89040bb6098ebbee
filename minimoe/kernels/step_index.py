"""A step's positions and new lengths from the cache's lengths, in one launch.

Shape legend: B sequences, S new tokens a sequence this step.

Every forward starts with the indices its kernels read: positions [B, S] (int64, where each new token goes) and
seq_lens [B] (int32, valid entries once this step's K / V are written), from the cache's lengths [B] (int32). In
PyTorch that is two elementwise launches (lengths[:, None] + arange(S), lengths + n_valid), each a ~1-2 µs kernel on
the graphed decode step's critical path (kv_cache.py measured them: docs/results/2026-12-03-s31). One program a
sequence writes both here. Integer arithmetic: the same values as the PyTorch expressions, exactly.
"""
import torch
import triton
import triton.language as tl

BLOCK = 128      # positions a program writes per loop step


@triton.jit
def _step_index_kernel(len_ptr, valid_ptr, pos_ptr, seq_ptr, S, HAS_VALID: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    start = tl.load(len_ptr + b)
    offs = tl.arange(0, BLOCK)
    for s0 in range(0, S, BLOCK):
        i = s0 + offs
        tl.store(pos_ptr + b.to(tl.int64) * S + i, start.to(tl.int64) + i, mask=i < S)
    n = tl.load(valid_ptr + b) if HAS_VALID else S
    tl.store(seq_ptr + b, (start + n).to(tl.int32))


def step_index(lengths: torch.Tensor, n_new: int, n_valid: torch.Tensor | None = None):
    """lengths [B] int32 -> (positions [B, n_new] int64 = lengths[:, None] + arange(n_new), seq_lens [B] int32 =
    lengths + (n_valid or n_new)). n_valid [B] int32 or None. Raises ValueError for other dtypes or shapes."""
    B = lengths.shape[0]
    if (lengths.dtype != torch.int32 or lengths.dim() != 1 or n_new < 0
            or (n_valid is not None and (n_valid.shape != (B,) or n_valid.dtype != torch.int32))):
        raise ValueError(f"step_index: lengths {tuple(lengths.shape)} {lengths.dtype}, n_new {n_new}, n_valid "
                         f"{None if n_valid is None else (tuple(n_valid.shape), n_valid.dtype)}: int32 [B] expected")
    positions = torch.empty(B, n_new, dtype=torch.int64, device=lengths.device)
    seq_lens = torch.empty(B, dtype=torch.int32, device=lengths.device)
    if B:
        _step_index_kernel[(B,)](lengths, lengths if n_valid is None else n_valid, positions, seq_lens, n_new,
                                 HAS_VALID=n_valid is not None, BLOCK=BLOCK, num_warps=1)
    return positions, seq_lens
