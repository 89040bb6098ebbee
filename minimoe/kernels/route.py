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
registers: K is 1..8 in practice, so K cheap reductions beat a sort. They are 2K reductions in a row, though, each
a chain of shuffles and, over several warps, a shared-memory round and a barrier: rows of at most
TOPK_RANK_MAX_E experts can take the rank form instead (`_topk_rank`): each logit becomes one int64 key that
orders as (logit, then lower index), an expert's rank is the count of keys above its own ([E, E] compares, one
reduction), and slot k takes the key of rank k (one more): two reductions whatever K is. Measured no faster where it
matters (Qwen3-30B-A3B's 128 experts: the compares cost more than the reductions saved), so it is off. Experts are chosen on the
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
# Rows of at most this many experts (E rounded up to a power of two) take the rank top-k (`_topk_rank`) in the
# kernels that route with several warps (there each argmax round's reductions cross warps through shared memory and
# a barrier: route_topk at 4 warps, K = 8 of 128, has 35 barriers in SASS against 11, but 1,016 instructions against
# 400); 0 = never. The same experts and slots; the weights within an fp32 ulp or two (the softmax's sum may run over
# another register layout). In the graphed bs-1 step (docs/results/2026-12-04-s33, call 2; the baseline repeated
# within 0.09%): Qwen3-30B-A3B +0.51% (128 experts: the [E, E] compares cost more than the barriers saved), OLMoE
# -0.47%, Qwen1.5-MoE +0.37% (K = 4: four rounds only), DeepSeek-V2-Lite +0.04%; bs 4 / 16 / 64 within 0.08%. Off.
TOPK_RANK_MAX_E = 0
# the same for the one-warp kernels (route_topk, gate_splitk's reduce kernel): no barrier to save there, only
# shuffles (51 -> 10 at E 128), for 4-7x the instructions ([E, E] compares in 32 lanes). Qwen3-30B-A3B bs 4 +1.84%,
# bs 16 +1.34% (call 2). Off.
TOPK_RANK_MAX_E_ONE_WARP = 0
# `_topk_rank`'s int64 keys (constexpr: a compiled kernel reads no plain Python global): padding (index >= E) sits
# below every real or NaN key; a NaN logit's sortable value below -inf's (-2^31 + 2^23), above the padding
_PAD_KEY = tl.constexpr(-(1 << 62))
_NAN_SORTABLE = tl.constexpr(-(1 << 44))


def topk_rank(block_e: int, num_warps: int) -> bool:
    """Whether a row of block_e (a power of two) logits, routed by a kernel of num_warps warps, takes `_topk_rank`:
    the TOPK_RANK_MAX_E knobs, read at call time."""
    return block_e <= (TOPK_RANK_MAX_E if num_warps > 1 else TOPK_RANK_MAX_E_ONE_WARP)


@triton.jit
def _topk_rank(x, E, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 logits x [BLOCK_E] -> (top [BLOCK_K] float32 descending, ids [BLOCK_K] int32): slot k holds the
    logit ranked k, ties to the lower index, padding (index >= E) never above a real entry; the slots past the
    caller's K are junk. The same choice as `_topk_weights`' argmax rounds, in two reductions.

    key = (sortable(x) << 16) | (65535 - index), int64: sortable() is x's bits with the magnitude flipped where
    the sign is set, so int32 order is float order (-0.0 is read as +0.0: the float compare ties them; a NaN is
    put below every number, as the rounds' max skips it). rank[i] = #{j : key[j] > key[i]} is a permutation of
    0..BLOCK_E-1 (keys are distinct), so slot k's key is the sum over i of (rank[i] == k) * key[i], and
    decoding that one key gives both the logit and its index."""
    offs = tl.arange(0, BLOCK_E)
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    sortable = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
    sortable = tl.where(x != x, _NAN_SORTABLE, sortable)
    key = (sortable << 16) | (65535 - offs).to(tl.int64)
    key = tl.where(offs < E, key, _PAD_KEY)
    above = (key[:, None] > key[None, :]).to(tl.int32)             # [j, i]: j outranks i
    rank = tl.sum(above, axis=0)                                     # [BLOCK_E]
    slots = tl.arange(0, BLOCK_K)
    picked = tl.sum(tl.where(rank[None, :] == slots[:, None], key[None, :], 0), axis=1)  # [BLOCK_K]
    ids = (65535 - (picked & 65535)).to(tl.int32)
    s32 = (picked >> 16).to(tl.int32)
    top = tl.where(s32 < 0, s32 ^ 0x7FFFFFFF, s32).to(tl.float32, bitcast=True)
    return top, ids


@triton.jit
def _topk_weights(x, E, scaling, skip, K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                  SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, RANK: tl.constexpr = False):
    """One token's float32 logits x [BLOCK_E] -> (weights [BLOCK_K] float32, ids [BLOCK_K] int32).

    Entries at or past E are padding and never chosen; slots at or past K are junk for the caller
    to mask off. skip: a runtime float32 beta, 0 = off; a dropped slot has weight 0 and id -1.
    RANK: the top-k by `_topk_rank` (two reductions) instead of K argmax rounds (2K); the same result.
    Shared by `_route_topk_kernel`, `norm_route.py`'s, `o_route.py`'s and `gate_splitk.py`'s fused kernels.
    """
    offs = tl.arange(0, BLOCK_E)
    x = tl.where(offs < E, x, float("-inf"))  # padding adds nothing to the softmax's denominator
    slots = tl.arange(0, BLOCK_K)
    in_k = slots < K
    if RANK:
        top, ids = _topk_rank(x, E, BLOCK_E, BLOCK_K)
        top = tl.where(in_k, top, float("-inf"))  # the slots past K, as the rounds leave them
        ids = tl.where(in_k, ids, 0)
    else:
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
    SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, PDL: tl.constexpr, RANK: tl.constexpr = False,
):
    wait_then_release(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + t * stride_t + offs, mask=offs < E, other=float("-inf")).to(tl.float32)
    w, ids = _topk_weights(x, E, scaling, skip, K, BLOCK_E, BLOCK_K, SOFTMAX_FIRST, RENORM, RANK)
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
        SOFTMAX_FIRST=softmax_first, RENORM=renorm, RANK=topk_rank(triton.next_power_of_2(E), 1),
        num_warps=1,  # <= 16 values per thread; one warp reduces with shuffles, no shared memory
        **launch_args(pdl),
    )
    return w, ids
