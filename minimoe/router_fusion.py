"""The MoE router inside the attention's o projection at batch 1 (`--fold-router`).

After its attention, a MoE layer at decode runs

    x       = a Woᵀ                                  the o projection (a GEMV at one token)
    h, r    = rmsnorm(x + residual), x + residual    \\  one launch with --fold-norm (kernels/gate_splitk_fold.py)
    w, ids  = top-k(h Wgateᵀ)                        /

kernels/o_route.py folds the second launch into the first: the router's logits are z / rms(r) with z = Wgate · (g ⊙ r)
linear in r, so every GEMV program adds its columns' share of z, and the last to finish scales z by 1 / rms, writes h
and routes. One launch a layer fewer; h and r are the unfused bits, the logits skip h's bf16 rounding (near-ties may
route differently, hence a switch of its own).

Measured in the graphed bs-1 step on the H200 against the fold off (scripts/step_probe.py; docs/results/2026-12-03-s30,
calls 3-4): -1.4% OLMoE, -1.9% Qwen1.5-MoE, -1.3% Mixtral-8x7B, -1.4% DeepSeek-V2-Lite (then -2.5% more with its own
GEMV tile in the fold, call 6: o_route.STEP_SHAPES), and +1.8% to +8.4% on Qwen3-30B-A3B (128 experts; its o
projection's programs are 1,024 one-warp ones in the unfused tile): on by default with --ops triton on a GPU, for routers
of up to MAX_EXPERTS experts.

Where it applies (`fits`): `--fold-router on` (settings.py requires --fold-norm on with it: the routing is that fold's),
a one-token step (o_route.MAX_T, and --fold-norm's one token), a router of at most MAX_EXPERTS experts whose
`fold_fits` holds (a fusable router without a selection bias, a shape --fold-norm runs) and a plain o weight in
x's dtype without bias (o_route.usable), and nothing hooked on the attention, its o projection, the layer's norm or
its router (a tensor-parallel plan's all-reduce, calibration): those see every call, so they keep the unfused path.
Model.Block asks `fits` before the attention runs, then calls the attention's `heads` (everything but the o
projection) and `run`.
"""
from __future__ import annotations

import torch

from .instrument import note

# Routers of more experts keep the unfused path: Qwen3-30B-A3B's 128 (o projection 2048 x 4096) measured +1.8% to
# +8.4% a bs-1 step with the fold in every copy count and GEMV tile tried (session 30, calls 3-4), where Mixtral's 8, Qwen1.5-MoE's 60 and
# OLMoE's / DeepSeek-V2-Lite's 64 measured -0.7% to -2.0% (calls 3-4). A step_probe knob.
MAX_EXPERTS = 64

try:
    from .kernels import o_route as _kernel
except ImportError:       # no Triton: --ops triton (and with it this) is refused before a model is built
    _kernel = None


def _hooked(*modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def fits(block, x: torch.Tensor, residual: torch.Tensor | None, step) -> bool:
    """Whether `run` applies to layer `block` (model.Block) for its input x [B, S, D] and residual stream."""
    s = block.attn.settings
    if s is None or s.fold_router != "on" or _kernel is None or residual is None or step.route_acc is None:
        return False
    ffn = block.ffn
    if not hasattr(ffn, "router") or step.fresh:
        return False
    B, S, D = x.shape
    wo = block.attn.wo
    if (not 1 <= B * S <= _kernel.MAX_T or wo.bias is not None or ffn.router.n_experts > MAX_EXPERTS
            or not ffn.router.fold_fits(B * S, D, x.dtype)):
        return False
    if _hooked(block.attn, wo, block.ffn_norm, ffn, ffn.router):
        return False
    return _kernel.usable(B * S, wo.in_features, D, ffn.router.n_experts, wo.weight, x.dtype, ffn.router.weight.dtype)


def run(block, a: torch.Tensor, residual: torch.Tensor, step):
    """a [B, S, A] (the attention heads' output, before the o projection), residual [B, S, D] ->
    (h [B, S, D] normed, residual + a Woᵀ, (weights, ids) [T, K]), the router's records kept (gate.Router._record)."""
    router, norm = block.ffn.router, block.ffn_norm
    B, S, A = a.shape
    T = B * S
    spec = router.spec()
    beta = router.settings.skip_threshold
    note("router", "o+norm+route")
    h, r, w, ids = _kernel.o_norm_route(
        a.reshape(T, A).contiguous(), block.attn.wo.weight, residual.reshape(T, -1), norm.weight, norm.eps,
        router.weight, spec.top_k, renorm=spec.renorm or spec.name == "topk_softmax", scaling=spec.scaling,
        softmax_first=spec.name == "softmax_topk", skip=beta, counters=step.counters, acc=step.route_acc,
        pdl=router.settings.pdl == "on")
    router._record(ids, beta)
    return h.view(B, S, -1), r.view(B, S, -1), (w, ids)
