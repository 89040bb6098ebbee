"""Router softmax + top-k (+ renormalise, + scale) in one Triton kernel.

A softmax router picks, per token, the K experts with the largest probability among E. In PyTorch
that is ~4 kernels per layer (cast, softmax, topk, then the renormalise/scale arithmetic), each a
launch of a few microseconds on a [T, E] tensor of a few kilobytes at decode. Here one program owns
one token's row of E logits (E <= 512 fits in one warp's registers) and does it all:

  softmax_first (OLMoE, Qwen, DeepSeek-V2; `route_softmax_topk`):
      p = softmax(logits) over E;  w, ids = top-K of p;  w /= sum(w) + 1e-20 if renorm;  w *= scaling
  not softmax_first (Mixtral; `route_topk_softmax`):
      top, ids = top-K of logits;  w = softmax(top) over the K;  w *= scaling

Top-K is K rounds of "max, then the lowest index that holds it, then mask it out" over the row in
registers: K is 1..8 in practice, so K cheap reductions beat a sort. Experts are chosen on the
logits, not on p: softmax is monotone, so the choice is the same, and logits cannot tie where
exp() rounds two nearby probabilities to the same float. Ties between equal logits go to the
lowest expert index (torch.topk leaves tie order unspecified). Slots come out in descending
weight, as torch.topk's do. Without softmax_first the K weights already sum to one, so `renorm`
changes nothing there and is not applied (as in `route_topk_softmax`).

Dynamic expert skipping (`skip` = beta, NAEE; 0 = off) is the epilogue, on the final weights:
      keep = w >= skip * max_K(w);  dropped slots get w = 0 and id = -1 (no expert path matches it)
the same float32 comparison as `minimoe.router.skip_small`, so the result is bit-identical to it, and
the skip costs no launch of its own (in PyTorch it is ~4 small kernels per layer).

Scoring runs in float32 whatever the logits' dtype, as in `minimoe.router.route`.
Shapes: T tokens, E experts, K experts per token.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

MAX_EXPERTS = 512


@triton.jit
def _topk_weights(x, E, scaling, skip, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                  SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr):
    """One token's float32 logits x [BLOCK_E] -> (weights [BLOCK_K] float32, ids [BLOCK_K] int32).

    Entries at or past E are padding and never chosen; slots at or past K are junk for the caller
    to mask off. skip: a runtime float32 beta, 0 = off; a dropped slot has weight 0 and id -1.
    Shared by `_route_topk_kernel`, `norm_route.py`'s and `gate_splitk.py`'s fused kernels.
    """
    offs = tl.arange(0, BLOCK_E)
    x = tl.where(offs < E, x, float("-inf"))  # padding adds nothing to the softmax's denominator
    slots = tl.arange(0, BLOCK_K)
    top = tl.full([BLOCK_K], float("-inf"), tl.float32)  # [K] chosen logits, descending
    ids = tl.zeros([BLOCK_K], tl.int32)
    # A separate "taken" mask, not overwriting picks with -inf: rows with -inf logits (masked
    # experts) must still yield K distinct ids.
    taken = offs >= E  # the power-of-two padding is never eligible
    for k in tl.static_range(K):
        cand = tl.where(taken, float("-inf"), x)
        best = tl.max(cand, axis=0)
        pick = tl.min(tl.where((cand == best) & ~taken, offs, BLOCK_E), axis=0)  # lowest index wins
        taken = taken | (offs == pick)
        top = tl.where(slots == k, best, top)
        ids = tl.where(slots == k, pick, ids)

    in_k = slots < K
    if SOFTMAX_FIRST:
        row_max = tl.max(x, axis=0)
        denom = tl.sum(tl.exp(x - row_max), axis=0)  # padding is -inf -> exp gives 0
        w = tl.where(in_k, tl.exp(top - row_max) / denom, 0.0)
        if RENORM:
            w = w / (tl.sum(w, axis=0) + 1e-20)
    else:
        e = tl.where(in_k, tl.exp(top - tl.max(top, axis=0)), 0.0)
        w = e / tl.sum(e, axis=0)
    w = w * scaling
    # skipping, as router.skip_small: the K final weights against beta x their max (padding is -inf)
    w_top = tl.max(tl.where(in_k, w, float("-inf")), axis=0)
    keep = (w >= skip * w_top) | (skip <= 0.0)  # skip = 0 keeps every slot, even a NaN weight's
    return tl.where(keep, w, 0.0), tl.where(keep, ids, -1)


@triton.jit
def _route_topk_kernel(
    logits_ptr, w_ptr, ids_ptr, E, stride_t, scaling, skip,
    K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + t * stride_t + offs, mask=offs < E, other=float("-inf")).to(tl.float32)
    w, ids = _topk_weights(x, E, scaling, skip, K, BLOCK_E, BLOCK_K, SOFTMAX_FIRST, RENORM)
    slots = tl.arange(0, BLOCK_K)
    tl.store(w_ptr + t * K + slots, w, mask=slots < K)
    tl.store(ids_ptr + t * K + slots, ids.to(tl.int64), mask=slots < K)


def route_topk(logits: torch.Tensor, k: int, *, renorm: bool, scaling: float = 1.0,
               softmax_first: bool = True, skip: float = 0.0,
               pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] (any float dtype) -> (weights [T, K] float32, ids [T, K] int64), K = k.
    skip: beta of dynamic expert skipping (0 = off); a skipped slot has weight 0 and id -1."""
    T, E = logits.shape
    assert 1 <= k <= E <= MAX_EXPERTS, (k, E)
    assert logits.stride(-1) == 1, "expert dim not unit-stride"
    w = torch.empty(T, k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(T, k, dtype=torch.int64, device=logits.device)
    if T == 0:
        return w, ids
    _route_topk_kernel[(T,)](
        logits, w, ids, E, logits.stride(0), float(scaling), float(skip),
        K=k, BLOCK_E=triton.next_power_of_2(E), BLOCK_K=triton.next_power_of_2(k),
        SOFTMAX_FIRST=softmax_first, RENORM=renorm,
        num_warps=1,  # <= 16 values per thread; one warp reduces with shuffles, no shared memory
        **launch_args(pdl),
    )
    return w, ids
