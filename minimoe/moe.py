"""The MoE block: router -> routed experts -> combine, plus always-on shared experts.

    logits  = x Wgateᵀ                    [T, E]   (float32 for DeepSeek, whose gate is kept fp32)
    w, ids  = ROUTERS[name](logits)       [T, K]   (router.py)
    y       = EXPERT_PATHS[path](x, ...)  [T, D]   (experts.py: loop | grouped | fused)
    y      += shared(x) [* sigmoid(x Wsgᵀ) for Qwen2-MoE]

Which router and which expert path run are run settings, read at every call, so an ablation can
flip one without rebuilding the model. Dense layers (DeepSeek's first layers) are a plain SwiGLU.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig, RunSettings
from .experts import EXPERT_PATHS, Experts
from .instrument import record_load, region
from .layers import SwiGLU
from .router import RouterSpec, route


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: RunSettings, layer: int):
        super().__init__()
        self.cfg, self.settings, self.layer = cfg, settings, layer
        D = cfg.hidden_size
        self.gate = nn.Linear(D, cfg.n_experts, bias=False)
        if cfg.router_fp32:
            self.gate.float()
        if cfg.router_bias:
            self.gate_bias = nn.Parameter(torch.zeros(cfg.n_experts))    # selection bias, kept fp32
        self.experts = Experts(cfg.n_experts, D, cfg.moe_intermediate_size)
        if cfg.shared_intermediate_size:
            self.shared = SwiGLU(D, cfg.shared_intermediate_size)
        if cfg.shared_expert_gate:
            self.shared_gate = nn.Linear(D, 1, bias=False)

    def router_spec(self) -> RouterSpec:
        s = self.settings
        return RouterSpec.from_config(self.cfg, s.router, s.top_k, s.zipf_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        xt = x.reshape(B * S, D)                                         # [T, D]
        with region("router"):
            logits = self.gate(xt.to(self.gate.weight.dtype))            # [T, E]
            weights, ids = route(logits, self.router_spec(), getattr(self, "gate_bias", None),
                                 fused=self.settings.fused_ops)
            record_load(self.layer, ids)
        return self._experts(xt, weights, ids).view(B, S, D)

    def folds_router(self, tokens: int) -> bool:
        """Can the pre-FFN norm, router GEMV and top-k run as one kernel (kernels/norm_route.py)?"""
        from .kernels.norm_route import MAX_T, usable
        if not (self.settings.fused_ops and 0 < tokens <= MAX_T):
            return False
        spec = self.router_spec()
        return usable(self.cfg.n_experts, self.cfg.hidden_size, spec.name, hasattr(self, "gate_bias"),
                      self.gate.weight.dtype, self.experts.w13.dtype)

    def forward_folded(self, x: torch.Tensor, residual, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode sizes: (moe(norm(x + residual)), x + residual); norm + router + top-k in one kernel."""
        from .kernels.norm_route import norm_route
        B, S, D = x.shape
        spec = self.router_spec()
        with region("router"):
            h, res, weights, ids = norm_route(                           # h [T, D], weights/ids [T, K]
                x.reshape(B * S, D), None if residual is None else residual.reshape(B * S, D), norm.weight,
                self.gate.weight, norm.eps, spec.top_k, renorm=spec.renorm, scaling=spec.scaling,
                softmax_first=spec.name == "softmax_topk")
            record_load(self.layer, ids)
        return self._experts(h, weights, ids).view(B, S, D), (x if res is None else res.view(B, S, D))

    def _experts(self, xt: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Routed experts plus the shared ones: xt [T, D] -> [T, D]."""
        ex = self.experts
        y = EXPERT_PATHS[self.settings.experts](xt, ex.w13, ex.w2, ids, weights, ex.expert_offset)
        with region("shared" if self.cfg.shared_intermediate_size else "combine"):
            if self.cfg.shared_intermediate_size:
                s = self.shared(xt)
                if self.cfg.shared_expert_gate:
                    s = torch.sigmoid(self.shared_gate(xt)) * s
                y = y + s
            return y


def make_ffn(cfg: ModelConfig, settings: RunSettings, layer: int) -> nn.Module:
    if cfg.is_moe_layer(layer):
        return MoE(cfg, settings, layer)
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size)
