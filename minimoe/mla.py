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
Triton split-K kernel included) run it unchanged. The two absorbed projections are batched GEMMs over heads
(2 MB each for DeepSeek-V2-Lite); at batch 1-4 the Triton op set runs them inside neighbouring launches instead:
q's absorption as extra programs of the prologue kernel (kernels/mla_rope.py `absorb`), W_uv inside the split
attention's merge (kernels/mla_merge_uv.py): two cuBLAS launches in stream order fewer a layer, -5.8% a graphed
bs-1 decode step (docs/results/2026-12-03-s26).
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
from .linear import Linear, join_pair_, linear_pair
from .ops import mla_expand_k_torch, ops_for
from .rope import Rotary, apply_rope

try:
    from .kernels.decode_attention import decode_attention
except ImportError:       # no Triton: --attn triton is refused before a model is built
    decode_attention = None


# Prefill's per-head key in one pass (ops.mla_expand_k: kernels/mla_expand.py with the Triton op set). False:
# torch.cat over an expand, as before; kept for scripts/step_probe.py's A/B (docs/results/2026-12-02-s25, call 1).
PREFILL_ONE_PASS = True
# Absorbed decode with the Triton attention: W_uv applied inside the split attention's merge
# (kernels/mla_merge_uv.py) for one new token and at most this many sequences (0: a torch.bmm after attention).
# DeepSeek-V2-Lite's decode step (docs/results/2026-12-03-s26, calls 2-3): -0.65 to -0.88% at bs 1, -1.6 to -2.0% at
# bs 4, but +1.1% at bs 16 and +5.8% at bs 64 (each head's W_uv re-read by every sequence's programs).
MERGE_UV_MAX_B = 4


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

    def join_projections_(self) -> bool:
        """After loading: q's (or its LoRA-down's) and the latent's weights into one buffer (linear.join_pair_), so
        that from linear.PAIR_JOIN_MIN_T tokens both projections of x are one GEMM. False where they cannot be."""
        return join_pair_(self.wq_a if self.cfg.q_lora_rank else self.wq, self.wkv_a)

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
        """x [B, S, D] -> [B, S, D]; writes this step's latents into the cache."""
        return self.wo(self.heads(x, step, cache, rot))

    def heads(self, x, step: Step, cache: KVCache, rot: Rotary):
        """Everything but the o projection: x [B, S, D] -> the heads' output [B, S, H·v] (router_fusion.py)."""
        cfg = self.cfg
        B, S, _ = x.shape
        H, nope, rope, r = self.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        # the two projections of x, in one launch at batch 1 (linear_pair): q or its LoRA-down, and the latent
        q, kv = linear_pair(x, self.wq_a if cfg.q_lora_rank else self.wq, self.wkv_a)   # kv [B, S, r+rope]
        q = self.wq_b(self.q_norm(q)) if cfg.q_lora_rank else q
        q = q.view(B, S, H, nope + rope)                                     # [B, S, H, nope+rope]
        latent = cache.latent[self.layer]                                     # [B, S_max, r+rope]
        # prefill rotates q_pe in place (q = [q_nope, q_pe] for SDPA); decode writes it beside q_lat
        q_att = q if step.fresh else q.new_empty(B, S, H, r + rope)
        w_uk, w_uv = (None, None) if step.fresh else self._split_wkv_b()            # [H, nope|v, r], one dequantize
        # decode: the same op also absorbs q_nope into the latent (q_lat = q_nope W_uk into q_att's first r columns)
        ops_for(self.settings).mla_rope_cache(
            q, kv, step.positions, rot.cos_table, rot.sin_table, latent, self.kv_norm.weight,
            cfg.rms_norm_eps, nope=nope, interleave=cfg.rope_interleave,
            q_pe_out=q[..., nope:] if step.fresh else q_att[..., r:],
            absorb=None if step.fresh else (w_uk, q_att[..., :r]))
        if step.fresh:   # this step's latents are the first S rows of the cache
            out = self._expanded(q, latent[:, :S, :r], latent[:, :S, r:])
        else:
            out = self._absorbed(q, q_att, step, latent, w_uv)
        return out.reshape(B, S, H * cfg.v_head_dim)

    def _expanded(self, q, c, k_pe):
        """Prefill within the new tokens: per-head k, v from the latent, causal SDPA.
        q [B, S, H, nope+rope] (rotated); c [B, S, r] (normed latent), k_pe [B, S, rope] (rotated): views of the
        cache's rows (F.linear reads the strided c in place, through a batched GEMM) -> [B, S, H, v]."""
        cfg = self.cfg
        B, S, H, _ = q.shape
        kv = self.wkv_b(c).view(B, S, H, cfg.qk_nope_head_dim + cfg.v_head_dim)
        v = kv[..., cfg.qk_nope_head_dim:]
        expand = ops_for(self.settings).mla_expand_k if PREFILL_ONE_PASS else mla_expand_k_torch
        k = expand(kv, k_pe, cfg.qk_nope_head_dim)                                   # [B, S, H, nope+rope]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=S > 1, scale=cfg.softmax_scale)
        return out.transpose(1, 2)                                                    # [B, S, H, v]

    def _absorbed(self, q, q_att, step: Step, latent, w_uv):
        """Attention in latent space: one shared key/value head of width r + rope.
        q [B, S, H, nope+rope]; q_att [B, S, H, r+rope] holding the rotated q_pe in its last
        columns and q_lat = q_nope W_uk in its first r (both written by mla_rope_cache); w_uv [H, v, r]; the output
        un-absorbs with W_uv into [B, S, H, v]: one batched GEMM over heads, or, with the Triton attention
        for one new token and at most MERGE_UV_MAX_B sequences, inside the split attention's merge."""
        cfg = self.cfg
        B, S, H, _ = q.shape
        r, BS = cfg.kv_lora_rank, B * S
        k_cache = latent[:, :, None, :]                                               # one kv head
        v_cache = latent[:, :, None, :r]
        settings = self.settings
        if S == 1 and B <= MERGE_UV_MAX_B and settings is not None and settings.attn == "triton":
            out = decode_attention(q_att[:, 0], k_cache, v_cache, step.seq_lens, cfg.softmax_scale,
                                   w_uv=w_uv, pdl=settings.pdl == "on")                # [B, H, v]
            return out[:, None]
        out_lat = attend_cached(q_att, k_cache, v_cache, step, cfg.softmax_scale, settings)
        out = q.new_empty(B, S, H, cfg.v_head_dim)
        torch.bmm(out_lat.reshape(BS, H, r).transpose(0, 1), w_uv.transpose(1, 2),
                  out=out.view(BS, H, -1).transpose(0, 1))                            # [H, BS, v]
        return out
