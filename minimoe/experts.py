"""Routed experts: an `Experts` module that owns its weights' format, and interchangeable ways to run it.

Storage. Each MoE layer keeps its E local experts in two stacked tensors:
    w13 [E, 2I, D]   gate rows 0..I-1, then up rows I..2I-1, per expert ([out, in] like nn.Linear)
    w2  [E, D, I]    down projection
Why this layout: (1) loading is a pure stack of the Hub's per-expert [out, in] matrices, no
transpose copy; (2) gate and up sit in one matrix, so the first GEMM is one launch and the fused
kernel finds both halves of a SiLU(gate)*up pair at a fixed offset (I rows) in the same expert;
(3) the reduction dimension (D for w13, I for w2) is innermost, so a GEMM kernel streams weights
with contiguous 16-byte loads, and `torch._grouped_mm` takes `w.transpose(1, 2)` as the
"[G, N, K]" operand it documents for MoE; (4) experts are addressed by global id minus
`expert_offset`, so expert parallelism only slices E. E and I come from the tensors, never from the
config: a pruned layer simply holds fewer or narrower experts.

The module owns its format. Paths ask it for what they need: `expert_weights(e)` (one expert,
dense, for the loop oracle), `stacked()` (all of them, dense, for grouped GEMMs) and `fused(...)`
(its own Triton kernels). A quantized or sharded variant (quant.py, parallel.py) subclasses it and
overrides those three; nothing above this file changes.

Paths (the `EXPERT_PATHS` registry, chosen by `RunSettings.experts`), all computing
    out[t] = sum_k w[t,k] * W2[e] (silu(Wg[e] x[t]) * (Wu[e] x[t])),  e = ids[t,k]  (local e; others add 0):
  loop     a readable loop over experts: the oracle every other path is tested against
  grouped  sort the (token, slot) pairs by expert on the device, two `torch._grouped_mm` calls
           (CUTLASS on sm90+ bf16; PyTorch's own per-group fallback elsewhere), weighted index_add
  fused    Triton kernels (kernels/fused_moe.py): in-kernel row gather, SiLU*up and the router
           weight fused into the GEMM epilogues, no host sync
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .instrument import note, region

try:
    from .kernels import fused_moe as _fm
except ImportError:       # no Triton: --experts fused is refused before a model is built
    _fm = None


class Experts(nn.Module):
    """E local experts of width I over hidden D; x [T, D], weights/ids [T, K] -> [T, D]."""
    fmt = "none"          # the weight format (quant.py's subclasses say fp8, int8, int4, ...)

    def __init__(self, n_experts: int, dim: int, hidden: int, expert_offset: int = 0, settings=None):
        super().__init__()
        self.expert_offset = expert_offset   # global id of local expert 0 (expert parallelism slices E)
        self.settings = settings
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * hidden, dim))   # [E, 2I, D]
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))        # [E, D, I]

    @classmethod
    def from_tensors(cls, w13: torch.Tensor, w2: torch.Tensor, expert_offset: int = 0, settings=None):
        """An Experts holding these tensors (no copy): tests and the layer benchmark."""
        ex = cls.__new__(cls)
        nn.Module.__init__(ex)
        ex.expert_offset, ex.settings = expert_offset, settings
        ex.w13, ex.w2 = nn.Parameter(w13, requires_grad=False), nn.Parameter(w2, requires_grad=False)
        return ex

    @property
    def n_local(self) -> int:
        return self.w13.shape[0]

    @property
    def hidden(self) -> int:
        return self.w2.shape[2]

    def expert_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Local expert e as dense (w13 [2I, D], w2 [D, I]) in the compute dtype."""
        return self.w13[e], self.w2[e]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All local experts as dense (w13 [E, 2I, D], w2 [E, D, I])."""
        return self.w13, self.w2

    def fused(self, x, ids, weights, pdl: bool = False):
        note("fused_moe", _fm.plan(ids.shape[0], ids.shape[1], self.n_local))
        return _fm.fused_moe(x, self.w13, self.w2, ids, weights, expert_offset=self.expert_offset, pdl=pdl)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        s = self.settings
        path = s.experts if s is not None else "loop"
        return EXPERT_PATHS[path](x, self, ids, weights, pdl=s is not None and s.pdl == "on")


def experts_loop(x, experts: Experts, ids, weights, pdl: bool = False):
    """x [T, D], ids/weights [T, K] -> [T, D]. Slow by design: one host sync per expert."""
    I = experts.hidden
    with region("experts"):
        out = torch.zeros_like(x)
        for e in range(experts.n_local):
            tok, slot = torch.where(ids == e + experts.expert_offset)   # host sync: shapes depend on data
            if tok.numel() == 0:
                continue
            w13, w2 = experts.expert_weights(e)
            gate, up = (x[tok] @ w13.T).split(I, dim=-1)               # [n, I] each
            y = (F.silu(gate) * up) @ w2.T                              # [n, D]
            out.index_add_(0, tok, (y * weights[tok, slot, None]).to(x.dtype))
    return out


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a [M, K] rows grouped by offs (cumulative ends), b [G, N, K] -> [M, N]."""
    return torch._grouped_mm(a, b.transpose(1, 2), offs=offs)


