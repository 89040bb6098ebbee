"""The attention's o projection split over K at decode batches, its partials summed by the residual add + RMSNorm.

At 16-64 tokens cuBLAS gives the o projection ([T, H·d] x [H·d, D]) 24 x 64 tiles: 3 x 32 = 96 CTAs for D = 2048 on
the H200's 132 SMs (the thirty-ninth session's profile), 6.5 µs for OLMoE's 8 MB (32% of its bytes' time). As
S = SPLITS slices of K in one batched GEMM (torch.bmm over views of x and Wo, no copies, float32 partials through
`out_dtype`) it runs S x the CTAs:
scripts/bench_splitk_cublas.py, forty-second session, call 2: OLMoE 6.48 -> 5.42 µs (S 4), Qwen3-30B-A3B (K 4096)
10.28 -> 7.51 µs (S 2). Summing the partials in a kernel of their own costs more than that (+26-31%); the norm that
follows reads the projection's output anyway, so kernels/rmsnorm_parts.py sums them there. The block's output and
residual stream differ from the unsplit path's only by the float32 summation order inside the projection.

In the graphed step (forty-second session, call 3; 2 slices against none, 3 rounds alternating): Qwen3-30B-A3B
-0.78% (bs 64) / -0.85% (bs 16), DeepSeek-V2-Lite -0.27%, Qwen1.5-MoE -0.30%, OLMoE -0.13% / -0.16% (bs 64 / 16; 4
slices +0.19% / -0.08%), Mixtral bs 64 +0.11% (D = 4096: cuBLAS's grid already fills the SMs). bench.py OLMoE bs 64
(call 4, one machine): 15,029.0 / 15,001.5 out tok/s with 2 slices against 14,996.1 / 14,985.2 without.

MODE (a step-probe knob): "auto" (the default) takes the split on a CUDA device at T_RANGE tokens for outputs of at
most AUTO_MAX_D columns; "on" wherever it fits (the tests' interpreter too); "off" never. Where it fits (`fits`):
--ops triton, a plain (unquantized) o weight in the activations' dtype without bias and K a multiple of SPLITS, a
residual stream of the activations' shape and dtype, a contiguous o weight, torch >= 2.8 on a GPU (bmm's `out_dtype`),
and nothing hooked on the attention, its o projection or the layer's norm (a tensor-parallel plan, calibration). "auto"
takes a 16-64-token prefill chunk too (the same sums; measured on decode steps), and runs cuBLAS for the o projection
whatever `--gemv` says (as --fold-router's kernel does at batch 1).
model.Block asks `fits`, then runs the attention's `heads`, `partials` and `norm` (the o projection and ffn_norm modules
are not called).
"""
from __future__ import annotations

import torch

from .instrument import note
from .linear import Linear

MODE = "auto"
MODE_CHOICES = ("auto", "on", "off")
SPLITS = 2
T_RANGE = (16, 64)
AUTO_MAX_D = 2048
# bmm's float32 output from bf16 / fp16 operands (`out_dtype`) is torch >= 2.8's; older torch keeps the unsplit path
_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")

try:
    from .kernels.rmsnorm_parts import rms_norm_parts as _norm_kernel
except ImportError:       # no Triton: --ops triton (and with it this) is refused before a model is built
    _norm_kernel = None


def _hooked(*modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def fits(block, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether layer `block` (model.Block) splits its o projection for attention input x [B, S, D] and the residual
    stream [B, S, D]. ValueError for a MODE outside MODE_CHOICES."""
    if MODE not in MODE_CHOICES:
        raise ValueError(f"o_splitk.MODE is one of {MODE_CHOICES}, not {MODE!r}")
    s = block.attn.settings
    if MODE == "off" or s is None or s.ops != "triton" or _norm_kernel is None or residual is None:
        return False
    wo = getattr(block.attn, "wo", None)
    T = x.numel() // x.shape[-1]
    if (type(wo) is not Linear or not isinstance(wo.weight, torch.Tensor) or wo.bias is not None     # quantized: no
            or wo.weight.dtype != x.dtype or wo.in_features % SPLITS or not wo.weight.is_contiguous()
            or not isinstance(block.ffn_norm.weight, torch.Tensor) or block.ffn_norm.weight.dtype != x.dtype
            or residual.dtype != x.dtype or residual.shape != x.shape):
        return False
    if x.is_cuda and not _BMM_OUT_DTYPE:
        return False
    if MODE == "auto" and not (x.is_cuda and T_RANGE[0] <= T <= T_RANGE[1] and wo.out_features <= AUTO_MAX_D):
        return False
    return not _hooked(block.attn, wo, block.ffn_norm)


def partials(wo: Linear, a: torch.Tensor) -> torch.Tensor:
    """a [..., K] (T rows) -> [SPLITS, T, D] float32 partial products over K's slices: Σ_s equals a Woᵀ. Needs a
    plain weight [D, K] in a's dtype and K a multiple of SPLITS (what `fits` checks; RuntimeError from the views
    otherwise)."""
    K, D = wo.in_features, wo.out_features
    x2 = a.reshape(-1, K)
    if x2.stride(-1) != 1 or x2.stride(0) != K:
        x2 = x2.contiguous()
    T, S = x2.shape[0], SPLITS
    note("attention", f"o over {S} K slices")
    xs = x2.view(T, S, K // S).permute(1, 0, 2)                            # [S, T, K/S]
    ws = wo.weight.view(D, S, K // S).permute(1, 2, 0)                     # [S, K/S, D]
    if x2.is_cuda and x2.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(xs, ws, out_dtype=torch.float32)
    return torch.bmm(xs.float(), ws.float())                               # CPU / float32: the same sums


def norm(block, parts: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ffn_norm(x + residual), x + residual) shaped like residual [..., D], x = Σ parts ([SPLITS, T, D] float32,
    contiguous) rounded to residual's dtype; the norm weight in that dtype (kernels/rmsnorm_parts.py asserts all)."""
    n = block.ffn_norm
    D = residual.shape[-1]
    h, r = _norm_kernel(parts, n.weight, n.eps, residual.reshape(-1, D).contiguous(), residual.dtype,
                        pdl=n.settings is not None and n.settings.pdl == "on")
    return h.view(residual.shape), r.view(residual.shape)
