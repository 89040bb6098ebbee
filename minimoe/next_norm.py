"""The next layer's residual add + RMSNorm inside an MoE layer's last launch (`--fuse-next-norm`).

A pre-norm stack hands each sublayer's output to the next norm unreduced (model.py):

    y        = moe(h)                              [T, D]   last launch: GEMM2 (batch 1) or the combine (aligned)
    h', r'   = norm(y + r), y + r                  [T, D]   the next layer's attn_norm: one more launch

At decode sizes that norm is a launch of ~2 µs plus its gap, 26-48 of them a step (one a MoE layer). With this
switch the MoE's last launch ends with it (kernels/next_norm.py: the last GEMM2 program of a token at batch 1, the
one-program-a-token combine in the aligned variant), and the MoE returns `Normed(h', r')` instead of y; the next
Block takes that as its attention input and does not call its attn_norm (model.py). The same roundings as the two
launches (s exact; h' up to the fp32 order of mean(s²)).

Where it applies (`fits`): `--fuse-next-norm on` (settings.py resolves `auto` to on for `--experts fused` with
`--ops triton`, unquantized, no EP / TP plan), plain bf16/fp16/fp32 experts (`Experts`, not a quantized or sharded
twin) in x's dtype, nothing hooked on the MoE or its parts (a TP all-reduce on the layer, EP dispatch or calibration
on the experts: they must see y), a shared expert only where shared_fusion runs it inside the same launches, a
next norm (the last layer's is the model's final norm) of x's dtype and a width <= kernels/next_norm.MAX_D, and at most
MAX_T tokens. Everything else runs the norm as its own launch, as before.
"""
from __future__ import annotations

import torch

from . import shared_fusion
from .experts import Experts
from .instrument import note, region
from .layers import Normed

try:
    from .kernels import fused_moe as _fm
    from .kernels.next_norm import MAX_D, NextNorm
except ImportError:       # no Triton: --experts fused (and with it this) is refused before a model is built
    _fm = NextNorm = None
    MAX_D = 0

# Tokens a step up to which the fold runs (decode batches and speculation's verify steps; prefills keep the norm's
# own launch, where it is a small part of the step).
MAX_T = 64
# The decode (batch-1) variant, GEMM2's last programs: off, measured slower in the graphed bs-1 step (H200, s27 call 1:
# +0.28% DeepSeek-V2-Lite, +0.13% OLMoE, +1.66% Qwen3-30B-A3B against the norm's own launch). Each of GEMM2's 512
# programs a token (BLOCK_N 4) ends with a release fence and an atomic; the separate norm's launch overlaps GEMM2
# under PDL. An in-step knob for scripts/step_probe.py.
SMALL = False
ALIGNED = True    # the aligned variant: the one-program-a-token combine (an in-step knob)


def fits(moe, x: torch.Tensor, K: int, residual: torch.Tensor | None, norm) -> bool:
    """Whether `run` applies to this MoE layer (moe.MoE) for x [T, D] (normed), K experts a token, the residual
    stream [T, D] before this layer's output and the next RMSNorm module (or None)."""
    ex = moe.experts
    s = ex.settings
    if (norm is None or residual is None or s is None or s.fuse_next_norm != "on" or type(ex) is not Experts
            or _fm is None or shared_fusion._hooked(moe)):
        return False
    T, D = x.shape
    if not 1 <= T <= MAX_T or D > MAX_D or not (x.is_contiguous() and residual.is_contiguous()):
        return False
    if not (x.dtype == ex.w13.dtype == residual.dtype == norm.weight.dtype) or residual.numel() != x.numel():
        return False
    if moe.shared is not None and not shared_fusion.fits(moe, x, K):
        return False
    variant = _fm.plan(T, K, ex.n_local, _fm.get_config(ex.n_local, ex.hidden, D, K, T, x.dtype))
    return (variant == "small" and SMALL) or (variant == "aligned" and ALIGNED)


def run(moe, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, residual: torch.Tensor, norm,
        counters: torch.Tensor | None) -> Normed:
    """x [T, D] (normed), weights / ids [T, K], residual [T, D] -> Normed(norm(y + residual), y + residual), y the
    layer's output (routed + shared). counters: zeroed int32 scratch the decode variant leaves zeroed
    (KVCache.counters); None allocates zeroed ones."""
    ex = moe.experts
    T, D = x.shape
    if counters is None or counters.numel() < T:
        counters = torch.zeros(T, dtype=torch.int32, device=x.device)
    nn_ = NextNorm(residual.reshape(T, D), norm.weight, norm.eps, torch.empty_like(x), torch.empty_like(x), counters)
    shared = shared_fusion.shared_expert(moe)
    K = ids.shape[1]
    note("fused_moe", _fm.plan(T, K, ex.n_local, _fm.get_config(ex.n_local, ex.hidden, D, K, T, x.dtype))
         + ("+shared" if shared is not None else "") + "+norm")
    with region("experts"):
        h = _fm.fused_moe(x, ex.w13, ex.w2, ids, weights, expert_offset=ex.expert_offset,
                          pdl=ex.settings.pdl == "on", shared=shared, norm=nn_)
    return Normed(h, nn_.s)
