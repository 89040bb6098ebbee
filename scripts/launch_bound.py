"""What a decode step would gain if a small kernel cost nothing: an upper bound before fusing it away.

    python scripts/step_probe.py --models olmoe --batches 64 --install scripts.launch_bound:install \\
        --variant base --variant notopk:scripts.launch_bound.DROP="('topk',)" \\
        --variant noalign:scripts.launch_bound.DROP="('align',)"

`install(model)` wraps two launches of the routed MoE path so that, for the names in DROP, a decode-sized call
(at most MAX_T tokens) returns the tensors the same layer's first such call computed, with no kernel at all:
    "topk"   the router's softmax + top-k (ops.route_topk, kernels/route.py)
    "align"  the fused MoE's alignment (fused_moe.align_tokens_by_expert, kernels/moe_align.py)
The cached routing is uniform (K distinct experts a token, seeded), as random weights route: the bytes and the grid
stay those of a real step, only the launch is gone. The tokens change (step_probe reports "NO" under same): this is a bound, never a result.
The first call of each layer must run eagerly (step_probe's warm-up steps do), not inside a graph capture.
"""
from __future__ import annotations

from dataclasses import replace

import torch

DROP: tuple = ()
MAX_T = 64
_cache: dict = {}
_count: dict = {}


def _cached(name: str, n_layers: int, T: int, compute, plain):
    if name not in DROP or T > MAX_T:
        return plain()
    i = _count.get((name, T), 0)
    _count[(name, T)] = i + 1
    key = (name, T, i % n_layers)
    if key not in _cache:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"launch_bound: {key} first seen inside a capture; run eager steps first")
        _cache[key] = compute()
    return _cache[key]


def _uniform_ids(ids: torch.Tensor, E: int) -> torch.Tensor:
    """ids [T, K] -> K distinct experts per token drawn uniformly (seeded): the step's first call may see the
    capture's zeroed inputs, which route every token alike (half an OLMoE bs-64 step's expert bytes)."""
    g = torch.Generator(device=ids.device).manual_seed(len(_cache))
    return torch.rand(ids.shape[0], E, generator=g, device=ids.device).argsort(dim=1)[:, :ids.shape[1]].to(ids.dtype)


def install(model) -> None:
    from minimoe import ops
    from minimoe.kernels import fused_moe

    n_layers = sum(1 for m in model.modules() if type(m).__name__ == "Router")
    route_topk = ops.OPS["triton"].route_topk
    align = fused_moe.align_tokens_by_expert

    def topk(logits, k, **kw):
        def compute():
            w, ids = route_topk(logits, k, **kw)
            return w, _uniform_ids(ids, logits.shape[1])
        return _cached("topk", n_layers, logits.shape[0], compute, lambda: route_topk(logits, k, **kw))

    def align_ids(topk_ids, E, block_m, expert_offset=0, method=None, pdl=False):
        return _cached("align", n_layers, topk_ids.shape[0],
                       lambda: align(_uniform_ids(topk_ids, E) + expert_offset, E, block_m, expert_offset,
                                     method=method, pdl=pdl),
                       lambda: align(topk_ids, E, block_m, expert_offset, method=method, pdl=pdl))

    ops.OPS["triton"] = replace(ops.OPS["triton"], route_topk=topk)
    ops._bound.cache_clear()
    fused_moe.align_tokens_by_expert = align_ids
