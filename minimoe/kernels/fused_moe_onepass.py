"""One-pass decode MoE: GEMM1 and GEMM2 in one launch, split over the expert's width I (opt-in, measured).

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width, S = cdiv(I, BLOCK_I)
slices of I, P = T·K·S programs.

The decode path (fused_moe_small.py) runs a step's experts as two kernels: GEMM1 writes h = silu(Wg x) ⊙ (Wu x)
[T·K, I], GEMM2 reads all of h back for every output column. Each kernel streams only 12-50 MB at batch 1, so each
pays its own ramp-up and tail; on the narrow experts (Qwen3-30B-A3B, OLMoE) the pair ran at ~50-60% of its bytes'
time inside the graphed step (docs/perf_notes.md). SwiGLU is elementwise in I, so the FFN splits along I with no
communication:

    out[t] = Σ_k w[t,k] · Σ_s W2[e_k][:, s] · ( silu(Wg[e_k][s] · x[t]) ⊙ (Wu[e_k][s] · x[t]) )

`_onepass_kernel`: one program per (token, slot, slice s of BLOCK_I columns of I). It computes its h slice in fp32
(2·BLOCK_I rows of w13, the whole of D), rounds it to x.dtype (as the two-kernel path stores h), and at once
multiplies it by its BLOCK_I columns of W2[e] ([D, BLOCK_I], BLOCK_D rows a step), writing w[t,k] times that fp32
partial to part[pair·S + s, :]. No h buffer, no second launch of the weights' pass; every weight byte is still read
exactly once. `_reduce_kernel` then sums each token's K·S partials in a fixed order (so a graph replay gives the
bits of an eager call; atomics would not) and writes out[t] in x.dtype. The partials cost 4·T·K·S·D bytes written
and read: 1.6 MB for Qwen3-30B-A3B at BLOCK_I 32, against 75 MB of weights.

Foreign slots (expert parallelism) exit at once and the reduce masks their partials off: an exact 0. No shared
expert (fused_moe falls back to the two-kernel path when one rides along).
Design: split-I ("split-K over the intermediate") MoE decode as in FlashInfer / TensorRT-LLM's fused MoE
discussions; the fixed-order second pass instead of atomics is this engine's reproducibility rule.

Switch: `ONEPASS` below ({(E, I, D, K) or None: tile}; empty = off), read by fused_moe for the "small" plan;
scripts/step_probe.py flips it inside the graphed step.
"""
import torch
import triton
import triton.language as tl

from .fused_moe_small import _local_expert, _swiglu_rows
from .moe_configs import on_gpu
from .pdl import launch_args, release_args, wait_then_release

ONEPASS_KEYS = ("BLOCK_I", "BLOCK_K", "BLOCK_D", "num_warps", "num_stages", "REDUCE_D")

# (E, I, D, K) or None (every shape) -> tile keys over onepass_default_config's; empty: the two-kernel path.
ONEPASS: dict[tuple[int, int, int, int] | None, dict] = {}


def onepass_default_config(I: int, D: int) -> dict:
    """BLOCK_I columns of I a program (its W2 reads are BLOCK_I·2 contiguous bytes a row: 64 at BLOCK_I 32 in bf16),
    BLOCK_K of D a GEMM1 step, BLOCK_D rows of W2 a GEMM2 step; REDUCE_D output columns a reduce program."""
    if not on_gpu():   # the interpreter pays per program and per element
        return {"BLOCK_I": 16, "BLOCK_K": 32, "BLOCK_D": 32, "num_warps": 4, "num_stages": 1, "REDUCE_D": 32}
    return {"BLOCK_I": 32, "BLOCK_K": min(512, triton.next_power_of_2(D)), "BLOCK_D": 128, "num_warps": 4,
            "num_stages": 2, "REDUCE_D": 64}


