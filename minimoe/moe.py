"""The MoE block: router -> routed experts, plus always-on shared experts, kept apart.

    w, ids  = router(h)                   [T, K]   (gate.py: the family's routing maths)
    routed  = experts(h, w, ids)          [T, D]   (experts.py: loop | grouped | fused, any weight format)
    shared  = shared_experts(h)           [T, D]   (DeepSeek's and Qwen2-MoE's dense expert(s); Qwen2's scaled
                                                    by sigmoid(h Wsgᵀ))
    y       = routed + shared

The routed and shared parts are separate modules called through `nn.Module.__call__`, so an expert-
parallel plan can combine only the routed output across ranks (a hook on `experts`) while shared
experts run replicated or tensor-parallel, and the profile shows each part on its own. Each layer's
expert count and width come from its own tensors (`ModelConfig.layer_experts/layer_moe_width`, which
the loader sets from the checkpoint), so pruned checkpoints with uneven layers load and run.
With `--fuse-shared` the shared expert runs inside the routed experts' kernels (shared_fusion.py: batch 1's decode
kernels, and the aligned GEMMs up to 64 tokens); the modules stay apart, so everything else sees the same two parts.
Dense layers (DeepSeek's first layers, Qwen's mlp_only_layers) are a plain SwiGLU.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import shared_fusion
from .config import ModelConfig
from .experts import Experts
from .gate import Router
from .instrument import region
from .layers import SwiGLU
from .linear import Linear


class SharedExperts(SwiGLU):
    """The always-on expert(s): x [T, D] -> [T, D]; Qwen2-MoE multiplies by sigmoid(x Wsgᵀ) [T, 1]."""

    def __init__(self, cfg: ModelConfig, settings):
        super().__init__(cfg.hidden_size, cfg.shared_intermediate_size, settings)
        self.gate = Linear(cfg.hidden_size, 1, settings=settings) if cfg.shared_expert_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.gate is None else torch.sigmoid(self.gate(x)) * y


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, settings, layer: int):
        super().__init__()
        E, I = cfg.layer_experts(layer), cfg.layer_moe_width(layer)
        self.layer = layer
        self.router = Router(cfg, settings, E, layer)
        self.experts = Experts(E, cfg.hidden_size, I, settings=settings)
        self.shared = SharedExperts(cfg, settings) if cfg.shared_intermediate_size else None

    def forward(self, h: torch.Tensor, routing=None) -> torch.Tensor:
        """h [B, S, D] (normed) -> [B, S, D]. routing: (weights, ids) [T, K] when the router already ran
        (folded with the norm in front of it: `fold_norm`)."""
        B, S, D = h.shape
        ht = h.reshape(B * S, D)                                          # [T, D]
        if routing is not None:
            weights, ids = routing
        else:
            with region("router"):
                weights, ids = self.router(ht)                            # [T, K] each
        if shared_fusion.fits(self, ht, ids.shape[1]):                   # --fuse-shared: both in the routed launches
            return shared_fusion.run(self, ht, weights, ids).view(B, S, D)
        y = self.experts(ht, weights, ids)                                # [T, D]; regions inside the path
        if self.shared is not None:
            with region("shared"):
                y = y + self.shared(ht)
        return y.view(B, S, D)

    def fold_fits(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        """Whether `fold_norm` applies to x, residual [B, S, D] (contiguous; Router.fold_fits)."""
        B, S, D = x.shape
        return (x.is_contiguous() and (residual is None or residual.is_contiguous())
                and self.router.fold_fits(B * S, D, x.dtype))

    def fold_norm(self, x: torch.Tensor, residual: torch.Tensor | None, norm, counters=None):
        """x, residual [B, S, D] -> (h, x + residual, (weights, ids)) with the norm run inside the router's
        kernel (Router.norm_and_route), where `fold_fits`."""
        B, S, D = x.shape
        h = torch.empty(B, S, D, dtype=torch.promote_types(norm.weight.dtype, x.dtype), device=x.device)
        res = x if residual is None else torch.empty_like(x)
        w, ids = self.router(x.view(B * S, D), None if residual is None else residual.view(B * S, D),
                             norm=norm, counters=counters, out=(h.view(B * S, D), res.view(B * S, D)))
        return h, res, (w, ids)


def make_ffn(cfg: ModelConfig, settings, layer: int) -> nn.Module:
    if cfg.is_moe_layer(layer):
        return MoE(cfg, settings, layer)
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size, settings)
