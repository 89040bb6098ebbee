"""Absorbed MLA at decode: merge the split attention's partials and un-absorb the values, one kernel.

Shape legend: B sequences (one new token each), H heads, NS splits of the cache, L the latent width (the
attention's value width, 512 for DeepSeek), N the per-head value width after un-absorption (128), NC chunks of N.

Absorbed multi-head latent attention (mla.py) attends in latent space, so its attention output is o_lat [B, H, L],
and the layer's value is out[b, h] = W_uv[h] @ o_lat[b, h] with W_uv [H, N, L] (2 MB for DeepSeek-V2-Lite). The
split-K attention (decode_attention.py) leaves NS partials a head, merged by a small kernel; then a batched GEMM
(cuBLAS, launched in stream order: a library kernel cannot start early with PDL) multiplies by W_uv. Here program
(h, c) of sequence b does both for N-chunk c:

    lse_max = max_s lse[b, h, s];  w_s = 2^(lse[b, h, s] - lse_max)
    o_lat   = (sum_s w_s * part[b, h, s, :]) / sum_s w_s            the merge kernel's arithmetic, in its order
    o_lat   = o_lat rounded to out's dtype                            what the batched GEMM was given
    out[b, h, c*BLOCK_N : (c+1)*BLOCK_N] = W_uv[h, chunk, :] @ o_lat  fp32 sum, one rounding

The merge is repeated by the NC programs of a head (each re-reads NS x L fp32 partials from the L2) so that
W_uv's 2 MB are spread over H x NC programs instead of H. Only the summation order of the last product differs
from cuBLAS's, so out may differ from merge + torch.bmm by an ulp of out's dtype.
Reference: DeepSeek-V2, arXiv 2405.04434 §2.1 (absorbing W_uv after attention); FlashMLA and SGLang keep the
un-absorption a separate GEMM; this fuses it into the flash-decoding merge (Dao et al., 2023).
"""
import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release

# Un-absorbed columns a program (DeepSeek: 128 / 8 = 16 programs a head, 8 KB of W_uv each), and when a program
# loads its W_uv tile: 0 after the merge, 1 right after the PDL wait, 2 before it (W_uv is a weight no kernel writes,
# but scripts/pdl_order_check.py would then flag the load). DeepSeek-V2-Lite's graphed decode step against the merge
# kernel + bmm (docs/results/2026-12-03-s26, calls 2-3): 16 columns loaded after the merge +0.70% (bs 1) / -1.06%
# (bs 4); right after the wait -0.65% / -1.56%, before it -0.68% / -1.99%, 8 columns (before) -0.88% / -1.99%; 32
# columns +2.4% against 16. Call 4: this setting (8 columns, after the wait) against 8 columns before the wait:
# -0.19% (bs 1) / +0.49% (bs 4).
BLOCK_N = 8
W_EARLY = 1


@triton.jit
def _merge_uv_kernel(part_ptr, lse_ptr, seq_lens_ptr, w_ptr, out_ptr,
                     stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_wh, stride_wn,
                     stride_ob, stride_oh, S_max, CHUNK, N,
                     L: tl.constexpr, NC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
                     BLOCK_N: tl.constexpr, PDL: tl.constexpr, W_EARLY: tl.constexpr = 0):
    c = tl.program_id(0) % NC
    h = tl.program_id(0) // NC
    b = tl.program_id(1).to(tl.int64)
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    offs_n = c * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_ptrs = w_ptr + h * stride_wh + offs_n[:, None] * stride_wn + offs_l[None, :]
    w_mask = n_ok[:, None] & l_ok[None, :]
    if W_EARLY == 2:      # W_uv does not depend on the predecessor: in flight while the attention drains
        wt = tl.load(w_ptrs, mask=w_mask, other=0.0)
        wait_then_release(PDL)
    else:
        wait_then_release(PDL)
        if W_EARLY == 1:  # before the merge's loads, not after them
            wt = tl.load(w_ptrs, mask=w_mask, other=0.0)
    seq_len = tl.minimum(tl.load(seq_lens_ptr + b), S_max)
    n_valid = tl.cdiv(seq_len, CHUNK)                      # splits past this exited early and wrote nothing
    offs_s = tl.arange(0, BLOCK_S)
    lse_row = lse_ptr + b * stride_lb + h * stride_lh
    lse = tl.load(lse_row + offs_s, mask=offs_s < n_valid, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    denom = tl.sum(tl.exp2(lse - lse_max), axis=0)
    part_row = part_ptr + b * stride_pb + h * stride_ph + offs_l
    acc = tl.zeros([BLOCK_L], tl.float32)
    for s in range(0, n_valid):
        w = tl.exp2(tl.load(lse_row + s) - lse_max)
        acc += w * tl.load(part_row + s * stride_ps, mask=l_ok, other=0.0)
    o_lat = (acc / denom).to(out_ptr.dtype.element_ty).to(tl.float32)      # [BLOCK_L]
    if W_EARLY == 0:
        wt = tl.load(w_ptrs, mask=w_mask, other=0.0)                         # [BLOCK_N, BLOCK_L]
    out = tl.sum(wt.to(tl.float32) * o_lat[None, :], axis=1)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_n, out.to(out_ptr.dtype.element_ty), mask=n_ok)


