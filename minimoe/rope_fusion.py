"""Rotary embedding and the KV-cache write inside the q/k/v projection's GEMV at batch 1 (`--fuse-rope`).

An attention sublayer at decode starts with

    qkv = x Wqkvᵀ (+ b)                       [T, (H + 2·Hkv)·d]   linear.py: the stream GEMV at one token
    q, k, v = split(qkv); q, k = rope(q, k)   kernels/rope.py: one small kernel (q returned, k / v into the cache)

and the second launch only rotates a few kilobytes. kernels/qkv_gemv_rope.py gives each GEMV program whole channel
pairs of one head, so the rotation and the cache write are its epilogue: one launch instead of two, the same bytes,
the same bits (the unfused path's roundings and, at head dims of 16+, dense_gemv's tile; tests/test_qkv_gemv_rope.py).

Where it applies (`fits`): `--fuse-rope on` (settings.py resolves `auto` to on with `--ops triton` and a `--gemv` that
runs the stream GEMV at one token, auto or stream, on a GPU; `on` asked for needs `--ops triton` and then replaces the
q/k/v GEMV at one token whatever `--gemv` says), a one-token step (MAX_T), an attention layer with no q/k norm and
no clip (Mixtral, Qwen1.5/2-MoE; OLMoE's and Qwen3's q/k norms need all heads or whole heads), a plain weight in x's
dtype (not quantized, contiguous), nothing hooked on the q/k/v projection (a tensor-parallel plan's q/k norm,
calibration), and a head dim with channel pairs a tile can own. Everything else runs the two launches, as before.
"""
from __future__ import annotations

import torch

from .instrument import note

try:
    from .kernels import qkv_gemv_rope as _kernel
except ImportError:       # no Triton: --ops triton (and with it this) is refused before a model is built
    _kernel = None

CONFIG: dict | None = None   # the fused GEMV's tile over dense_gemv.dense_config's (in-step A/B's)
MAX_T = 1      # tokens a step: the stream GEMV's batch-1 regime (linear.auto_gemv sends 2 tokens to cuBLAS at these widths)


def fits(attn, x: torch.Tensor, cache) -> bool:
    """Whether `run` applies to attention module `attn` (attention.Attention) for x [B, S, D] (one token) and `cache`
    (kv_cache.KVCache, in x's dtype)."""
    s = attn.settings
    if s is None or s.fuse_rope != "on" or _kernel is None:
        return False
    B, S, D = x.shape
    if not 1 <= B * S <= MAX_T or attn.cfg.qk_norm is not None or attn.cfg.clip_qkv is not None:
        return False
    lin = attn.wqkv
    w, b = lin.weight, lin.bias
    if type(w) not in (torch.Tensor, torch.nn.Parameter) or w.dtype != x.dtype or not w.is_contiguous():
        return False
    if b is not None and (b.dtype != x.dtype or not b.is_contiguous()):
        return False
    if lin._forward_hooks or lin._forward_pre_hooks or x.stride(-1) != 1:
        return False
    if cache.k[attn.layer].dtype != x.dtype or cache.v[attn.layer].dtype != x.dtype:
        return False
    return _kernel.pair_block(attn.cfg.head_dim, 2) > 0


def run(attn, x: torch.Tensor, step, cache, rot, norm=None):
    """q [B, S, H, d] for x [B, S, D], with this step's k and v written into `cache` at `step.positions`. norm
    (residual or None, g, eps): x is before the layer's residual add + RMSNorm, run in the same kernel
    (norm_fusion.py's WITH_ROPE); returns (q, x + residual) then."""
    cfg = attn.cfg
    if norm is None:
        note("attention", "qkv+rope")
    return _kernel.qkv_gemv_rope(
        x, attn.wqkv.weight, step.positions, rot.cos_table, rot.sin_table, cache.k[attn.layer], cache.v[attn.layer],
        attn.n_heads, attn.n_kv_heads, cfg.head_dim, bias=attn.wqkv.bias, interleave=cfg.rope_interleave,
        config=CONFIG, pdl=attn.settings.pdl == "on", norm=norm)
