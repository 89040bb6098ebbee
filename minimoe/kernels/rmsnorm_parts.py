"""The residual add + RMSNorm after a projection split over K: the projection's partial sums are added here.

At decode batches of 16-64 tokens cuBLAS runs the attention's o projection ([T, H·d] x [H·d, D]) in 24 x 64 tiles:
96 CTAs for OLMoE's D = 2048, two thirds of the H200's 132 SMs, at 32% of its weight's bytes' time. Cut along K into S
slices as one batched GEMM (o_splitk.py), it runs S x the CTAs, but leaves S float32 partials [S, T, D] to sum. Summed
by a kernel of their own they cost more than the split saves (scripts/bench_splitk_cublas.py: +26-31% for OLMoE's o);
the norm that follows reads the projection's output anyway, so it sums them on the way in:

    x   = Σ_s parts[s]  in float32, in slice order, rounded to the activations' dtype   (the projection's output)
    s   = (x + residual) rounded                                                          (then as kernels/rmsnorm.py)
    out = w * (s * rsqrt(mean(s²) + eps)) with rmsnorm.py's roundings

x differs from an unsplit GEMM's only in its float32 summation order (a bf16 ulp, rarely). One program a row.
Shapes: S slices, T rows, N the normalised width (D).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release
from .rmsnorm import MAX_N


@triton.jit
def _rms_norm_parts_kernel(parts_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, stride_s, N, eps,
                           S: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    acc = tl.load(parts_ptr + row * N + offs, mask=ok, other=0.0)
    for s in tl.static_range(1, S):
        acc += tl.load(parts_ptr + s * stride_s.to(tl.int64) + row * N + offs, mask=ok, other=0.0)
    x = acc.to(out_ptr.dtype.element_ty)                                       # the projection's output
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * N + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + row * N + offs, x, mask=ok)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / N + eps)
    normed = (xf * inv_rms).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm_parts(parts: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None,
                   out_dtype: torch.dtype, *, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """parts [S, T, N] float32 (contiguous) -> (norm(x + residual), x + residual), both [T, N] out_dtype, with
    x = Σ_s parts[s] rounded to out_dtype (residual None: (norm(x), x)). weight [N] in out_dtype. AssertionError on
    other shapes or dtypes."""
    assert parts.dim() == 3, parts.shape
    S, T, N = parts.shape
    assert parts.dtype == torch.float32 and parts.is_contiguous() and S >= 1, (parts.dtype, parts.shape)
    assert weight.shape == (N,) and weight.dtype == out_dtype and weight.is_contiguous(), (weight.shape, weight.dtype)
    assert N <= MAX_N, f"row width {N} > {MAX_N}"
    if residual is not None:
        assert residual.shape == (T, N) and residual.dtype == out_dtype and residual.is_contiguous()
    out = torch.empty(T, N, device=parts.device, dtype=out_dtype)
    res_out = torch.empty(T, N, device=parts.device, dtype=out_dtype)
    if T == 0:
        return out, res_out
    block = triton.next_power_of_2(N)
    _rms_norm_parts_kernel[(T,)](parts, residual if residual is not None else out, weight, out, res_out, T * N, N,
                                 eps, S=S, BLOCK=block, HAS_RESIDUAL=residual is not None,
                                 num_warps=min(max(block // 256, 1), 16), **launch_args(pdl))
    return out, res_out
