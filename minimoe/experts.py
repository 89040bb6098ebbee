"""Routed experts: one stored weight layout, several interchangeable ways to run it.

Storage. Each MoE layer keeps all its experts in two stacked tensors:
    w13 [E, 2I, D]   gate rows 0..I-1, then up rows I..2I-1, per expert ([out, in] like nn.Linear)
    w2  [E, D, I]    down projection
Why this layout: (1) loading is a pure stack of the Hub's per-expert [out, in] matrices, no
transpose copy; (2) gate and up sit in one matrix, so the first GEMM is one launch and the fused
kernel finds both halves of a SiLU(gate)*up pair at a fixed offset (I rows) in the same expert;
(3) the reduction dimension (D for w13, I for w2) is innermost, so a GEMM kernel streams weights
with contiguous 16-byte loads, and `torch._grouped_mm` takes `w.transpose(1, 2)` as the
"[G, N, K]" operand it documents for MoE; (4) experts are addressed by global id minus
`expert_offset`, so expert parallelism only slices E.

Paths (the `EXPERT_PATHS` registry, chosen by `RunSettings.experts`), all computing
    out[t] = sum_k w[t,k] * W2[e] (silu(Wg[e] x[t]) * (Wu[e] x[t])),  e = ids[t,k]:
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


class Experts(nn.Module):
    def __init__(self, n_experts: int, dim: int, hidden: int, expert_offset: int = 0):
        super().__init__()
        self.expert_offset = expert_offset   # global id of w13[0] (expert parallelism slices E)
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * hidden, dim))   # [E, 2I, D]
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))        # [E, D, I]


def experts_loop(x, w13, w2, ids, weights, expert_offset: int = 0):
    """x [T, D], ids/weights [T, K] -> [T, D]. Slow by design: one host sync per expert."""
    I = w2.shape[2]
    with region("experts"):
        out = torch.zeros_like(x)
        for e in range(w13.shape[0]):
            tok, slot = torch.where(ids == e + expert_offset)         # host sync: shapes depend on data
            if tok.numel() == 0:
                continue
            gate, up = (x[tok] @ w13[e].T).split(I, dim=-1)           # [n, I] each
            y = (F.silu(gate) * up) @ w2[e].T                          # [n, D]
            out.index_add_(0, tok, (y * weights[tok, slot, None]).to(x.dtype))
    return out


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a [M, K] rows grouped by offs (cumulative ends), b [G, N, K] -> [M, N]."""
    return torch._grouped_mm(a, b.transpose(1, 2), offs=offs)


def experts_grouped(x, w13, w2, ids, weights, expert_offset: int = 0):
    T, K = ids.shape
    E, I = w13.shape[0], w2.shape[2]
    with region("dispatch"):
        local = ids.reshape(-1) - expert_offset                       # [T*K]
        key = torch.where((local >= 0) & (local < E), local, E)       # foreign experts sort last
        order = torch.argsort(key, stable=True)                       # [T*K]
        counts = torch.zeros(E + 1, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
        offs = counts[:E].cumsum(0, dtype=torch.int32)                # [E] group ends
        token = order // K
        xs = x[token]                                                 # [T*K, D] permuted copy
    with region("experts"):
        gate, up = _grouped_mm(xs, w13, offs).split(I, dim=-1)        # [T*K, I] each
        y = _grouped_mm(F.silu(gate) * up, w2, offs)                  # [T*K, D]
    with region("combine"):
        w = weights.reshape(-1)[order, None]                          # [T*K, 1] float32
        # rows past offs[-1] (foreign experts) were never written by the GEMM: select, don't multiply
        y = torch.where((key[order] < E)[:, None], y * w, 0.0)
        # un-permute and sum the K slots: deterministic, unlike an atomic index_add_
        unsorted = torch.empty_like(y).index_copy_(0, order, y)       # [T*K, D] in (token, slot) order
        out = unsorted.view(T, K, -1).sum(1).to(x.dtype)
    return out


def experts_fused(x, w13, w2, ids, weights, expert_offset: int = 0):
    from .kernels import fused_moe as fm
    note("fused_moe", fm.plan(ids.shape[0], ids.shape[1], w13.shape[0]))
    with region("experts"):
        return fm.fused_moe(x, w13, w2, ids, weights, expert_offset=expert_offset)


EXPERT_PATHS = {"loop": experts_loop, "grouped": experts_grouped, "fused": experts_fused}
