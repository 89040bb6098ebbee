"""RMSNorm (+ the residual add before it) as the prologue of a batch-1 GEMV: the norm's launch folded into its reader.

Shape legend: D the hidden size (the GEMV's reduction), N (+ N2) the outputs, one token (T = 1).

At batch 1 an attention sublayer starts with two launches: `rmsnorm.rms_norm` (s = x + residual, h = w·s/rms(s):
a few kilobytes) and the q/k/v GEMV reading h (kernels/dense_gemv.py or kernels/qkv_gemv_rope.py: megabytes). The
first moves nothing worth a launch; inside a chain of ~8 kernels a layer it costs its launch, ramp and tail. The
GEMV's every program reads all of h anyway, so each program can make h itself:

    prologue  (once a program)   s = x + residual (rounded to x's dtype), inv = rsqrt(mean(s²) + eps)
                                 program 0 also stores s: the new residual stream
    loop      (each K chunk)     h[k0:k0+BK] = w ⊙ (s · inv), with the norm kernel's roundings, from x / residual /
                                 w chunks the prologue left in L1 / L2, then the GEMV's usual [BN, BK] weight tile

The extra work is two 16-byte loads and ~8 arithmetic ops a chunk element beside the weight tile's loads, and one
reduction of D values a program; the bytes from HBM are the GEMV's. The roundings are `rmsnorm.add_rms_norm_row`'s
step by step (s in x's dtype, s·inv rounded before the weight, w·n rounded to h's dtype), so h is that kernel's to
the bit whenever mean(s²) sums to the same fp32 value (always in the interpreter; on a GPU the two reductions' trees
differ and inv can move by an fp32 ulp).

Where it runs (norm_fusion.py, under `--fold-norm`): the q/k/v projection of a one-token step, as `norm_gemv` below
(OLMoE's and Qwen3's q/k/v, which keep their q/k norm kernel; MLA's q + latent pair) or inside
`qkv_gemv_rope` (Mixtral, Qwen1.5/2-MoE). The MoE side of a layer already folds its norm into the router
(kernels/norm_route.py, kernels/gate_splitk.py). Peers: TensorRT-LLM's and FlashInfer's fused add + RMSNorm kernels
stop at the norm; folding it into the next GEMV's prologue is the batch-1 form of the same idea (each GEMV program
reads the whole input vector).
"""
import torch
import triton
import triton.language as tl

from .dense_gemv import dense_config
from .pdl import launch_args, wait_then_release

MAX_D = 8192   # the prologue holds s in registers (D / 128 values a thread at 4 warps); wider: the norm kernel