def merge_uv(part: torch.Tensor, lse: torch.Tensor, seq_lens: torch.Tensor, w_uv: torch.Tensor, s_max: int,
             chunk: int, num_splits: int, *, out_dtype: torch.dtype | None = None, pdl: bool = False) -> torch.Tensor:
    """part [B, H, NS, L] fp32 and lse [B, H, NS] fp32 (unit last strides, log2 domain: decode_attention's split
    partials, split s covering positions [s*chunk, (s+1)*chunk) of min(seq_lens[b], s_max)), seq_lens [B] int32,
    W_uv [H, N, L] (unit last stride) -> out [B, H, N] in out_dtype (default W_uv's dtype) = W_uv[h] @ merged[b, h]
    (merged rounded to out_dtype). Raises ValueError for shapes or strides that do not match."""
    B, H, NS, L = part.shape
    N = w_uv.shape[1]
    if (tuple(lse.shape) != (B, H, NS) or w_uv.dim() != 3 or w_uv.shape[0] != H or w_uv.shape[2] != L
            or w_uv.stride(2) != 1 or part.stride(3) != 1 or lse.stride(2) != 1 or NS != num_splits):
        raise ValueError(f"merge_uv: part {tuple(part.shape)}, lse {tuple(lse.shape)}, W_uv {tuple(w_uv.shape)} "
                         "do not match [B, H, NS, L], [B, H, NS], [H, N, L] (unit last strides)")
    out = torch.empty(B, H, N, device=part.device, dtype=out_dtype or w_uv.dtype)
    if B == 0:
        return out
    nc = triton.cdiv(N, BLOCK_N)
    _merge_uv_kernel[(H * nc, B)](
        part, lse, seq_lens, w_uv, out, part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1), w_uv.stride(0), w_uv.stride(1), out.stride(0), out.stride(1),
        s_max, chunk, N, L=L, NC=nc, BLOCK_S=triton.next_power_of_2(NS), BLOCK_L=triton.next_power_of_2(L),
        BLOCK_N=BLOCK_N, W_EARLY=W_EARLY if pdl else min(W_EARLY, 1), num_warps=4, **launch_args(pdl))
    return out


def merge_uv_torch(part, lse, seq_lens, w_uv, s_max: int, chunk: int) -> torch.Tensor:
    """The oracle: merge in float32 (as the merge kernel), round to W_uv's dtype, torch.bmm per head."""
    B, H, NS, L = part.shape
    n_valid = (seq_lens.clamp(max=s_max).long() + chunk - 1) // chunk                   # [B]
    live = torch.arange(NS, device=part.device)[None, None, :] < n_valid[:, None, None]  # [B, 1, NS]
    lse = torch.where(live, lse, float("-inf"))
    wts = torch.exp2(lse - lse.amax(-1, keepdim=True))                                 # [B, H, NS]
    merged = (wts[..., None] * torch.where(live[..., None], part, 0.0)).sum(2) / wts.sum(-1, keepdim=True)
    o_lat = merged.to(w_uv.dtype)                                                      # [B, H, L]
    return torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)     # [B, H, N]
