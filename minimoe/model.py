"""The decoder stack, wired from a `ModelConfig`.

    ids [B, S] -> embed -> L x (x += Attn(norm(x)); x += FFN(norm(x))) -> norm -> lm_head -> logits

Every family is pre-norm with RMSNorm; what differs (GQA vs MLA attention, MoE vs dense FFN per
layer, shared experts, tied embeddings) is decided once, here, from config fields. The KV cache is
owned by the caller (generate.py) and handed down with a `Step` describing the new tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import Attention
from .config import ModelConfig, RunSettings
from .instrument import region
from .kv_cache import KVCache, Step
from .layers import RMSNorm, Rotary, folds_norms, rope_tables
from .mla import MLAttention
from .moe import MoE, make_ffn


class Block(nn.Module):
    """One pre-norm layer. It carries the residual stream separately and returns (y, residual)
    without adding them: the add happens inside the next norm (one fused kernel with fused_ops)."""

    def __init__(self, cfg: ModelConfig, settings: RunSettings, layer: int):
        super().__init__()
        self.settings = settings
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, settings)
        self.attn = (MLAttention if cfg.attention == "mla" else Attention)(cfg, settings, layer)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, settings)
        self.ffn = make_ffn(cfg, settings, layer)
        self.ffn_region = None if isinstance(self.ffn, MoE) else "dense"   # MoE opens its own regions

    def forward(self, x, residual, step: Step, cache: KVCache, rot: Rotary):
        """x [B, S, D] (this layer's input not yet added to residual) -> (ffn output, residual).
        At decode sizes with settings.gemv each norm runs inside the kernel that reads its output."""
        T = x.shape[0] * x.shape[1]
        if folds_norms(self.settings, T) and isinstance(self.attn, Attention):
            with region("attention"):
                a, residual = self.attn.forward_folded(x, residual, self.attn_norm, step, cache, rot)
        else:
            with region("norm"):
                h, residual = self.attn_norm.add_forward(x, residual)
            with region("attention"):
                a = self.attn(h, step, cache, rot)
        if isinstance(self.ffn, MoE) and self.ffn.folds_router(T):
            return self.ffn.forward_folded(a, residual, self.ffn_norm)
        with region("norm"):
            h, residual = self.ffn_norm.add_forward(a, residual)
        if self.ffn_region:
            with region(self.ffn_region):
                return self.ffn(h), residual
        return self.ffn(h), residual


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: RunSettings | None = None):
        super().__init__()
        self.cfg = cfg
        self.settings = settings or RunSettings()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, self.settings, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, self.settings)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope_len = 0

    def setup_rope(self, max_len: int, device) -> None:
        """cos/sin tables [max_len, rope_dim/2] (float32), built once per cache size."""
        if max_len > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence length {max_len} exceeds the model's max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}")
        if self.cfg.sliding_window and max_len > self.cfg.sliding_window:
            raise ValueError(f"sequence length {max_len} exceeds the sliding window {self.cfg.sliding_window}, "
                             "which minimoe does not implement")
        if max_len > self.rope_len:
            cos, sin = rope_tables(self.cfg, max_len)
            self.cos, self.sin = cos.to(device), sin.to(device)
            self.rope_len = max_len

    def forward(self, ids: torch.Tensor, step: Step, cache: KVCache, last_only: bool = False):
        """ids [B, S] -> logits [B, S, V] (or [B, V] for the last position), float32."""
        with region("embed"):
            x = self.embed(ids)                                                # [B, S, D]
            rot = Rotary(self.cos, self.sin, self.cos[step.positions], self.sin[step.positions])  # [B, S, rope/2]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, step, cache, rot)
        head = self.embed.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        if last_only and folds_norms(self.settings, x.shape[0]):
            from .kernels.gemv import gemv
            with region("lm_head"):                                   # the final norm inside the GEMV
                return gemv(x[:, -1].contiguous(), head, norm_weight=self.norm.weight, eps=self.norm.eps,
                            residual=residual[:, -1].contiguous())[0].float()
        with region("norm"):
            if last_only:
                x, residual = x[:, -1:].contiguous(), residual[:, -1:].contiguous()
            x = self.norm.add_forward(x, residual)[0]
            if last_only:
                x = x[:, 0]
        with region("lm_head"):
            return (x @ head.T).float()
