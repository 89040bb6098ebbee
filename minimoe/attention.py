"""Grouped-query attention over the static KV cache, and the decode-attention backends.

Three situations, one per branch of `attend`:
  * a fresh prefill (every sequence starts at 0): causal SDPA within the new tokens; the cache is
    only written, never read;
  * decode (one new token per sequence): a backend from `DECODE_ATTENTION` reads the cache;
    `sdpa` masks the padded cache (reading all of it inside a CUDA graph, where lengths live on the
    device), `triton` is a split-K kernel that reads only each sequence's filled part, `flash` is
    flash-attn's `flash_attn_with_kvcache` when installed;
  * a chunk appended to a non-empty cache (speculative verification): SDPA with an explicit mask.

Family quirks handled here: GQA (Hkv < H), q/k/v bias (Qwen1.5/2), q/k RMSNorm over the whole
projection (OLMoE, "full") or per head (Qwen3, "head"), and OLMoE's optional q/k/v clipping.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ModelConfig, RunSettings
from .kv_cache import KVCache, Step
from .layers import RMSNorm, Rotary, apply_rope, project, project_normed


def _decode_sdpa(q, k_cache, v_cache, step: Step, scale: float):
    return None  # handled by the masked SDPA path in `attend_cached`


def _decode_triton(q, k_cache, v_cache, step: Step, scale: float):
    from .kernels.decode_attention import decode_attention
    return decode_attention(q, k_cache, v_cache, step.seq_lens, scale)


def _decode_flash(q, k_cache, v_cache, step: Step, scale: float):
    from flash_attn import flash_attn_with_kvcache   # checked at start-up by `check_attn_backend`
    out = flash_attn_with_kvcache(q[:, None], k_cache, v_cache, cache_seqlens=step.seq_lens,
                                  softmax_scale=scale, causal=True)
    return out[:, 0]


# q [B, H, dk], caches [B, S_max, Hkv, dk|dv] -> [B, H, dv]; None = use the masked SDPA path
DECODE_ATTENTION = {"sdpa": _decode_sdpa, "triton": _decode_triton, "flash": _decode_flash}


def check_attn_backend(name: str, cfg: ModelConfig, device: torch.device) -> None:
    """Refuse a backend that cannot run here, before any heavy work."""
    if name not in DECODE_ATTENTION:
        raise ValueError(f"unknown attention backend {name!r}; choose from {sorted(DECODE_ATTENTION)}")
    if name == "flash":
        if device.type != "cuda":
            raise ValueError("--attn flash needs a CUDA GPU")
        if cfg.attention == "mla":
            raise ValueError("--attn flash cannot run MLA (key and value widths differ); use triton")
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise ValueError("--attn flash needs flash-attn: pip install 'minimoe[flash]'") from e
    if name == "triton" and device.type != "cuda":
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("--attn triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)")


# cuDNN's attention builds an execution plan per shape: a cache that grows by one entry per step
# would rebuild it every token (~20 ms per layer measured on the H200), so masked calls skip it.
MASKED_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attend_cached(q, k_cache, v_cache, step: Step, scale: float, backend: str):
    """q [B, S, H, dk] against cached K/V [B, S_max, Hkv, d] (already holding this step) -> [B, S, H, dv]."""
    if q.shape[1] == 1:
        out = DECODE_ATTENTION[backend](q[:, 0], k_cache, v_cache, step, scale)
        if out is not None:
            return out[:, None]
    L = step.max_len or k_cache.shape[1]
    k, v = k_cache[:, :L].transpose(1, 2), v_cache[:, :L].transpose(1, 2)    # [B, Hkv, L, d]
    cols = torch.arange(L, device=q.device)
    mask = cols[None, None, None, :] <= step.positions[:, None, :, None]    # [B, 1, S, L]
    with sdpa_kernel(MASKED_SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=scale,
                                             enable_gqa=k.shape[1] != q.shape[2])
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: RunSettings, layer: int):
        super().__init__()
        self.cfg, self.settings, self.layer = cfg, settings, layer
        H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, (H + 2 * Hkv) * d, bias=cfg.qkv_bias)
        self.wo = nn.Linear(H * d, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm == "full":
            self.q_norm, self.k_norm = RMSNorm(H * d, cfg.rms_norm_eps), RMSNorm(Hkv * d, cfg.rms_norm_eps)
        elif cfg.qk_norm == "head":
            self.q_norm, self.k_norm = RMSNorm(d, cfg.rms_norm_eps), RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, x, step: Step, cache: KVCache, rot: Rotary):
        """x [B, S, D] -> [B, S, D]; writes this step's K/V into the cache."""
        return self.attend_qkv(self.wqkv(x), step, cache, rot)                # qkv [B, S, (H + 2Hkv) d]

    def forward_folded(self, x, residual, norm: RMSNorm, step: Step, cache: KVCache, rot: Rotary):
        """Decode sizes: (attn(norm(x + residual)), x + residual) with the norm inside the qkv GEMV."""
        qkv, residual = project_normed(self.wqkv, norm, x, residual)
        return self.attend_qkv(qkv, step, cache, rot), residual

    def attend_qkv(self, qkv, step: Step, cache: KVCache, rot: Rotary):
        cfg = self.cfg
        B, S, _ = qkv.shape
        H, d = cfg.n_heads, cfg.head_dim
        if self.settings.fused_ops:
            q = self._prepare_fused(qkv, step, cache, rot)
        else:
            q = self._prepare(qkv, step, cache, rot)
        return self._attend(q, step, cache, B, S, H, d)

    def _prepare_fused(self, qkv, step: Step, cache: KVCache, rot: Rotary):
        """One kernel: q/k norm, rope, and the K/V cache write; returns q [B, S, H, d]."""
        from .kernels.rope import qkv_rope_cache
        cfg = self.cfg
        qn, kn = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
        return qkv_rope_cache(qkv, step.positions, rot.cos_table, rot.sin_table, cache.k[self.layer],
                              cache.v[self.layer], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, qk_norm=cfg.qk_norm,
                              q_norm_w=qn.weight if qn is not None else None,
                              k_norm_w=kn.weight if kn is not None else None, eps=cfg.rms_norm_eps,
                              interleave=cfg.rope_interleave, clip_qkv=cfg.clip_qkv)

    def _prepare(self, qkv, step: Step, cache: KVCache, rot: Rotary):
        cfg = self.cfg
        B, S, _ = qkv.shape
        H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q, k, v = qkv.split([H * d, Hkv * d, Hkv * d], dim=-1)
        if cfg.qk_norm == "full":               # OLMoE: normalise the whole projection, then split heads
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.clip_qkv is not None:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        q, k, v = q.view(B, S, H, d), k.view(B, S, Hkv, d), v.view(B, S, Hkv, d)
        if cfg.qk_norm == "head":               # Qwen3: normalise each head separately
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, rot.cos, rot.sin, cfg.rope_interleave)
        cache.write_kv(self.layer, step, apply_rope(k, rot.cos, rot.sin, cfg.rope_interleave), v)
        return q

    def _attend(self, q, step: Step, cache: KVCache, B, S, H, d):
        """q [B, S, H, d] against the cache (which already holds this step's K/V) -> [B, S, D]."""
        cfg = self.cfg
        k_cache, v_cache = cache.k[self.layer], cache.v[self.layer]
        if step.fresh:   # prefill: this step's K/V are the first S rows of the cache
            k, v = k_cache[:, :S], v_cache[:, :S]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=S > 1, scale=cfg.softmax_scale,
                                                 enable_gqa=cfg.n_kv_heads != H).transpose(1, 2)
        else:
            out = attend_cached(q, k_cache, v_cache, step, cfg.softmax_scale, self.settings.attn)
        return project(self.wo, out.reshape(B, S, H * d), self.settings)
