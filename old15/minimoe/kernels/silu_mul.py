"""SwiGLU's activation, silu(gate) * up, in one kernel: half the launches of the PyTorch pair.

A dense SwiGLU block (DeepSeek's shared experts and first layers, Qwen2-MoE's shared expert, every
layer of a dense draft model) computes h = silu(gate) * up between its two GEMMs, gate and up being
the two halves of one [T, 2I] projection. PyTorch runs it as two elementwise kernels (silu, then the
multiply) that at decode move a few kilobytes each and cost a launch apiece. Here one program takes
one row and a BLOCK of its I columns:

    h[t, j] = round(round(silu(gate[t, j])) * up[t, j])       silu in fp32, as torch's own kernel

Roundings are PyTorch's (minimoe/ops.py `silu_mul_torch`): F.silu rounds its fp32 result to the
activations' dtype, the multiply rounds again. Reference: Shazeer, "GLU Variants Improve
Transformer" (2020).

Shapes: T rows (tokens), I the FFN width (h is [T, I]; the input [T, 2I] holds gate then up).
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(x_ptr, o_ptr, I, stride_x, stride_o, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < I
    g = tl.load(x_ptr + t * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + t * stride_x + I + cols, mask=ok, other=0.0)
    s = (g / (1.0 + tl.exp(-g))).to(u.dtype).to(tl.float32)   # F.silu, rounded to the input dtype
    tl.store(o_ptr + t * stride_o + cols, (s * u.to(tl.float32)).to(o_ptr.dtype.element_ty), mask=ok)


def silu_mul(x: torch.Tensor, *, pdl: bool = False) -> torch.Tensor:
    """x [..., 2I] (gate columns, then up) -> silu(gate) * up [..., I] in x.dtype.
    Raises AssertionError for an odd last dimension or a non-unit last stride."""
    two_i = x.shape[-1]
    assert two_i % 2 == 0 and x.stride(-1) == 1, (x.shape, x.stride())
    I = two_i // 2
    x2 = x.reshape(-1, two_i)
    out = torch.empty(x2.shape[0], I, dtype=x.dtype, device=x.device)
    if x2.shape[0] and I:
        _silu_mul_kernel[(x2.shape[0], triton.cdiv(I, BLOCK))](
            x2, out, I, x2.stride(0), out.stride(0), BLOCK=BLOCK, num_warps=4, **launch_args(pdl))
    return out.view(*x.shape[:-1], I)