@triton.jit
def norm_prologue(x_ptr, res_ptr, res_out_ptr, D, eps, write_res, BLOCK_D: tl.constexpr, HAS_RES: tl.constexpr):
    """inv = rsqrt(mean(s²) + eps) for s = x (+ residual) rounded to x's dtype, one row of D; stores s to
    res_out_ptr where `write_res` (program 0 of the grid)."""
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    s = tl.load(x_ptr + offs, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + offs, mask=ok, other=0.0)
        s = (s.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        if write_res:
            tl.store(res_out_ptr + offs, s, mask=ok)
    sf = s.to(tl.float32)
    return tl.rsqrt(tl.sum(sf * sf, axis=0) / D + eps)


@triton.jit
def normed_chunk(x_ptr, res_ptr, g_ptr, k0, offs_k, k_mask, inv, HAS_RES: tl.constexpr):
    """h[k0 + offs_k] = g ⊙ (s · inv) in x's dtype (0 where not k_mask), rounded as rmsnorm.add_rms_norm_row does."""
    s = tl.load(x_ptr + k0 + offs_k, mask=k_mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + k0 + offs_k, mask=k_mask, other=0.0)
        s = (s.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    n = (s.to(tl.float32) * inv).to(x_ptr.dtype.element_ty).to(tl.float32)
    g = tl.load(g_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    return (g * n).to(x_ptr.dtype.element_ty)


@triton.jit
def _norm_gemv_kernel(x_ptr, res_ptr, g_ptr, res_out_ptr, w_ptr, wb_ptr, bias_ptr, out_ptr,
                      D, N, N_B, stride_wn, stride_wbn, eps,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
                      HAS_RES: tl.constexpr, CAT: tl.constexpr, BIAS: tl.constexpr, PDL: tl.constexpr):
    """out[cols] = W[cols, :] · h (+ bias[cols]) for BLOCK_N columns, h = norm(x + residual) made in the prologue.
    CAT: programs past W's column blocks read Wb ([N_B, D]) and write columns N .. N + N_B - 1."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    if CAT:
        second = pid >= n_blocks
        col0 = tl.where(second, pid - n_blocks, pid) * BLOCK_N
        n_out, out_col0 = tl.where(second, N_B, N), tl.where(second, N, 0)
        w_base, w_stride = tl.where(second, wb_ptr, w_ptr), tl.where(second, stride_wbn, stride_wn)
    else:
        col0, n_out, out_col0, w_base, w_stride = pid * BLOCK_N, N, 0, w_ptr, stride_wn
    rows = (col0 + tl.arange(0, BLOCK_N)) % n_out          # a ragged last block re-reads rows; its stores are masked
    offs_k = tl.arange(0, BLOCK_K)
    wait_then_release(PDL)
    inv = norm_prologue(x_ptr, res_ptr, res_out_ptr, D, eps, pid == 0, BLOCK_D, HAS_RES)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    w_rows = w_base + rows.to(tl.int64)[:, None] * w_stride
    for kk in tl.range(0, tl.cdiv(D, BLOCK_K), num_stages=STAGES):
        k0 = kk * BLOCK_K
        k_mask = offs_k < D - k0
        hk = normed_chunk(x_ptr, res_ptr, g_ptr, k0, offs_k, k_mask, inv, HAS_RES)
        w = tl.load(w_rows + k0 + offs_k[None, :], mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        acc += tl.sum(w.to(tl.float32) * hk.to(tl.float32)[None, :], axis=1)
    if BIAS:
        acc += tl.load(bias_ptr + rows).to(tl.float32)
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + out_col0 + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < n_out)


def check_norm_inputs(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor) -> list[str]:
    """The problems (empty: none) with x [1, D] (or any shape of one row), residual like x or None, and the norm's
    weight [D] as this file's prologue reads them: one contiguous row of at most MAX_D in one dtype and device."""
    D = x.shape[-1]
    problems = []
    if x.numel() != D or not x.is_contiguous():
        problems.append(f"x {tuple(x.shape)} is not one contiguous row")
    if D > MAX_D:
        problems.append(f"D = {D} > {MAX_D}: the prologue holds the row in registers")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()
                                 or residual.device != x.device):
        problems.append(f"residual {tuple(residual.shape)} {residual.dtype} is not a contiguous row like x")
    if norm_weight.shape != (D,) or norm_weight.dtype != x.dtype or not norm_weight.is_contiguous() \
            or norm_weight.device != x.device:
        problems.append(f"norm weight {tuple(norm_weight.shape)} {norm_weight.dtype} is not a contiguous [{D}] in "
                        f"x's dtype {x.dtype}")
    return problems


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
              weight: torch.Tensor, *, second: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              residual_out: torch.Tensor | None = None, config: dict | None = None,
              pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(h Wᵀ (+ bias) [1, N] or, with `second` (Wb [N2, D]), [1, N + N2] = [h Wᵀ, h Wbᵀ], s) for one token:
    s = x + residual (x when residual is None) in x's dtype, h = norm_weight ⊙ s / sqrt(mean(s²) + eps), as
    `rmsnorm.rms_norm` then `dense_gemv.dense_gemv` compute them, in one launch.
    x, residual: [1, D] (one contiguous row) in W's dtype; W [N, D] contiguous; bias [N] (not with second);
    residual_out: where s is written (a fresh [1, D] by default; x itself is returned when residual is None).
    config: dense_gemv's keys over `dense_config(N + N2, D)`. Raises ValueError for anything else, before a launch."""
    D = x.shape[-1]
    problems = check_norm_inputs(x, residual, norm_weight)
    if weight.dim() != 2 or weight.shape[1] != D or weight.dtype != x.dtype or not weight.is_contiguous() \
            or weight.device != x.device:
        problems.append(f"W {tuple(weight.shape)} {weight.dtype} is not a contiguous [N, {D}] in x's dtype")
    N = weight.shape[0]
    if second is not None and (second.dim() != 2 or second.shape[1] != D or second.dtype != x.dtype
                               or not second.is_contiguous() or second.device != x.device or bias is not None):
        problems.append(f"second {tuple(second.shape)} does not join W (a contiguous [N2, {D}] in x's dtype, no bias)")
    if bias is not None and (bias.shape != (N,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        problems.append(f"bias {tuple(bias.shape)} {bias.dtype} is not a contiguous [{N}] in x's dtype")
    if residual is not None and residual_out is not None and (residual_out.shape != x.shape
                                                              or residual_out.dtype != x.dtype
                                                              or not residual_out.is_contiguous()):
        problems.append("residual_out is not a contiguous row like x")
    if problems:
        raise ValueError("norm_gemv: " + "; ".join(problems))
    N2 = 0 if second is None else second.shape[0]
    base = dense_config(N + N2, D)
    cfg = {k: (config or {}).get(k, base[k]) for k in base}
    if residual is None:
        s = x
    else:
        s = torch.empty_like(x) if residual_out is None else residual_out
    out = x.new_empty(1, N + N2)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]) + triton.cdiv(N2, cfg["BLOCK_N"]),)
    _norm_gemv_kernel[grid](
        x, x if residual is None else residual, norm_weight, s, weight, weight if second is None else second,
        x if bias is None else bias, out, D, N, N2, weight.stride(0), weight.stride(0) if second is None else
        second.stride(0), eps,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=triton.next_power_of_2(D), STAGES=cfg["num_stages"],
        HAS_RES=residual is not None, CAT=second is not None, BIAS=bias is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    return out, s