def grouped_problem(widths, hidden: int, dtype: torch.dtype) -> str | None:
    """Why --experts grouped cannot run these shapes, or None. torch._grouped_mm needs every row of its operands
    in whole 16-byte units: the hidden size D and each expert width I, at the run's dtype (a width pruned from one
    that is not a multiple of 8 keeps its exact width, prune.kept_width)."""
    size = torch.empty((), dtype=dtype).element_size()
    for what, n in [("hidden size", hidden)] + [("expert width", w) for w in sorted(set(widths))]:
        if n * size % 16:
            return (f"--experts grouped runs torch._grouped_mm, whose rows must be whole 16-byte units: the {what} "
                    f"{n} is {n * size} bytes in {dtype}; use --experts loop or fused")
    return None


def experts_grouped(x, experts: Experts, ids, weights, pdl: bool = False):
    T, K = ids.shape
    E, I = experts.n_local, experts.hidden
    if T == 0:                                                        # nothing routed here (an idle EP rank)
        return torch.zeros_like(x)
    w13, w2 = experts.stacked()
    with region("permute"):
        local = ids.reshape(-1) - experts.expert_offset               # [T*K]
        key = torch.where((local >= 0) & (local < E), local, E)       # foreign or skipped experts sort last
        order = torch.argsort(key, stable=True)                       # [T*K]
        counts = torch.zeros(E + 1, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
        offs = counts[:E].cumsum(0, dtype=torch.int32)                # [E] group ends
        token = order // K
        xs = x[token]                                                 # [T*K, D] permuted copy
    with region("experts"):
        gate, up = _grouped_mm(xs, w13, offs).split(I, dim=-1)        # [T*K, I] each
        y = _grouped_mm(F.silu(gate) * up, w2, offs)                  # [T*K, D]
    with region("unpermute"):
        w = weights.reshape(-1)[order, None]                          # [T*K, 1] float32
        # rows past offs[-1] (foreign experts) were never written by the GEMM: select, don't multiply
        y = torch.where((key[order] < E)[:, None], y * w, 0.0)
        # un-permute and sum the K slots: deterministic, unlike an atomic index_add_
        unsorted = torch.empty_like(y).index_copy_(0, order, y)       # [T*K, D] in (token, slot) order
        out = unsorted.view(T, K, -1).sum(1).to(x.dtype)
    return out


def experts_fused(x, experts: Experts, ids, weights, pdl: bool = False):
    with region("experts"):
        return experts.fused(x, ids, weights, pdl=pdl)


EXPERT_PATHS = {"loop": experts_loop, "grouped": experts_grouped, "fused": experts_fused}
