"""Grouped-query attention over the static KV cache, and the decode-attention backends.

Three situations, one per branch of `attend`:
  * a fresh prefill (every sequence starts at 0): causal SDPA within the new tokens; the cache is
    only written, never read;
  * decode (one new token per sequence): a backend from `DECODE_ATTENTION` reads the cache;
    `sdpa` masks the padded cache (reading all of it inside a CUDA graph, where lengths live on the
    device), `triton` is a split-K kernel that reads only each sequence's filled part, `flash` is
    flash-attn's `flash_attn_with_kvcache` when installed;
  * a chunk appended to a non-empty cache (speculative verification, ragged appends): with
    `triton`, the same split-K kernel with S query rows per sequence, each token seeing the cache up
    to its own position (one read of the cache for all S tokens); otherwise SDPA with an explicit
    mask over the cache.

Family quirks handled here: GQA (Hkv < H), q/k/v bias (Qwen1.5/2), q/k RMSNorm over the whole
projection (OLMoE, "full") or per head (Qwen3, "head"), and OLMoE's optional q/k/v clipping. The
q/k norm + rope + cache write between the qkv projection and attention is one op (ops.py): several
PyTorch kernels, or one Triton kernel with --ops triton.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ModelConfig
from .kv_cache import KVCache, Step
from .layers import RMSNorm
from .linear import Linear
from .ops import ops_for
from . import rope_attn_fusion, rope_fusion

try:
    from .kernels import decode_attention as _decode_kernel
except ImportError:       # no Triton: --attn triton is refused before a model is built
    _decode_kernel = None


def _decode_sdpa(q, k_cache, v_cache, step: Step, scale: float, pdl: bool = False):
    return None  # handled by the masked SDPA path in `attend_cached`


def _decode_triton(q, k_cache, v_cache, step: Step, scale: float, pdl: bool = False):
    # no counters: the one-kernel merge (decode_attention's `counters`) measured slower in the engine
    # (docs/results/2026-11-30-s8, calls 3-4): its last program walks the splits serially
    return _decode_kernel.decode_attention(q, k_cache, v_cache, step.seq_lens, scale, pdl=pdl)


def _decode_flash(q, k_cache, v_cache, step: Step, scale: float, pdl: bool = False):
    from flash_attn import flash_attn_with_kvcache   # optional package, checked at start-up (runtime.py)
    out = flash_attn_with_kvcache(q[:, None], k_cache, v_cache, cache_seqlens=step.seq_lens,
                                  softmax_scale=scale, causal=True)
    return out[:, 0]


# q [B, H, dk], caches [B, S_max, Hkv, dk|dv] -> [B, H, dv]; None = use the masked SDPA path
DECODE_ATTENTION = {"sdpa": _decode_sdpa, "triton": _decode_triton, "flash": _decode_flash}


# cuDNN's attention builds an execution plan per shape: a cache that grows by one entry per step
# would rebuild it every token (~20 ms per layer measured on the H200), so masked calls skip it.
MASKED_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attend_cached(q, k_cache, v_cache, step: Step, scale: float, settings):
    """q [B, S, H, dk] against cached K/V [B, S_max, Hkv, d] (already holding this step) -> [B, S, H, dv]."""
    backend = settings.attn if settings is not None else "sdpa"
    pdl = settings is not None and settings.pdl == "on"
    if q.shape[1] == 1:
        out = DECODE_ATTENTION[backend](q[:, 0], k_cache, v_cache, step, scale, pdl)
        if out is not None:
            return out[:, None]
    elif backend == "triton":   # several new tokens: causal by position, one pass over the cache
        return _decode_kernel.decode_attention(q, k_cache, v_cache, step.seq_lens, scale,
                                               positions=step.positions, pdl=pdl)
    L = step.max_len or k_cache.shape[1]
    k, v = k_cache[:, :L].transpose(1, 2), v_cache[:, :L].transpose(1, 2)    # [B, Hkv, L, d]
    cols = torch.arange(L, device=q.device)
    mask = cols[None, None, None, :] <= step.positions[:, None, :, None]    # [B, 1, S, L]
    with sdpa_kernel(MASKED_SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=scale,
                                             enable_gqa=k.shape[1] != q.shape[2])
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, settings, layer: int):
        super().__init__()
        self.cfg, self.settings, self.layer = cfg, settings, layer
        H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = Linear(cfg.hidden_size, (H + 2 * Hkv) * d, bias=cfg.qkv_bias, settings=settings)
        self.wo = Linear(H * d, cfg.hidden_size, bias=cfg.o_bias, settings=settings)
        if cfg.qk_norm == "full":
            self.q_norm, self.k_norm = RMSNorm(H * d, cfg.rms_norm_eps), RMSNorm(Hkv * d, cfg.rms_norm_eps)
        elif cfg.qk_norm == "head":
            self.q_norm, self.k_norm = RMSNorm(d, cfg.rms_norm_eps), RMSNorm(d, cfg.rms_norm_eps)

    @property
    def n_heads(self) -> int:      # this module's heads (a tensor-parallel shard holds a slice)
        return self.wo.in_features // self.cfg.head_dim

    @property
    def n_kv_heads(self) -> int:
        return (self.wqkv.out_features // self.cfg.head_dim - self.n_heads) // 2

    def forward(self, x, step: Step, cache: KVCache, rot, qkv=None, q=None):
        """x [B, S, D] -> [B, S, D]; writes this step's K/V into the cache. qkv, q: as for `heads`."""
        return self.wo(self.heads(x, step, cache, rot, qkv=qkv, q=q))

    def heads(self, x, step: Step, cache: KVCache, rot, qkv=None, q=None):
        """Everything but the o projection: x [B, S, D] -> the heads' output [B, S, H·d] (router_fusion.py runs
        the o projection itself, with the router in its epilogue). qkv [B, S, (H + 2Hkv) d]: the q/k/v projection
        already made (norm_fusion.py folds the layer's norm into it); q [B, S, H, d]: q already rotated and this
        step's K/V already in the cache (norm_fusion.py's fold into --fuse-rope's kernel); x then gives only the
        shape."""
        cfg = self.cfg
        B, S, _ = x.shape
        H, Hkv, d = self.n_heads, self.n_kv_heads, cfg.head_dim
        if q is None and qkv is None and rope_fusion.fits(self, x, cache):   # --fuse-rope: one launch at batch 1
            q = rope_fusion.run(self, x, step, cache, rot)
        elif q is None:
            if qkv is None:
                qkv = self.wqkv(x)                                           # [B, S, (H + 2Hkv) d]
            if rope_attn_fusion.fits(self, qkv, step, cache):                # --fuse-rope-attn: one launch
                return rope_attn_fusion.run(self, qkv, step, cache, rot)     # [B, 1, H·d]
            qn, kn = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
            rows = rot.step_rows()                                           # rope.STEP_ROWS: this step's rows
            cos, sin = rows if rows is not None else (rot.cos_table, rot.sin_table)
            q = ops_for(self.settings).qkv_rope_cache(                       # [B, S, H, d]; K/V into the cache
                qkv, step.positions, cos, sin, cache.k[self.layer], cache.v[self.layer], H, Hkv,
                d, qk_norm=cfg.qk_norm, q_norm_w=qn.weight if qn is not None else None,
                k_norm_w=kn.weight if kn is not None else None, eps=cfg.rms_norm_eps,
                interleave=cfg.rope_interleave, clip_qkv=cfg.clip_qkv, rows=rows is not None)
        k_cache, v_cache = cache.k[self.layer], cache.v[self.layer]
        if step.fresh:   # prefill: this step's K/V are the first S rows of the cache
            k, v = k_cache[:, :S], v_cache[:, :S]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=S > 1, scale=cfg.softmax_scale,
                                                 enable_gqa=Hkv != H).transpose(1, 2)
        else:
            out = attend_cached(q, k_cache, v_cache, step, cfg.softmax_scale, self.settings)
        return out.reshape(B, S, H * d)
