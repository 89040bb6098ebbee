"""The router of one MoE layer as a module: the gate weight, the family's routing maths, the kernel choice.

    logits   = h Wgateᵀ                   [T, E]   (float32 for DeepSeek, whose gate is kept fp32)
    w, ids   = ROUTERS[name](logits)      [T, K]   (router.py: softmax / sigmoid, groups, bias, scaling)

Like DeepSeek-V3's standalone `Gate`, it returns (weights, indices) and owns everything that decides
them, so a parallel plan replicates it whole and quantization leaves it alone (routing is scored in
full precision: a bf16 softmax over 64-256 experts flips near-ties). Which router runs (the card's,
or a synthetic one for ablations) and K are run settings, read at every call.

With `--ops triton`, decode-sized batches of a small gate (Mixtral's 8 x 4096: 64 KB) run the gate
GEMV and the top-k as one kernel (kernels/norm_route.py `gate_route`), large gates at decode sizes a
split-K GEMV + top-k (kernels/gate_splitk.py); otherwise the top-k alone is one kernel (kernels/route.py)
after a cuBLAS GEMV. With `--fold-norm` (on by default with triton ops) a one-token step also runs the
layer's residual add + RMSNorm inside that kernel: the Block hands the router the un-normed sublayer
output and the norm, and the router writes the normed h (which the experts read) and the new residual
stream into buffers it is given, still returning (weights, ids) to its hooks.

Dynamic expert skipping (NAEE, arXiv 2402.14800; `RunSettings.skip_threshold` beta): a routed slot
whose weight is below beta times the token's top weight is dropped; its id becomes -1, which no
expert path ever matches (the same rule that makes foreign experts contribute zero under expert
parallelism), so the fused kernels skip its weights for real. Where the skip happens: the fusable
routers do it inside the routing op (`skip=beta`: the Triton kernels' epilogue, kernels/route.py,
so it costs no launch, where ~4 small PyTorch kernels per layer cost more at batch 1 than the skipped
experts save; their torch twins call `skip_small`); the generic path (groups, bias, synthetic
routers) calls `skip_small` after `route`. Either way it is `skip_small`'s rule, bit for bit.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .config import ModelConfig
from .instrument import record_load
from .linear import router_logits
from .ops import ops_for
from .router import FUSED_ROUTERS, RouterSpec, route, skip_small  # noqa: F401  (skip_small: re-exported)


class Router(nn.Module):
    """h [T, D] -> (weights [T, K] float32, ids [T, K] int64 global expert ids; -1 = skipped). Folded
    (`--fold-norm`): (x, residual, norm=, out=) -> the same, with the norm's outputs written into out."""

    def __init__(self, cfg: ModelConfig, settings, n_experts: int, layer: int):
        super().__init__()
        self.cfg, self.settings, self.layer = cfg, settings, layer
        self.weight = nn.Parameter(torch.empty(n_experts, cfg.hidden_size))         # [E, D]
        # DeepSeek-V3's e_score_correction_bias: steers the choice only, never the weights (fp32)
        self.bias = nn.Parameter(torch.zeros(n_experts)) if cfg.router_bias else None

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def spec(self) -> RouterSpec:
        s = self.settings
        return RouterSpec.from_config(self.cfg, s and s.router, s and s.top_k, s.zipf_s if s else 1.2)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None = None, norm=None, counters=None, out=None):
        """h [T, D] (normed) -> (weights, ids). With `norm` (where `fold_fits`): h is the un-normed
        sublayer output x; the normed h and x + residual are written into out = (h, residual_out)
        (`norm_and_route`), and the result is still (weights, ids)."""
        if norm is not None:
            return self.norm_and_route(h, residual, norm, counters, out)
        spec = self.spec()
        ops = ops_for(self.settings)
        beta = self.settings.skip_threshold if self.settings is not None else 0.0
        kind = dict(renorm=spec.renorm or spec.name == "topk_softmax", scaling=spec.scaling,
                    softmax_first=spec.name == "softmax_topk", skip=beta)  # fused ops skip in-kernel
        fusable = spec.name in FUSED_ROUTERS and self.bias is None
        T, D = h.shape
        if fusable and ops.gate_route_fits(T, self.n_experts, D, self.weight.dtype, h.dtype):
            w, ids = ops.gate_route(h, self.weight, spec.top_k, **kind)
        else:
            s = self.settings
            logits = router_logits(h, self.weight, s.gemv if s is not None else "torch",
                                   pdl=s is not None and s.pdl == "on")                  # [T, E]
            if fusable:
                w, ids = ops.route_topk(logits, spec.top_k, **kind)
            else:
                w, ids = route(logits, spec, self.bias)
                if beta > 0:
                    w, ids = skip_small(w, ids, beta)
        self._record(ids, beta)
        return w, ids

    def _record(self, ids: torch.Tensor, beta: float) -> None:
        if beta > 0 and _skips is not None:
            _skips.record(self.layer, ids)
        record_load(self.layer, ids)

    def fold_fits(self, T: int, D: int, dtype: torch.dtype) -> bool:
        """Whether the layer's RMSNorm can run inside this router's kernel for T tokens of dtype:
        `RunSettings.fold_norm` on, a fusable router (no selection bias), and `ops.norm_gate_route_fits`
        (one token, where it was measured)."""
        s = self.settings
        if s is None or s.fold_norm != "on" or self.bias is not None or self.spec().name not in FUSED_ROUTERS:
            return False
        return ops_for(s).norm_gate_route_fits(T, self.n_experts, D, self.weight.dtype, dtype)

    def norm_and_route(self, x: torch.Tensor, residual: torch.Tensor | None, norm, counters, out):
        """The layer's RMSNorm (+ residual add) and this router in one kernel (call through `self(x,
        residual, norm=..., out=...)` where `fold_fits`): x, residual [T, D] -> (weights [T, K], ids [T, K]),
        with h = norm(x, residual)[0] written into out[0] and x + residual into out[1] (unused when
        residual is None), as `norm(x, residual)` then `self(h)`. counters: zeroed int32 scratch the
        kernel leaves zeroed (KVCache.counters)."""
        s = self.settings
        spec = self.spec()
        beta = s.skip_threshold
        _, _, w, ids = ops_for(s).norm_gate_route(
            x, residual, norm.weight, norm.eps, self.weight, spec.top_k, renorm=spec.renorm or spec.name == "topk_softmax",
            scaling=spec.scaling, softmax_first=spec.name == "softmax_topk", skip=beta, counters=counters, out=out)
        self._record(ids, beta)
        return w, ids


