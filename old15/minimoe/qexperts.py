"""Routed experts held in a quantized format: the `Experts` module with its weights as codes + scales.

`QuantExperts` keeps the contract of experts.Experts (w13 [E, 2I, D], w2 [E, D, I], expert_offset,
ids outside the local range add exactly zero) and answers the three questions every expert path
asks in its own way:
    expert_weights(e)   one expert dequantized to the compute dtype (the `loop` oracle)
    stacked()           all of them dequantized (the `grouped` path: a reference, it writes a dense
                        copy of the layer every call, so it is no faster than bf16)
    fused(...)          kernels/fused_moe_quant.py, which reads the codes directly
so nothing in experts.py, moe.py or the expert paths knows the format. w13 and w2 are
qweights.QuantMatrix modules (parameters: codes, scales, zero points), so `model.parameters()`
counts the real bytes and `.to()` moves them.

Numerics: integer formats are weight-only (the activation meets the dequantized weight in the
compute dtype, on every path). fp8 is W8A8 where a GEMM runs on fp8 tensor cores (the fused path's
aligned kernels, for prefill-sized calls); the loop and grouped oracles and the decode GEMVs keep
activations in the compute dtype (W8A16), see kernels/fused_moe_quant_small.py for why.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .experts import Experts
from .instrument import note
from .qweights import QuantMatrix

try:
    from .kernels import fused_moe_quant as _fmq
except ImportError:       # no Triton: --experts fused is refused before a model is built
    _fmq = None


class QuantExperts(Experts):
    """E local experts as quantized stacks; x [T, D], weights/ids [T, K] -> [T, D] in x.dtype."""

    def __init__(self, w13: QuantMatrix, w2: QuantMatrix, dtype: torch.dtype, expert_offset: int = 0,
                 settings=None):
        nn.Module.__init__(self)
        self.expert_offset, self.settings, self.dtype = expert_offset, settings, dtype
        self.w13, self.w2 = w13, w2

    @classmethod
    def quantize(cls, experts: Experts, quantize_stack) -> "QuantExperts":
        """A quantized twin of a dense Experts: quantize_stack([n, N, K] float) -> QuantMatrix, run
        one expert at a time so the float32 copy of a Mixtral layer never exists at once."""
        w13, w2 = experts.w13.detach(), experts.w2.detach()
        dtype = w13.dtype if w13.dtype.is_floating_point else torch.float32
        return cls(_by_expert(w13, quantize_stack), _by_expert(w2, quantize_stack), dtype,
                   experts.expert_offset, experts.settings)

    @property
    def fmt(self) -> str:
        return self.w13.describe()

    @property
    def n_local(self) -> int:
        return self.w13.stack_shape[0]

    @property
    def hidden(self) -> int:
        return self.w2.stack_shape[2]

    def expert_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w13.dequantize(self.dtype, e)[0], self.w2.dequantize(self.dtype, e)[0]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w13.dequantize(self.dtype), self.w2.dequantize(self.dtype)

    def fused(self, x, ids, weights, pdl: bool = False):
        note("fused_moe", _fmq.plan(ids.shape[0], ids.shape[1], self.n_local))
        return _fmq.fused_moe_quant(x, self.w13, self.w2, ids, weights, expert_offset=self.expert_offset, pdl=pdl)

    def extra_repr(self) -> str:
        E, N, K = self.w13.stack_shape
        return f"E={E}, I={N // 2}, D={K}, format={self.fmt}"


def _by_expert(w: torch.Tensor, quantize_stack) -> QuantMatrix:
    """Quantize [E, N, K] one expert at a time and stack the parameters (same result as all at once:
    every scale lives inside one expert; on the meta device, where nothing is computed, all at once)."""
    if w.is_meta:
        return quantize_stack(w)
    parts = [quantize_stack(w[e:e + 1]) for e in range(w.shape[0])]
    first = parts[0]
    cat = [torch.cat([getattr(p, name) for p in parts]) if getattr(first, name) is not None else None
           for name in ("qdata", "scale", "zero")]
    out = type(first)(*cat, first.K, first.bits, first.group, first.row_block)
    out.codes, out.codebook = first.codes, first.codebook
    return out
