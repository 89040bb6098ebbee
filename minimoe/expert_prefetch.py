"""Warm the L2 with a MoE layer's first expert weights before its router runs (an experiment, off by default).

Between two MoE layers' expert GEMMs a decode step runs ~25-80 µs of small kernels that leave the HBM mostly idle;
the aligned fused MoE then streams its experts at the HBM's bandwidth (docs/perf_notes.md). `launch` asks the L2 for
the first `PREFETCH_MB` of what that MoE's GEMM1 will read first (kernels/l2_prefetch.py): the fused shared expert's
gate/up rows where `--fuse-shared` puts it in the same launches (shared_fusion.py), then the routed experts' w13 from
expert 0. model.Block calls it after attention, before the MoE layer's norm and router.

It applies only where GEMM1's first programs read those bytes: a CUDA device, plain (unquantized, unsharded)
experts, the fused path (`--experts fused`) in its aligned variant, and at least MIN_TOKENS tokens (below that, many
experts get no token and the first experts' bytes may never be read). A knob, not a switch yet: step_probe.py flips
PREFETCH_MB (0 = off) to measure it inside the graphed step; it changes no computed value.
"""
from __future__ import annotations

import torch

from . import shared_fusion
from .experts import Experts

try:
    from .kernels import fused_moe as _fm
    from .kernels.l2_prefetch import l2_prefetch
except ImportError:       # no Triton: the fused path is refused before a model is built
    _fm = l2_prefetch = None

PREFETCH_MB = 0       # MB asked for a layer (0: off). The H200's L2 holds 50 MB
MIN_TOKENS = 16       # fewest tokens a step (batch x new tokens) that prefetch


def segments(moe, x: torch.Tensor) -> list[torch.Tensor]:
    """The tensors whose prefix moe's GEMM1 reads first for x [T, D] (T tokens), in order; [] where `launch` does
    not apply (see the module docstring)."""
    ex = moe.experts
    s = ex.settings
    T = x.shape[0]
    if (_fm is None or not x.is_cuda or T < MIN_TOKENS or type(ex) is not Experts or s is None
            or s.experts != "fused" or ex.w13.dtype != x.dtype):
        return []
    K = moe.router.spec().top_k
    if _fm.plan(T, K, ex.n_local, _fm.get_config(ex.n_local, ex.hidden, x.shape[1], K, T, x.dtype)) != "aligned":
        return []
    if moe.shared is not None and shared_fusion.fits(moe, x, K):
        return [moe.shared.w13.weight, ex.w13]
    return [ex.w13]


def launch(moe, x: torch.Tensor) -> int:
    """x [B, S, D] or [T, D], the MoE layer's input before its norm: ask the L2 for PREFETCH_MB of moe's first expert
    bytes where that applies; returns the bytes asked for (0: nothing launched)."""
    if PREFETCH_MB <= 0:
        return 0
    x2 = x.reshape(-1, x.shape[-1])
    segs = segments(moe, x2)
    if not segs:
        return 0
    return l2_prefetch(segs, int(PREFETCH_MB * 2**20), pdl=moe.experts.settings.pdl == "on")
