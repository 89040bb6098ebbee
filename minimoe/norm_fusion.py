"""The attention's RMSNorm inside its q/k/v GEMV at batch 1 (`--fold-attn-norm`).

A layer at decode starts with

    h, s  = rmsnorm(x + residual), x + residual      kernels/rmsnorm.py: one small launch on the critical path
    qkv   = h Wqkvᵀ                                   linear.py: the stream GEMV at one token

kernels/norm_gemv.py folds the first launch into the second: 1 / rms(s) is one number per token, so every GEMV
program computes W · (g ⊙ s) for its columns while it adds up Σ s², and scales by 1 / rms at the end. One launch a
layer fewer; s (the residual stream) is the unfused bits, q/k/v skip h's bf16 rounding (hence a switch of its own).

Where it applies (`fits`): `--fold-attn-norm on`, a one-token step that is not a prefill (the first layer too: its
norm has no residual to add), an attention module with a fused q/k/v projection (attention.Attention; MLA's projections are
a pair, not folded) whose weight is plain, contiguous and in x's dtype, a norm weight in x's dtype, a layer
where `--fuse-rope` does not take the q/k/v GEMV (its rope epilogue owns that launch), and nothing hooked on the
attention, its q/k/v projection or the layer's norm (a tensor-parallel plan's hooks, calibration): those see every
call, so they keep the unfused path. model.Block asks `fits` before the norm and passes the q/k/v rows it gets
from `run` to the attention (Attention.heads' `qkv`).
"""
from __future__ import annotations

import torch

from . import rope_fusion
from .instrument import note

try:
    from .kernels import norm_gemv as _kernel
except ImportError:       # no Triton: --ops triton (and with it this) is refused before a model is built
    _kernel = None

MAX_T = 1      # tokens a step: the stream GEMV's batch-1 regime (linear.auto_gemv sends 2 tokens to cuBLAS at these widths)


def _hooked(*modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def fits(block, x: torch.Tensor, residual: torch.Tensor | None, step, cache) -> bool:
    """Whether `run` applies to layer `block` (model.Block) for its input x [B, S, D], residual stream and cache."""
    attn = block.attn
    s = attn.settings
    if s is None or getattr(s, "fold_attn_norm", "off") != "on" or _kernel is None or step.fresh:
        return False
    B, S, D = x.shape
    lin = getattr(attn, "wqkv", None)
    norm = block.attn_norm
    if lin is None or not 1 <= B * S <= MAX_T or norm.weight.dtype != x.dtype or (residual is not None
                                                                                  and residual.dtype != x.dtype):
        return False
    if not _kernel.usable(B * S, D, lin.weight, x.dtype, lin.bias) or (lin.bias is not None
                                                                         and lin.bias.dtype != x.dtype):
        return False
    if _hooked(attn, lin, norm) or rope_fusion.fits(attn, x, cache):
        return False
    return True


def run(block, x: torch.Tensor, residual: torch.Tensor | None, step):
    """x, residual [B, S, D] (None in the first layer) -> (qkv [B, S, N] = the q/k/v projection of
    rmsnorm(x + residual), x + residual), as ResidualRMSNorm then the projection."""
    attn, norm = block.attn, block.attn_norm
    B, S, D = x.shape
    note("attention", "norm+qkv")
    y, s = _kernel.norm_gemv(x.reshape(B * S, D), None if residual is None else residual.reshape(B * S, D),
                             norm.weight, norm.eps, attn.wqkv.weight, attn.wqkv.bias, pdl=attn.settings.pdl == "on")
    return y.view(B, S, -1), s.view(B, S, D)
