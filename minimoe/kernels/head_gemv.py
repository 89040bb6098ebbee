"""A matrix-vector product per (token, head) against a per-head weight: MLA's absorbed projections at decode.

Shape legend: T tokens, H heads, K the reduction, N outputs per head.

    out[t, h, n] = Σ_k x[t, h, k] · W[h, n, k]

Absorbed multi-head latent attention (mla.py) runs two of these a layer: q_lat = W_ukᵀ q_nope (K = 128
nope dims -> N = 512 latent dims; W_uk's rows are the reduction, so W's contiguous axis is n) and
out = W_uv o_lat (K = 512 -> N = 128; W's contiguous axis is k). At batch 1 each reads 2 MB in a cuBLAS
batched GEMM of ~3.2 µs plus ~0.5-0.9 µs idle before it (a library kernel cannot be launched early, PDL).
Here one program owns a [BLOCK_N, BLOCK_K] tile of one head's W for one token: 8 KB tiles along whichever
axis of W is contiguous (the strides say which; Triton specialises a stride of 1, so the loads vectorise
either way), an fp32 sum, one rounding to out's dtype, as cuBLAS does. x and out need a unit last stride;
every other stride is free, so q_nope is read in place from q and q_lat is written in place into the
attention's query buffer. `head_gemv` falls back to torch.bmm above MAX_T tokens, where each token
re-reading W would lose to a GEMM.
Reference: DeepSeek-V2, arXiv 2405.04434 §2.1 (the absorbed form); vLLM / SGLang MLA decode (a batched
GEMM per absorbed projection).
"""
import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

MAX_T = 2
TILE = 4096          # weights per program tile (8 KB in bf16), as the dense decode GEMV's


@triton.jit
def _head_gemv_kernel(x_ptr, w_ptr, out_ptr, H, N, K, stride_xt, stride_xh, stride_wh, stride_wn, stride_wk,
                      stride_ot, stride_oh, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    th = pid // n_blocks
    t, h = th // H, th % H
    offs_n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    x_row = x_ptr + t.to(tl.int64) * stride_xt + h * stride_xh
    w_rows = w_ptr + h.to(tl.int64) * stride_wh + offs_n[:, None] * stride_wn               # [BN, 1]
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = k0 + offs_k < K
        xk = tl.load(x_row + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + (k0 + offs_k)[None, :] * stride_wk, mask=n_mask[:, None] & k_mask[None, :],
                    other=0.0)
        acc += tl.sum(w.to(tl.float32) * xk[None, :], axis=1)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + h * stride_oh + offs_n, acc.to(out_ptr.dtype.element_ty),
             mask=n_mask)


def tiles(N: int, K: int, k_contiguous: bool) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): TILE weights a program, the long side along W's contiguous axis."""
    if k_contiguous:
        block_k = min(triton.next_power_of_2(K), 512)
        return max(1, TILE // block_k), block_k
    block_n = min(triton.next_power_of_2(N), 32)
    return block_n, min(triton.next_power_of_2(K), max(1, TILE // block_n))


def head_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """out [T, H, N] = x [T, H, K] · W [H, N, K]ᵀ per head, written in place and returned. x and out: unit
    last stride (other strides free); W: any strides; one dtype. More than MAX_T tokens: torch.bmm.
    Raises ValueError for shapes that do not match."""
    T, H, K = x.shape
    N = w.shape[1]
    if tuple(w.shape) != (H, N, K) or tuple(out.shape) != (T, H, N) or not x.dtype == w.dtype == out.dtype:
        raise ValueError(f"head_gemv: x {tuple(x.shape)}, W {tuple(w.shape)}, out {tuple(out.shape)} do not match "
                         "[T, H, K], [H, N, K], [T, H, N] in one dtype")
    if T > MAX_T or x.stride(-1) != 1 or out.stride(-1) != 1:      # ops.head_gemv_torch's batched GEMM
        torch.bmm(x.transpose(0, 1), w.transpose(1, 2), out=out.transpose(0, 1))
        return out
    if T == 0:
        return out
    block_n, block_k = tiles(N, K, w.stride(2) == 1)
    _head_gemv_kernel[(T * H * triton.cdiv(N, block_n),)](
        x, w, out, H, N, K, x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2),
        out.stride(0), out.stride(1), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, **launch_args(pdl))
    return out
