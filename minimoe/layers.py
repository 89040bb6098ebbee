"""The small layers every family shares: RMSNorm (alone, or with the residual add before it) and SwiGLU.

RMSNorm scales a row by the inverse of its root mean square, then by a learned weight:
y = w * x / sqrt(mean(x²) + eps). It normalises in float32 and casts back before the weight, as
Llama-style models do. A pre-norm block adds the sublayer's output to the residual stream right
before the next norm, so `ResidualRMSNorm` takes both and returns (norm(x + residual), x + residual):
one fused kernel with `--ops triton`, the same arithmetic in PyTorch otherwise (ops.py).

SwiGLU is the feed-forward block of every family here: down(silu(gate(x)) * up(x)), with gate and
up stored as one [2I, D] matrix so the first projection is one GEMM, not two.
Reference: Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019); Shazeer, "GLU Variants
Improve Transformer" (2020).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .linear import Linear
from .ops import ops_for


class RMSNorm(nn.Module):
    """x [..., N] -> w * x / rms(x), in x's dtype."""

    def __init__(self, dim: int, eps: float, settings=None):
        super().__init__()
        self.eps, self.settings = eps, settings
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops_for(self.settings).rms_norm(x, self.weight, self.eps)[0]


class ResidualRMSNorm(RMSNorm):
    """(x, residual) -> (norm(x + residual), x + residual); residual None (the first layer) -> (norm(x), x)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        y, s = ops_for(self.settings).rms_norm(x, self.weight, self.eps, residual)
        return y, (x if s is None else s)


class SwiGLU(nn.Module):
    """x [..., D] -> down(silu(gate(x)) * up(x)) [..., D], gate and up as one w13 [2I, D]."""

    def __init__(self, dim: int, hidden: int, settings=None):
        super().__init__()
        self.hidden, self.settings = hidden, settings
        self.w13 = Linear(dim, 2 * hidden, settings=settings)
        self.w2 = Linear(hidden, dim, settings=settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(ops_for(self.settings).silu_mul(self.w13(x)))      # silu(gate) * up [..., I]
