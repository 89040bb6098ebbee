"""Routers: which K of the E experts each token visits, and with what weight.

Every router maps float32 logits [T, E] to (weights [T, K] float32, ids [T, K] int64). Scoring
always runs in float32: a bf16 softmax over 64-256 experts flips near-ties and changes which experts
run. The family routers reproduce each model's published maths (see model-facts.md §A.3):

  softmax_topk          softmax over E, keep the top K, optionally renormalise (OLMoE, Qwen, DeepSeek-V2)
  topk_softmax          top K of the logits, softmax over those K (Mixtral) -- the same thing as
                        softmax_topk with renormalisation, since softmax is monotone and the partition
                        function cancels; a test shows it
  group_limited_greedy  DeepSeek-V2: rank groups of experts by their best score, keep topk_group groups
  sigmoid_group_bias    DeepSeek-V3: sigmoid scores, a learned bias that only steers the *choice*,
                        groups ranked by the sum of their top-2 biased scores, weights from unbiased scores

Synthetic routers ignore the logits (they keep their shape and device) and exist for ablations:
uniform random choice, perfectly balanced round-robin, and Zipf-skewed popularity.
All routers are sync-free and static-shaped, so they can be captured in a CUDA graph.
`skip_small` (NAEE dynamic skipping: drop slots far below the token's top weight) is one rule shared
by gate.Router's generic path and ops.py's twins of the fused routing kernels, which skip in-kernel.
This file is the maths only (torch, nothing else from minimoe): the router as a module, with its
gate weight and the choice of a fused kernel, is `gate.Router`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RouterSpec:
    name: str
    top_k: int
    renorm: bool = False
    scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    zipf_s: float = 1.2     # exponent of the synthetic Zipf router

    @classmethod
    def from_config(cls, cfg, name: str | None = None, top_k: int | None = None, zipf_s: float = 1.2):
        return cls(name or cfg.router, top_k or cfg.top_k, cfg.norm_topk_prob, cfg.routed_scaling_factor,
                   cfg.n_group, cfg.topk_group, zipf_s)


def _finish(w: torch.Tensor, ids: torch.Tensor, spec: RouterSpec):
    if spec.renorm:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    if spec.scaling != 1.0:
        w = w * spec.scaling
    return w, ids


def route_softmax_topk(logits, spec: RouterSpec, bias=None):
    probs = logits.softmax(-1)                                  # [T, E]
    w, ids = probs.topk(spec.top_k, dim=-1)                     # [T, K]
    return _finish(w, ids, spec)


def route_topk_softmax(logits, spec: RouterSpec, bias=None):
    top, ids = logits.topk(spec.top_k, dim=-1)                  # [T, K]
    w = top.softmax(-1)
    return (w * spec.scaling if spec.scaling != 1.0 else w), ids


def _group_mask(group_scores: torch.Tensor, spec: RouterSpec, E: int) -> torch.Tensor:
    """[T, n_group] scores -> [T, E] bool mask of experts inside the topk_group best groups."""
    keep = group_scores.topk(spec.topk_group, dim=-1).indices   # [T, topk_group]
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
    return mask.repeat_interleave(E // spec.n_group, dim=1)


def route_group_limited_greedy(logits, spec: RouterSpec, bias=None):
    probs = logits.softmax(-1)
    T, E = probs.shape
    group_best = probs.view(T, spec.n_group, -1).amax(-1)       # [T, n_group]
    masked = probs.masked_fill(~_group_mask(group_best, spec, E), 0.0)
    w, ids = masked.topk(spec.top_k, dim=-1)
    return _finish(w, ids, spec)


def route_sigmoid_group_bias(logits, spec: RouterSpec, bias=None):
    scores = logits.sigmoid()                                   # [T, E]
    choice = scores if bias is None else scores + bias
    T, E = scores.shape
    group_score = choice.view(T, spec.n_group, -1).topk(2, dim=-1).values.sum(-1)  # [T, n_group]
    choice = choice.masked_fill(~_group_mask(group_score, spec, E), float("-inf"))
    ids = choice.topk(spec.top_k, dim=-1).indices
    return _finish(scores.gather(1, ids), ids, spec)


# ---- synthetic routers (ablations) ---------------------------------------------------------------


def route_uniform(logits, spec: RouterSpec, bias=None):
    """K distinct experts drawn uniformly at random per token, equal weights."""
    ids = torch.rand_like(logits).topk(spec.top_k, dim=-1).indices
    return torch.full(ids.shape, 1.0 / spec.top_k, device=logits.device), ids


def route_balanced(logits, spec: RouterSpec, bias=None):
    """Round-robin: slot j of token t goes to expert (t*K + j) mod E. Exactly T*K/E each when divisible."""
    T, E = logits.shape
    flat = torch.arange(T * spec.top_k, device=logits.device)
    ids = (flat % E).view(T, spec.top_k)
    return torch.full(ids.shape, 1.0 / spec.top_k, device=logits.device), ids


def zipf_probs(E: int, s: float, device=None) -> torch.Tensor:
    p = torch.arange(1, E + 1, dtype=torch.float32, device=device) ** -s
    return p / p.sum()


def route_zipf(logits, spec: RouterSpec, bias=None):
    """Skewed load: expert e is popular in proportion to 1/(e+1)^s; K distinct experts per token
    drawn by the Gumbel-top-k trick (the first pick follows the Zipf law exactly)."""
    T, E = logits.shape
    log_p = zipf_probs(E, spec.zipf_s, logits.device).log()
    gumbel = -torch.empty_like(logits).exponential_().log()
    ids = (log_p + gumbel).topk(spec.top_k, dim=-1).indices
    return torch.full(ids.shape, 1.0 / spec.top_k, device=logits.device), ids


ROUTERS = {
    "softmax_topk": route_softmax_topk,
    "topk_softmax": route_topk_softmax,
    "group_limited_greedy": route_group_limited_greedy,
    "sigmoid_group_bias": route_sigmoid_group_bias,
    "uniform": route_uniform,
    "balanced": route_balanced,
    "zipf": route_zipf,
}
SYNTHETIC_ROUTERS = ("uniform", "balanced", "zipf")


# The routers kernels/route.py (and the gate+top-k kernel) implement, given no selection bias.
FUSED_ROUTERS = ("softmax_topk", "topk_softmax")


def route(logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None = None):
    """logits [T, E] (any float dtype) -> weights [T, K] float32, ids [T, K] int64, in PyTorch."""
    return ROUTERS[spec.name](logits.float(), spec, bias)


def skip_small(w: torch.Tensor, ids: torch.Tensor, beta: float):
    """Dynamic expert skipping (NAEE, arXiv 2402.14800): w, ids [T, K] -> the same with every slot whose
    weight < beta * the token's largest weight dropped: weight 0, id -1 (no expert path matches -1).

    Compares the final weights (after renorm and scaling) in float32; kernels/route.py's epilogue does
    the same comparison, so the fused routers' skipping is bit-identical to this. beta = 0 keeps all."""
    keep = w >= beta * w.amax(-1, keepdim=True)                                        # [T, K]
    return torch.where(keep, w, 0.0), torch.where(keep, ids, -1)