class SkipCount:
    """Routed slots seen and dropped by skipping, per layer, counted on the device (no host sync)."""

    def __init__(self, n_layers: int, device):
        self.slots = torch.zeros(n_layers, dtype=torch.int64, device=device)
        self.dropped = torch.zeros(n_layers, dtype=torch.int64, device=device)
        self.mask = None        # [T] bool, optional: the tokens to count (as instrument.ExpertLoad.mask)

    def record(self, layer: int, ids: torch.Tensor) -> None:
        """ids [T, K]; a token whose `mask` entry is False counts nowhere. ValueError: a mask of another T."""
        if self.mask is not None:
            if self.mask.shape != ids.shape[:1]:
                raise ValueError(f"SkipCount.mask holds {self.mask.numel()} tokens, the router saw {ids.shape[0]}")
            ids = ids[self.mask]
        self.slots[layer] += ids.numel()
        self.dropped[layer] += (ids < 0).sum()

    def fraction(self) -> float:
        """Dropped share of all routed slots seen (0 when none were seen)."""
        return float(self.dropped.sum()) / max(int(self.slots.sum()), 1)


_skips: SkipCount | None = None


@contextlib.contextmanager
def counting_skips(counter: SkipCount):
    """Count what --skip-threshold drops inside this block (eager runs: the profile, the speed study)."""
    global _skips
    saved, _skips = _skips, counter
    try:
        yield counter
    finally:
        _skips = saved
