"""The q/k norm, rotary embedding and KV-cache write inside the decode-attention kernel (`--fuse-rope-attn`).

An attention sublayer at decode without `--fuse-rope`'s GEMV epilogue (OLMoE's and Qwen3's q/k norms need whole
heads or all of them, which a GEMV program does not hold) runs

    qkv = the q/k/v projection                                       [B, 1, (H + 2·Hkv)·d]
    q   = kernels/rope.py: norm, rope; k / v into the cache           one small launch
    out = kernels/decode_attention.py: split kernel (+ merge)         reads q and the cache

kernels/decode_rope_attention.py does the middle launch's work at the start of every split program: each one norms
and rotates its own kv head's query heads from the raw row, takes the new position's K / V row from registers, and
the split holding that position writes it to the cache. One launch fewer a layer, the same cache bytes.

Where it applies (`fits`): `--fuse-rope-attn on`, or `auto` with AUTO set (the measured default); `--attn triton`;
a one-token decode step (not a prefill, not a chunk of several tokens); and the kernel's shapes (`usable`: a
power-of-two head dim, caches in the activations' dtype). Everything else runs the two launches, as before.
"""
from __future__ import annotations

import torch

from .instrument import note

try:
    from .kernels import decode_rope_attention as _kernel
except ImportError:       # no Triton: --attn triton (and with it this) is refused before a model is built
    _kernel = None

# What `--fuse-rope-attn auto` (the default) does on a GPU with --ops triton and --attn triton; read at call time, so
# scripts/step_probe.py can A/B it in the graphed step. Measured (docs/results/2026-12-04-s33, call 3; the baseline
# repeated within 0.04%): Qwen3-30B-A3B bs 1 +0.11% (4 warps) / -0.01% (8), bs 16 -0.27%, bs 64 +0.44%; OLMoE bs 1
# +0.56% / +1.01%, bs 16 +1.02%, bs 64 +7.65%; bench.py Qwen3-30B-A3B bs 1 390.2 / 391.5 out tok/s against 392.8.
# The launch it removes was worth what the fused program now waits for: the position -> cos / sin -> norm -> rope
# chain sits before each split's first dot, in every one of the B x Hkv x splits programs. Off.
AUTO = False


def fits(attn, qkv: torch.Tensor, step, cache) -> bool:
    """Whether `run` applies to attention module `attn` (attention.Attention) for the projection qkv [B, S, ...] of a
    step `step` (kv_cache.Step) over `cache` (kv_cache.KVCache)."""
    s = attn.settings
    if s is None or _kernel is None or getattr(s, "attn", None) != "triton" or step.fresh:
        return False
    mode = getattr(s, "fuse_rope_attn", "off")
    if mode == "off" or (mode == "auto" and not AUTO):
        return False
    B, S, _ = qkv.shape
    k_cache = cache.k[attn.layer]
    return (qkv.stride(-1) == 1 and cache.v[attn.layer].dtype == k_cache.dtype
            and _kernel.usable(B, S, attn.n_heads, attn.n_kv_heads, attn.cfg.head_dim, qkv.dtype, k_cache.dtype))


def run(attn, qkv: torch.Tensor, step, cache, rot) -> torch.Tensor:
    """The heads' output [B, 1, H·d] for qkv [B, 1, (H + 2·Hkv)·d]; this step's k and v written into `cache`."""
    cfg = attn.cfg
    B = qkv.shape[0]
    qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    note("attention", "rope+attn")
    out = _kernel.decode_rope_attention(
        qkv, step.positions, step.seq_lens, rot.cos_table, rot.sin_table, cache.k[attn.layer], cache.v[attn.layer],
        attn.n_heads, attn.n_kv_heads, cfg.head_dim, cfg.softmax_scale, qk_norm=cfg.qk_norm,
        q_norm_w=qn.weight if qn is not None else None, k_norm_w=kn.weight if kn is not None else None,
        eps=cfg.rms_norm_eps, interleave=cfg.rope_interleave, clip_qkv=cfg.clip_qkv,
        pdl=attn.settings.pdl == "on")                                               # [B, H, d]
    return out.reshape(B, 1, -1)
