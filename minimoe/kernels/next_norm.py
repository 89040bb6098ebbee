"""The next layer's residual add + RMSNorm as the epilogue of the MoE's last launch.

A pre-norm stack runs, between an MoE layer and the next layer's attention,

    y       = Σ_k w[t,k] · expert_k(h[t])  (+ shared)     [T, D]   the MoE's last launch writes y
    s, h'   = y + r,  rmsnorm(y + r)                       [T, D]   one more launch (kernels/rmsnorm.py)

At decode sizes that second launch moves ~8 KB a token and costs a kernel's ramp, its wait on the MoE and its own
drain: 1.9-2.0 µs a layer plus ~0.45 µs idle before it (PDL off) in the batch-1 and batch-64 profiles
(docs/perf_notes.md). Here the MoE's last launch ends with it, in the rounding order of the two-launch path
(y rounded to the activations' dtype, then rmsnorm.py's roundings): s is bit-identical, h too but for the fp32
summation order of mean(s²), which follows the launch's warps:

* the decode ("small") variant, `last_program_norm`: GEMM2 (fused_moe_small.py `_down_combine_kernel`) has
  cdiv(D, BLOCK_N) programs a token that each store BLOCK_N columns of y. Each then arrives at the token's
  counter (an atomic in KVCache.counters, left zeroed); the last to arrive reads the whole row of y back from L2
  and runs the norm. The router's fold (gate_splitk.py, eighth session) is the same pattern.
* the aligned variant, `_combine_norm_kernel`: the combine (moe_combine.py) with one program a token over the
  whole row, its K routed (+ S shared) row loads unrolled so they are all in flight at once, then the norm on the
  fp32 sum in registers. No counter: the program holds the row.

Shapes: T tokens, D hidden, K experts a token, S shared virtual experts (fused_moe.py). `NextNorm` carries the norm's
inputs and the two outputs the next layer reads (h' normed, s the new residual stream), both [T, D] contiguous.
Idea: vLLM's and SGLang's fused "add + RMSNorm" kernels put the residual add inside the norm; TensorRT-LLM's
`moe_finalize_allreduce` (FlashInfer's `trtllm_moe_finalize_allreduce_fusion`, the MOE_FINALIZE_ALLREDUCE_RESIDUAL_RMS_NORM
pattern) folds the top-k reduction, the tensor-parallel all-reduce, the residual add and the next RMSNorm into one
kernel. Here there is no all-reduce (one GPU). Where the engine uses it: minimoe/next_norm.py.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release
from .rmsnorm import add_rms_norm_values

MAX_D = 8192          # the widest row one program normalises in registers here
COMBINE_WARPS = 8     # warps of the aligned variant's one-program-a-token combine (2,048-wide rows: 8 values a thread)


class NextNorm(NamedTuple):
    """The next RMSNorm folded into the MoE (`fused_moe(..., norm=...)`): residual [T, D] (the stream before this
    layer's output is added), weight [D], eps; outputs h [T, D] = norm(y + residual) and s [T, D] = y + residual;
    counters: zeroed int32 with >= T entries, left zeroed (the decode variant's arrival counters; KVCache.counters)."""
    residual: torch.Tensor
    weight: torch.Tensor
    eps: float
    h: torch.Tensor
    s: torch.Tensor
    counters: torch.Tensor | None = None


def check(x: torch.Tensor, norm: NextNorm, counters_needed: bool) -> None:
    """Raises ValueError unless `norm` fits x [T, D]: shapes, x's dtype and device everywhere, contiguous, D <= MAX_D,
    and (decode variant) int32 counters with >= T entries."""
    T, D = x.shape
    tensors = (norm.residual, norm.h, norm.s)
    if D > MAX_D or any(tuple(t.shape) != (T, D) for t in tensors) or tuple(norm.weight.shape) != (D,):
        raise ValueError(f"the next norm's tensors do not fit x {tuple(x.shape)} (rows of at most {MAX_D})")
    if any(t.dtype != x.dtype or t.device != x.device or not t.is_contiguous() for t in tensors + (norm.weight,)):
        raise ValueError("the next norm's residual, weight and outputs must be contiguous, in x's dtype and device")
    if counters_needed and (norm.counters is None or norm.counters.dtype != torch.int32
                            or norm.counters.numel() < T or norm.counters.device != x.device):
        raise ValueError(f"the decode variant's next norm needs zeroed int32 counters with >= {T} entries")


@triton.jit
def last_program_norm(y_ptr, t, stride_yt, cnt_ptr, n_programs, res_ptr, nw_ptr, h_ptr, s_ptr, stride_r, D, eps,
                      BLOCK_ROW: tl.constexpr):
    """Called by each of token t's n_programs programs after it stored its columns of y[t] (row stride stride_yt):
    the last to arrive resets the counter and stores s[t] = y[t] + residual[t] and h[t] = rmsnorm(s[t])."""
    tl.debug_barrier()                                   # every thread's columns are out before the count
    cnt = cnt_ptr + t
    if tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu") == n_programs - 1:
        tl.store(cnt, 0)
        offs = tl.arange(0, BLOCK_ROW)                   # volatile: the other programs' columns, never a cached line
        y = tl.load(y_ptr + t * stride_yt + offs, mask=offs < D, other=0.0, volatile=True)
        add_rms_norm_values(y, res_ptr, nw_ptr, h_ptr, s_ptr, t, stride_r, D, eps, BLOCK_ROW, True)


@triton.jit(do_not_specialize=["expert_offset", "E", "numel"])
def _combine_norm_kernel(y_ptr, topk_ids_ptr, res_ptr, nw_ptr, h_ptr, s_ptr, expert_offset, E, D, numel,
                         stride_r, eps, K: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """Program t: the combine of moe_combine.py over the whole row (y [T·K + T·S, D] in (token, slot) order, then
    the shared rows; foreign slots masked off), rounded to y's dtype, then s[t], h[t] as rmsnorm.py."""
    wait_then_release(PDL)
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in tl.static_range(K):                         # unrolled: the K + S row loads are in flight together
        flat = t * K + k
        local = tl.load(topk_ids_ptr + flat).to(tl.int32) - expert_offset
        col_end = tl.where((local >= 0) & (local < E), D, 0)
        acc += tl.load(y_ptr + flat * D + cols, mask=cols < col_end, other=0.0).to(tl.float32)
    for j in tl.static_range(S):
        acc += tl.load(y_ptr + (numel + t * S + j) * D + cols, mask=cols < D, other=0.0).to(tl.float32)
    add_rms_norm_values(acc.to(y_ptr.dtype.element_ty), res_ptr, nw_ptr, h_ptr, s_ptr, t, stride_r, D, eps,
                        BLOCK_D, True)


def combine_norm(y: torch.Tensor, ids: torch.Tensor, norm: NextNorm, expert_offset: int, E: int, numel: int, S: int,
                 pdl: bool = False) -> torch.Tensor:
    """The aligned variant's combine + next norm: y [T·K + T·S, D], ids [T, K] -> norm.h (s written too)."""
    T, K = ids.shape
    D = y.shape[1]
    _combine_norm_kernel[(T,)](y, ids, norm.residual, norm.weight, norm.h, norm.s, expert_offset, E, D, numel,
                               norm.residual.stride(0), norm.eps, K=K, S=S, BLOCK_D=triton.next_power_of_2(D),
                               num_warps=COMBINE_WARPS, **launch_args(pdl))
    return norm.h
