"""Multi-head latent attention (DeepSeek-V2/V3): cache a small latent, not K and V.

Each token is compressed to a latent c = norm(W_kva x)[:r] (r = kv_lora_rank = 512) plus one shared
rotary key k_pe (64 wide). Per head, keys and values are linear in the latent:
    k_nope_h = W_uk_h c,   v_h = W_uv_h c      (W_uk, W_uv are the two halves of `wkv_b`)
so only [c, k_pe] (576 numbers per token) is cached.

Two ways to attend, equal in exact arithmetic:
  * expanded (prefill): materialise k, v for every head from the latent and run ordinary SDPA;
    cheapest when many queries share the expansion;
  * absorbed (decode): fold W_uk into the query, q_lat_h = W_uk_hᵀ q_nope_h, so scores are
    q_lat_h·c + q_pe_h·k_pe -- attention with ONE key/value head of width 576 (values = the first
    512 columns); then un-fold the output with W_uv. The cache is read once for all heads.
The absorbed form is plain multi-query attention, so the decode backends of `attention.py` (the
Triton split-K kernel included) run it unchanged.
Reference: DeepSeek-V2, arXiv 2405.04434 §2.1; DeepSeek-V3 `inference/model.py` (absorb mode).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attend_cached
from .config import ModelConfig
from .kv_cache import KVCache, Step
from .layers import RMSNorm
from .linear import Linear
from .rope import Rotary, apply_rope


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, settings, layer: int):
        super().__init__()
        self.cfg, self.settings, self.layer = cfg, settings, layer
        D, H, r = cfg.hidden_size, cfg.n_heads, cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.wq_a = Linear(D, cfg.q_lora_rank, bias=cfg.qkv_bias, settings=settings)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps, settings)
            self.wq_b = Linear(cfg.q_lora_rank, H * cfg.qk_head_dim, settings=settings)
        else:
            self.wq = Linear(D, H * cfg.qk_head_dim, settings=settings)
        self.wkv_a = Linear(D, r + cfg.qk_rope_head_dim, bias=cfg.qkv_bias, settings=settings)
        self.kv_norm = RMSNorm(r, cfg.rms_norm_eps, settings)
        self.wkv_b = Linear(r, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), settings=settings)
        self.wo = Linear(H * cfg.v_head_dim, D, bias=cfg.o_bias, settings=settings)

    @property
    def n_heads(self) -> int:      # this module's heads (a tensor-parallel shard holds a slice)
        return self.wo.in_features // self.cfg.v_head_dim

    def _split_wkv_b(self):
        """wkv_b [H*(nope+v), r] -> W_uk [H, nope, r], W_uv [H, v, r] (views, no copy). The absorbed
        decode reads the weight directly: a packed (quantized) wkv_b is dequantized here."""
        cfg = self.cfg
        w = self.wkv_b.weight
        if not isinstance(w, torch.Tensor):
            w = w.dequantize()
        w = w.view(self.n_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank)
        return w[:, :cfg.qk_nope_head_dim], w[:, cfg.qk_nope_head_dim:]

    def forward(self, x, step: Step, cache: KVCache, rot: Rotary):
        cfg = self.cfg
        B, S, _ = x.shape
        H, nope, rope, r = self.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        q = self.wq(x) if not cfg.q_lora_rank else self.wq_b(self.q_norm(self.wq_a(x)))
        q_nope, q_pe = q.view(B, S, H, nope + rope).split([nope, rope], dim=-1)
        c, k_pe = self.wkv_a(x).split([r, rope], dim=-1)
        c = self.kv_norm(c)                                                   # [B, S, r]
        q_pe = apply_rope(q_pe, rot.cos, rot.sin, cfg.rope_interleave)        # [B, S, H, rope]
        k_pe = apply_rope(k_pe[:, :, None, :], rot.cos, rot.sin, cfg.rope_interleave)[:, :, 0]  # [B, S, rope]
        cache.write_latent(self.layer, step, torch.cat([c, k_pe], dim=-1))
        if step.fresh:
            out = self._expanded(q_nope, q_pe, c, k_pe)
        else:
            out = self._absorbed(q_nope, q_pe, step, cache)
        return self.wo(out.reshape(B, S, H * cfg.v_head_dim))

    def _expanded(self, q_nope, q_pe, c, k_pe):
        """Prefill within the new tokens: per-head k, v from the latent, causal SDPA."""
        cfg = self.cfg
        B, S, H, _ = q_nope.shape
        kv = self.wkv_b(c).view(B, S, self.n_heads, cfg.qk_nope_head_dim + cfg.v_head_dim)
        k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)                                         # [B, S, H, 192]
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, S, H, -1)], dim=-1)      # [B, S, H, 192]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=S > 1, scale=cfg.softmax_scale)
        return out.transpose(1, 2)                                                    # [B, S, H, v]

    def _absorbed(self, q_nope, q_pe, step: Step, cache: KVCache):
        """Attention in latent space: one shared key/value head of width r + rope."""
        cfg = self.cfg
        w_uk, w_uv = self._split_wkv_b()
        q_lat = torch.einsum("bshn,hnr->bshr", q_nope, w_uk)                          # [B, S, H, r]
        q = torch.cat([q_lat, q_pe], dim=-1)                                          # [B, S, H, r+rope]
        latent = cache.latent[self.layer]                                             # [B, S_max, r+rope]
        k_cache = latent[:, :, None, :]                                               # one kv head
        v_cache = latent[:, :, None, :cfg.kv_lora_rank]
        out_lat = attend_cached(q, k_cache, v_cache, step, cfg.softmax_scale, self.settings)
        return torch.einsum("bshr,hvr->bshv", out_lat, w_uv)                          # [B, S, H, v]
