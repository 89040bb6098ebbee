"""The small layers every family shares: RMSNorm, rotary embedding (with YaRN) and the SwiGLU MLP.

RMSNorm normalises in float32 and casts back before the weight, as Llama-style models do, so bf16
runs match the reference bit for bit in the normalisation itself.

Rotary embedding rotates pairs of query/key channels by an angle proportional to the position.
Two layouts exist: most families rotate channel j with channel j + d/2 ("rotate half", NeoX);
DeepSeek rotates neighbouring channels (2j, 2j+1) ("interleaved"). YaRN (DeepSeek-V2/V3) stretches
the low frequencies for long contexts and corrects the attention temperature; the part of that
correction that multiplies the softmax scale lives in `ModelConfig.softmax_scale`, the part that
scales cos/sin (`mscale / mscale_all_dim`, 1.0 for the published cards) lives here.
Reference: YaRN, arXiv 2309.00071; DeepSeek-V2 `modeling_deepseek.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, yarn_mscale


class RMSNorm(nn.Module):
    """w * x / rms(x). `fused` swaps PyTorch's ~8 elementwise kernels for one Triton kernel."""

    def __init__(self, dim: int, eps: float, settings=None):
        super().__init__()
        self.eps, self.settings = eps, settings
        self.weight = nn.Parameter(torch.ones(dim))

    def _fused(self) -> bool:
        return self.settings is not None and self.settings.fused_ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused():
            from .kernels.rmsnorm import rms_norm
            return rms_norm(x.contiguous(), self.weight, self.eps)[0]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor | None):
        """(norm(x + residual), x + residual): the residual add fused into the norm."""
        if residual is None:
            return self.forward(x), x
        if self._fused():
            from .kernels.rmsnorm import rms_norm
            return rms_norm(x, self.weight, self.eps, residual)
        s = x + residual
        return self.forward(s), s


def folds_norms(settings, tokens: int) -> bool:
    """Decode sizes with `settings.gemv`: projections run as Triton GEMVs (kernels/gemv.py) and
    each RMSNorm (+ residual add) is folded into the first kernel that reads its output."""
    if settings is None or not settings.gemv:
        return False
    from .kernels.gemv import MAX_T
    return 0 < tokens <= MAX_T


def project(layer: nn.Linear, x: torch.Tensor, settings) -> torch.Tensor:
    """layer(x) for x [..., in]; a Triton GEMV instead of cuBLAS at decode sizes with settings.gemv."""
    lead = x.shape[:-1]
    if not folds_norms(settings, lead.numel()):
        return layer(x)
    from .kernels.gemv import gemv
    y, _ = gemv(x.reshape(-1, x.shape[-1]).contiguous(), layer.weight, layer.bias)
    return y.view(*lead, -1)


def project_normed(layer: nn.Linear, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None):
    """(layer(norm(x + residual)), x + residual) in one Triton GEMV: the norm is recomputed by
    every program from the (tiny, L2-resident) rows instead of being written and read back."""
    from .kernels.gemv import gemv
    lead, D = x.shape[:-1], x.shape[-1]
    y, res = gemv(x.reshape(-1, D), layer.weight, layer.bias, norm_weight=norm.weight, eps=norm.eps,
                  residual=None if residual is None else residual.reshape(-1, D))
    return y.view(*lead, -1), (x if res is None else res.view(x.shape))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up stored as one [2I, D] matrix: one GEMM, not two."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


# ---- rotary embedding ----------------------------------------------------------------------------


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


@dataclass
class Rotary:
    """The rope tables [P, rope_dim/2] and their rows for this step's positions [B, S, rope_dim/2]."""
    cos_table: torch.Tensor
    sin_table: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


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
