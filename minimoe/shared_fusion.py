"""Shared experts inside the routed experts' kernels (`--fuse-shared`).

DeepSeek (DeepSeekMoE, V2, V3) and Qwen1.5/2-MoE add an always-on shared expert to every MoE layer:

    y = routed(h) + shared(h)            shared(h) = W2s (silu(Wgs h) * (Wus h))  [* sigmoid(h · wsg), Qwen2]

Run apart (moe.py), at batch 1 the shared expert is four launches after the routed two: the gate/up GEMV,
SiLU*up, the down GEMV and the add. Each reads a few MB and pays a kernel's ramp and tail (~2.5-3 µs at these
sizes, docs/perf_notes.md). Its weights are those of one more expert, so they can ride in the routed
experts' decode kernels instead (kernels/fused_moe_small.py, `SharedExpert`):

    GEMM1   T·K·cdiv(I, BN) routed programs, then T·cdiv(I_S, BN) programs for the shared expert -> hs [T, I_S]
    GEMM2   each program walks its token's K routed slots, then the shared expert's I_S, into one fp32
            accumulator (times sigmoid(h · wsg) for Qwen2, computed by the program itself): one rounding

Two launches a layer instead of six, the same bytes, no copy of the weights and no change to the router.
The sum is taken in fp32 and rounded once, where the unfused path rounds routed and shared to the model
dtype before adding them: results agree to rounding, not bit for bit (tests/test_shared_fusion.py).
SGLang's "shared experts fusion" for DeepSeek-V3 appends the shared expert to the routed ones as expert E
with routing weight 1 (a copy of the weights, and top-k + 1 slots); this keeps the weights where they are.

In the aligned variant (from the first T it plans, 3 tokens for DeepSeek-V2-Lite, 4 for Qwen1.5-MoE, 9 for
DeepSeek-V3, to ALIGNED_MAX_T: decode batches and short prefills), apart the shared expert is a cuBLAS GEMM,
SiLU*up, a split-K cuBLAS GEMM and its reduce, and the add: ~20 µs a DeepSeek-V2-Lite layer at bs 64 for ~8 µs of
bytes (docs/results/2026-12-02-s23, call 1's profile). Fused, its width I_S is cut into S = I_S / I virtual experts
of the routed width I that every token routes to with weight 1 (Qwen2: sigmoid(h · wsg), a matmul and a sigmoid
before the GEMMs):

    GEMM1 / GEMM2   S·cdiv(T, BLOCK_M) shared M-blocks ahead of the routed ones, reading the shared weights in place
                    (virtual expert j: gate rows j·I.., up rows I_S + j·I.., w2 columns j·I..)
    combine         each token's K routed rows of y, then its S shared rows, summed in fp32: one rounding

Where it applies (`fits`): `--fuse-shared on` (settings.py resolves `auto` to on for `--experts fused`,
unquantized, without an EP / TP plan), a layer with a shared expert, plain (unquantized, unsharded, contiguous)
weights in x's dtype, nothing hooked on the experts or shared modules (calibration, expert-parallel dispatch), and
either one token (MAX_T) that the fused MoE runs as its decode variant (`fused_moe.plan` == "small"), or up to
ALIGNED_MAX_T tokens in the aligned variant with I_S a multiple of I (DeepSeek-V2-Lite 2, Qwen1.5-MoE 4, DeepSeek-V3
1). Everything else runs the two parts apart, as before.

Why one token in the decode variant: each token's programs read the shared expert's weights again (the unfused
path's GEMM reads them once for all tokens). Measured on the H200 (docs/results/2026-12-01-s10), fused against apart
in the same call: whole models at bs 1 DeepSeek-V2-Lite +4.8%, Qwen1.5-MoE +11.6% out tok/s; at bs 2 -0.0 to -0.2%
(calls 1-2: 604.3 -> 603.0 and 726.1 -> 725.8, 603.0 -> 602.4 and 724.9 -> 723.7); one layer in a graph, fused /
apart (the review's probe, PDL off): T = 1 0.77 (Qwen1.5), 0.88 (DeepSeek-V2-Lite), 1.01 (DeepSeek-V3); T = 2 0.98,
1.00, 1.05; T = 3 1.17 (Qwen1.5); DeepSeek-V3 T = 4-8 1.02-1.27.
"""
from __future__ import annotations

import torch

from .experts import Experts
from .instrument import note, region

try:
    from .kernels import fused_moe as _fm
    from .kernels.fused_moe_small import SharedExpert
except ImportError:       # no Triton: --experts fused (and with it this) is refused before a model is built
    _fm = SharedExpert = None


MAX_T = 1      # tokens a step in the decode variant: see "Why one token" above
# Tokens a step up to which the aligned variant takes the shared expert as I_S / I virtual experts of width I (see
# "In the aligned variant" above); 0 runs every aligned batch apart. Measured on the H200 (DeepSeek-V2-Lite, s23):
# a step -8.8 / -5.2 / -2.6% at bs 4 / 16 / 64; TTFT at 128 prompt tokens 10.2 vs 10.3 ms (neutral), at 2,048 29.0 vs
# 27.5 ms (slower), so large prefills keep cuBLAS for the shared expert. 64 is a cautious cut between the two, not a
# measured crossing.
ALIGNED_MAX_T = 64


def _plain(linear, dtype) -> bool:
    """A Linear (or None) this module may read directly: a plain contiguous weight in dtype, no bias, no hook."""
    return linear is None or (type(linear.weight) in (torch.Tensor, torch.nn.Parameter) and linear.bias is None
                              and linear.weight.dtype == dtype and linear.weight.is_contiguous()
                              and not _hooked(linear))


def _hooked(module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def fits(moe, x: torch.Tensor, K: int) -> bool:
    """Whether `run` applies to this MoE layer (moe.MoE) for x [T, D] routed to K experts a token."""
    ex, sh = moe.experts, moe.shared
    s = ex.settings
    if s is None or s.fuse_shared != "on" or sh is None or type(ex) is not Experts or _fm is None:
        return False
    T, D = x.shape
    if not 1 <= T <= max(MAX_T, ALIGNED_MAX_T) or _hooked(ex) or _hooked(sh) or not x.is_contiguous() \
            or x.dtype != ex.w13.dtype:
        return False
    if not (_plain(sh.w13, x.dtype) and _plain(sh.w2, x.dtype) and _plain(sh.gate, x.dtype)):
        return False
    E, I = ex.n_local, ex.hidden
    variant = _fm.plan(T, K, E, _fm.get_config(E, I, D, K, T, x.dtype))
    if variant == "small":
        return T <= MAX_T
    return variant == "aligned" and T <= ALIGNED_MAX_T and sh.w2.weight.shape[1] % I == 0


def run(moe, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """routed(x) + shared(x) [T, D] for x [T, D], weights / ids [T, K], in the routed experts' launches."""
    ex, sh = moe.experts, moe.shared
    gate = None if sh.gate is None else sh.gate.weight.view(-1)                   # [D]
    shared = SharedExpert(sh.w13.weight, sh.w2.weight, gate)
    T, K = ids.shape
    note("fused_moe", _fm.plan(T, K, ex.n_local, _fm.get_config(ex.n_local, ex.hidden, x.shape[1], K, T, x.dtype))
         + "+shared")
    with region("experts"):
        return _fm.fused_moe(x, ex.w13, ex.w2, ids, weights, expert_offset=ex.expert_offset,
                             pdl=ex.settings.pdl == "on", shared=shared)
