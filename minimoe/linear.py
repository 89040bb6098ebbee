"""One seam for every dense projection: `linear(x, weight, bias)`, dispatched on the weight's type.

A plain tensor weight [out, in] runs `F.linear` (cuBLAS), or, when the run asks for it at decode
sizes, the Triton GEMV of kernels/gemv.py. Any other weight is a packed format (fp8 with scales,
int8, int4 with group scales, a bitsandbytes tensor ...): an object that knows its own kernel and
exposes `weight.linear(x, bias)`. quant.py swaps a `Linear`'s plain weight for such an object after
the model is built, so the model code never changes when the format does. The design follows
DeepSeek-V3's inference code, whose `linear()` picks the GEMM by the weight's dtype.

`Linear` replaces `nn.Linear` in the model: same parameter names (`weight`, `bias`), same
[out, in] layout, but its forward goes through the seam, and it is the module that parallel
plans and quantization wrap or hook.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from .kernels import gemv as _gemv
except ImportError:       # no Triton here: --gemv triton is refused before a model is built
    _gemv = None


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None, gemv: bool = False) -> torch.Tensor:
    """y = x @ weightᵀ + bias for x [..., in] -> [..., out], whatever the weight's format.
    gemv: use the Triton GEMV for up to kernels.gemv.MAX_T rows of a plain weight (RunSettings.gemv)."""
    if not isinstance(weight, torch.Tensor):          # a packed weight: its own kernel
        return weight.linear(x, bias)
    if gemv:
        lead = x.shape[:-1]
        if _gemv.usable(lead.numel(), weight) and x.dtype == weight.dtype:
            y, _ = _gemv.gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)
            return y.view(*lead, -1)
    return F.linear(x, weight, bias)


class Linear(nn.Module):
    """A dense projection [in] -> [out] through `linear()`; `settings` (shared RunSettings) picks the GEMV."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, settings=None):
        super().__init__()
        self.in_features, self.out_features, self.settings = in_features, out_features, settings
        self.weight = nn.Parameter(torch.empty(out_features, in_features))           # [out, in]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return linear(x, self.weight, self.bias, gemv=s is not None and s.gemv == "triton")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
