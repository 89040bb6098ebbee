"""The q/k norm, rotary embedding and KV-cache write inside the decode attention kernel (`--attn-rope`).

A decode step's attention sublayer is, unfused, three launches before the output projection:

    qkv = x Wqkvᵀ (+ b)                           [B, 1, (H + 2·Hkv)·d]   linear.py
    q = norm_rope(qkv); cache[pos] = k, v          [B, 1, H, d]             kernels/rope.py: one small kernel
    out = attention(q, cache)                      [B, 1, H, d]             kernels/decode_attention.py

With this switch the middle launch goes: the split attention kernel reads the raw q columns of qkv, norms and
rotates them in each program, and the program whose chunk holds the new position writes that k / v row
(kernels/attn_rope.py). The same arithmetic, one launch a layer fewer at every batch size; results within a few
last bits of the unfused path (its RMS sums reduce in another order).

Where it applies (`fits`): `--attn-rope on`, a decode step of one new token a sequence on the Triton decode
attention (`--attn triton`), a non-MLA layer with a power-of-two head dim, a cache in x's dtype, and nothing hooked on
the q/k/v projection (a tensor-parallel plan's q/k norm, calibration). `--fuse-rope`'s GEMV epilogue (rope_fusion.py,
batch 1, layers without a q/k norm) is taken first where it applies. Everything else runs the unfused path.
`FORCE` ("on" / "off", None = the setting) overrides the setting at call time for in-step A/Bs (scripts/step_probe.py).
"""
from __future__ import annotations

import torch

from .instrument import note

try:
    from .kernels import decode_attention as _kernel
    from .kernels.attn_rope import RopeIn
except ImportError:       # no Triton: --attn triton (and with it this) is refused before a model is built
    _kernel = RopeIn = None

FORCE: str | None = None


def fits(attn, x: torch.Tensor, step, cache) -> bool:
    """Whether `run` applies to attention module `attn` (attention.Attention) for x [B, S, D] at `step`."""
    s = attn.settings
    mode = FORCE if FORCE is not None else (s.attn_rope if s is not None else "off")
    if mode != "on" or _kernel is None or s.attn != "triton" or step.fresh or x.shape[1] != 1:
        return False
    d = attn.cfg.head_dim
    if d < 16 or d & (d - 1):
        return False
    lin = attn.wqkv
    if lin._forward_hooks or lin._forward_pre_hooks:
        return False
    return cache.k[attn.layer].dtype == x.dtype and cache.v[attn.layer].dtype == x.dtype


def run(attn, x: torch.Tensor, step, cache, rot) -> torch.Tensor:
    """Attention output [B, 1, H, d] for x [B, 1, D], this step's k and v written into `cache` at `step.positions`."""
    cfg = attn.cfg
    H, d = attn.n_heads, cfg.head_dim
    qkv = attn.wqkv(x)                                                      # [B, 1, (H + 2Hkv) d]
    q_raw = qkv[:, 0, :H * d].unflatten(-1, (H, d))                         # [B, H, d] view: k, v follow in the row
    qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    rope = RopeIn(step.positions, rot.cos_table, rot.sin_table, cfg.qk_norm,
                  qn.weight if qn is not None else None, kn.weight if kn is not None else None,
                  cfg.rms_norm_eps, cfg.rope_interleave, cfg.clip_qkv)
    note("attention", "attn+rope")
    out = _kernel.decode_attention(q_raw, cache.k[attn.layer], cache.v[attn.layer], step.seq_lens,
                                   cfg.softmax_scale, rope=rope, pdl=attn.settings.pdl == "on")
    return out[:, None]
