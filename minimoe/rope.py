"""Rotary position embedding, with YaRN: the tables and the rotation (PyTorch; the oracle of kernels/rope.py).

Rotary embedding rotates pairs of query/key channels by an angle proportional to the position.
Two layouts exist: most families rotate channel j with channel j + d/2 ("rotate half", NeoX);
DeepSeek rotates neighbouring channels (2j, 2j+1) ("interleaved"). YaRN (DeepSeek-V2/V3) stretches
the low frequencies for long contexts and corrects the attention temperature; the part of that
correction that multiplies the softmax scale lives in `ModelConfig.softmax_scale`, the part that
scales cos/sin (`mscale / mscale_all_dim`, 1.0 for the published cards) lives here.
Reference: Su et al., "RoFormer" (2021); YaRN, arXiv 2309.00071; DeepSeek-V2 `modeling_deepseek.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig, yarn_mscale


def _yarn_inv_freq(dim: int, theta: float, rs: dict) -> torch.Tensor:
    """YaRN: interpolate low frequencies by `factor`, keep high ones, blend linearly in between."""
    factor, orig = rs["factor"], rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1.0 - ramp  # 1 where the original frequency is kept
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate


def rope_tables(cfg: ModelConfig, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [max_len, rope_dim/2] in float32 (YaRN's amplitude factor folded in)."""
    dim, rs = cfg.rope_dim, cfg.rope_scaling
    if rs:
        inv_freq = _yarn_inv_freq(dim, cfg.rope_theta, rs)
        amp = rs.get("attention_factor")
        if amp is None:
            m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
            amp = (yarn_mscale(rs["factor"], m) / yarn_mscale(rs["factor"], m_all)) if m and m_all \
                else yarn_mscale(rs["factor"])
    else:
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        amp = 1.0
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [S, dim/2]
    return angles.cos() * amp, angles.sin() * amp


# Gather this step's cos / sin rows once a forward (one launch: `Rotary.rows`), so that the q/k norm + rope kernel
# (kernels/rope.py, `rows`) loads them at once instead of after the position it would index the tables with: one L2
# round trip off each layer's rope kernel, for one gather a step (model.py skips it where no layer reads them). In the
# graphed step (docs/results/2026-12-04-s33, call 4): Qwen3-30B-A3B bs 1 -0.34% (the baseline repeated +0.01%), OLMoE
# bs 1 -0.20% (repeated +0.22%: a tie), bs 64 -0.07% (-0.02%); bench.py Qwen3-30B-A3B bs 1 395.2 out tok/s against
# 393.6. On.
STEP_ROWS = True


@dataclass
class Rotary:
    """The rope tables [P, rope_dim/2] (float32). The kernels that rotate read the rows of this step's positions
    themselves (step.positions): gathering them here cost two launches a step that nothing read (thirty-first
    session). With STEP_ROWS, `rows` [B·S, rope_dim] holds this step's (cos | sin) rows in token order, gathered in
    one launch for kernels/rope.py's `rows` mode (attention.py takes them where it runs that kernel)."""
    cos_table: torch.Tensor
    sin_table: torch.Tensor
    rows: torch.Tensor | None = None

    def step_rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) [B·S, rope_dim/2] views of `rows`, or None without them."""
        if self.rows is None:
            return None
        half = self.rows.shape[-1] // 2
        return self.rows[:, :half], self.rows[:, half:]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x [B, S, H, d] by cos/sin [B, S, d/2] (float32 maths, cast back)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    if interleave:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    else:
        x1, x2 = xf.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