def onepass_config(E: int, I: int, D: int, K: int) -> dict | None:
    """The tile for this expert shape when ONEPASS turns the one-pass path on for it, else None.
    ValueError: a key outside ONEPASS_KEYS (a misspelt knob must not measure the baseline twice)."""
    over = ONEPASS.get((E, I, D, K), ONEPASS.get(None))
    if over is None:
        return None
    bad = set(over) - set(ONEPASS_KEYS)
    if bad:
        raise ValueError(f"ONEPASS: unknown keys {sorted(bad)}; a tile takes {', '.join(ONEPASS_KEYS)}")
    return dict(onepass_default_config(I, D), **over)


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _onepass_kernel(x_ptr, w13_ptr, w2_ptr, part_ptr, ids_ptr, weights_ptr, top_k, expert_offset, E, I, D,
                    stride_xt, stride_w13e, stride_w13n, stride_w2e, stride_w2d, stride_w2i,
                    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
                    PDL: tl.constexpr):
    """part[pid, :] = w[pair] · W2[e][:, s] · round(silu(Wg[e][s] x[t]) ⊙ (Wu[e][s] x[t])) in fp32, pid = pair·S + s."""
    wait_then_release(PDL)
    pid = tl.program_id(0)
    n_slices = tl.cdiv(I, BLOCK_I)
    pair, s = pid // n_slices, pid % n_slices
    expert = _local_expert(ids_ptr, pair, expert_offset, E)
    if expert < 0:
        return                                   # foreign slot: the reduce masks its partials off
    e64 = expert.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    cols = s * BLOCK_I + tl.arange(0, BLOCK_I)
    rows = cols % I                              # past I: wrapped rows (loads in bounds), h forced to 0 below
    h = _swiglu_rows(x_ptr + (pair // top_k).to(tl.int64) * stride_xt + offs_k,
                     w13_ptr + e64 * stride_w13e + rows[:, None] * stride_w13n + offs_k[None, :],
                     I * stride_w13n, D, BLOCK_I, BLOCK_K, STAGES)                # [BI] fp32
    h = tl.where(cols < I, h.to(x_ptr.dtype.element_ty).to(tl.float32), 0.0)   # rounded as GEMM1 stores h
    route_w = tl.load(weights_ptr + pair)
    offs_d = tl.arange(0, BLOCK_D)
    w2_ptrs = w2_ptr + e64 * stride_w2e + offs_d[:, None] * stride_w2d + rows[None, :] * stride_w2i  # [BD, BI]
    out_ptrs = part_ptr + pid.to(tl.int64) * D + offs_d
    for d0 in tl.range(0, D, BLOCK_D, num_stages=STAGES):
        d_mask = offs_d < D - d0
        w = tl.load(w2_ptrs, mask=d_mask[:, None], other=0.0, eviction_policy="evict_first")
        tl.store(out_ptrs, tl.sum(w.to(tl.float32) * h[None, :], axis=1) * route_w, mask=d_mask)
        w2_ptrs += BLOCK_D * stride_w2d
        out_ptrs += BLOCK_D


@triton.jit(do_not_specialize=["top_k", "expert_offset", "E"])
def _reduce_kernel(part_ptr, out_ptr, ids_ptr, top_k, expert_offset, E, D, n_slices, stride_ot,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """out[t, cols] = Σ_k Σ_s part[(t·K + k)·S + s, cols], always in this order; foreign slots add nothing."""
    wait_then_release(PDL)
    t, blk = tl.program_id(0), tl.program_id(1)
    cols = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in range(top_k):
        pair = t * top_k + k
        s_lim = tl.where(_local_expert(ids_ptr, pair, expert_offset, E) >= 0, n_slices, 0)
        base = part_ptr + (pair * n_slices).to(tl.int64) * D
        for s0 in range(0, n_slices, BLOCK_S):
            ss = s0 + offs_s
            p = tl.load(base + ss[:, None].to(tl.int64) * D + cols[None, :],
                        mask=(ss < s_lim)[:, None] & (cols < D)[None, :], other=0.0)
            acc += tl.sum(p, axis=0)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < D)


def fused_moe_onepass(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor,
                      topk_weights: torch.Tensor, expert_offset: int, cfg: dict, pdl: bool = False) -> torch.Tensor:
    """out [T, D] in x.dtype, as fused_moe (inputs already checked there: x [T, D], w13 [E, 2I, D], w2 [E, D, I],
    ids / topk_weights [T, K]); cfg from `onepass_config`. Buffers: part [T·K·S, D] fp32. w2 may be any strided
    [E, D, I] view (scripts/bench_onepass.py times a transposed copy, whose slices are contiguous rows)."""
    (T, D), (E, two_i, _), K = x.shape, w13.shape, ids.shape[1]
    I = two_i // 2
    n_slices = triton.cdiv(I, cfg["BLOCK_I"])
    part = torch.empty(T * K * n_slices, D, device=x.device, dtype=torch.float32)     # [T·K·S, D]
    weights = topk_weights.float().contiguous().view(-1)                               # [T·K]
    _onepass_kernel[(T * K * n_slices,)](
        x, w13, w2, part, ids, weights, K, expert_offset, E, I, D,
        x.stride(0), w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1), w2.stride(2),
        BLOCK_I=cfg["BLOCK_I"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    out = x.new_empty(T, D)
    block_s = min(32, triton.next_power_of_2(n_slices))
    _reduce_kernel[(T, triton.cdiv(D, cfg["REDUCE_D"]))](
        part, out, ids, K, expert_offset, E, D, n_slices, out.stride(0),
        BLOCK_S=block_s, BLOCK_D=cfg["REDUCE_D"], num_warps=4,
        **release_args(pdl))                     # after a many-program kernel: never launched early (pdl.py)
    return out
