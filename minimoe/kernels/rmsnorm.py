"""RMSNorm, optionally fused with the residual add before it, in one Triton kernel.

RMSNorm scales a row by the inverse of its root mean square and then by a learned weight:
y = w * x / sqrt(mean(x²) + eps). PyTorch runs that as ~8 elementwise kernels (float, pow, mean,
add, rsqrt, mul, cast, weight-mul), each a launch of a few microseconds that moves almost nothing
at decode batch sizes; a pre-norm block adds one more for `x + residual`. Here one program owns a
row: it loads it once (a whole row fits in registers up to N = 16384), adds the residual, reduces,
scales and stores, so the chain costs one launch and one read of each input.

The roundings follow the PyTorch path (`minimoe.layers.RMSNorm`) step by step, so half-precision
results agree with it to the last bit except where a different summation order moves mean(x²) by an
fp32 ulp:
  s   = (x + residual) rounded to x.dtype      (torch's bf16 + bf16 adds in fp32, rounds once)
  n   = (s * rsqrt(mean(s²) + eps)) in fp32, rounded to x.dtype
  out = w * n in fp32, rounded to the promoted dtype of (w, x) (torch's bf16 * bf16, same rule)
Reference: Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019).

Shapes: T rows (every leading dim flattened), N the normalised width (D for the block norms).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

MAX_N = 16384  # the widest row held in registers at once (16 warps x 32 fp32 values per thread)
ROW_WARPS = None  # warps a row (an in-step knob for scripts/step_probe.py; None: BLOCK / 256, 1..16)


@triton.jit
def add_rms_norm_row(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, row, stride_x, stride_r, N, eps,
                     BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """One row: store norm(x [+ residual]) to out_ptr's row (and x + residual to res_out_ptr's);
    return the normed row [BLOCK] (0 past N). Shared with norm_route.py, which keeps it for the router."""
    offs = tl.arange(0, BLOCK)
    ok = offs < N  # BLOCK is N padded to a power of two; the padding loads 0 and adds 0 to the sum
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # the new stream
        tl.store(res_out_ptr + row * N + offs, x, mask=ok)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / N + eps)
    normed = (xf * inv_rms).to(x_ptr.dtype.element_ty).to(tl.float32)  # rounded before the weight
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    out = (w * normed).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * N + offs, out, mask=ok)
    return out


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_r, N, eps,
    BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 for long prefills
    add_rms_norm_row(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, row, stride_x, stride_r, N, eps,
                     BLOCK, HAS_RESIDUAL)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, *, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(norm(x [+ residual]), x + residual or None) for x [..., N], weight [N].

    out has the dtype torch would give `weight * normed` (x.dtype when the weight matches, as in
    the engine); residual_out has x.dtype. Both are fresh contiguous tensors shaped like x.
    """
    N = x.shape[-1]
    assert weight.shape == (N,) and weight.is_contiguous(), (weight.shape, N)
    assert N <= MAX_N, f"row width {N} > {MAX_N}: a row no longer fits in registers"
    x2 = x.reshape(-1, N)  # a view for the contiguous activations the engine passes
    assert x2.stride(-1) == 1
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res_out = None
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype, (residual.shape, residual.dtype)
        residual = residual.reshape(-1, N)
        assert residual.stride(-1) == 1
        res_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    T = x2.shape[0]
    if T == 0:
        return out, res_out
    block = triton.next_power_of_2(N)
    _rms_norm_kernel[(T,)](
        x2, residual if residual is not None else x2, weight, out,
        res_out if res_out is not None else out,
        x2.stride(0), residual.stride(0) if residual is not None else 0, N, eps,
        BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=ROW_WARPS or min(max(block // 256, 1), 16),  # 2048 -> 8 warps: ~8 values per thread
        **launch_args(pdl),
    )
    return out, res_out
