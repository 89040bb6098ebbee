"""The residual add + RMSNorm before a dense layer, folded into that layer's decode GEMV: one launch, one pass.

Shape legend: T tokens (1-2), D hidden size (the GEMV's reduction), N outputs (the q/k/v projection's width).

At batch 1 an attention sublayer starts with

    s    = x + residual                      [T, D]   the residual stream (kernels/rmsnorm.py: one small launch,
    h    = s / rms(s) · g                    [T, D]    ~1.8 µs a layer PDL-off, that re-reads the row for 1 / rms)
    qkv  = h Wᵀ                              [T, N]   a GEMV (dense_gemv.py)

and the norm is a launch of its own on the step's critical path. The scale 1 / rms(s) is one number per token, so

    qkv[n] = Σ_c W[n, c] · g[c] · s[c] / rms(s)  =  (W · (g ⊙ s))[n] · 1 / rms(s)

and a GEMV program that walks the whole reduction (dense_gemv's programs do: no split-K) meets every s[c] anyway.
Each program here loads x, residual and g chunk by chunk beside its weight tiles (L2-resident: a few KB), adds
Σ s[c]² as it goes, and scales its outputs by 1 / rms at the end: no first pass over the row, nothing loaded
before the weights that the weights wait for. (Two earlier folds ran a first pass over the row for 1 / rms in every
program and normalised each chunk before its multiply: kernels/gemv.py in the second session, 15.9 µs against 11.3 for
the norm kernel + cuBLAS, and the stream GEMV's in the twentieth, +0.4% to +9.4% a step, removed.) The new residual
stream s is stored once, its chunks spread over the programs. Measured in the graphed bs-1 step on the H200 against
the norm kernel + dense_gemv (docs/results/2026-12-03-s31, call 1): -0.80% OLMoE, -1.00% Qwen3-30B-A3B.

Roundings, against the unfused path (rms_norm -> dense_gemv): s is the same bits (x + residual rounded to x's dtype);
1 / rms the same up to the fp32 order of Σ s²; the outputs are not. Unfused, h is rounded to x's dtype twice (s / rms,
then · g) before the GEMV; here the GEMV sees g ⊙ s in fp32 and the scale comes after, so an output differs by about
one bf16 rounding of h (a relative ~2^-9 per term, averaged over D). In float32 the two agree to fp32 rounding.
tests/test_norm_gemv.py checks against an fp64 oracle of this formula and against the unfused kernels.

Scope (`usable`): T <= MAX_T, a plain contiguous W in x's dtype, D <= MAX_ROW, an optional bias [N] (added after the
scale, on the fp32 accumulator, as cuBLAS and dense_gemv add it).
Design sources: the residual add + RMSNorm folded into the operation beside it (TensorRT-LLM's and FlashInfer's fused
all-reduce + residual + RMSNorm kernels); moving the RMSNorm's scales past the next linear map is the algebra SliceGPT
(Ashkboos et al., 2024) and QuaRot use to fold a norm's weight into the next layer; the tile and loop are dense_gemv's.
"""
import torch
import triton
import triton.language as tl

from .dense_gemv import dense_config
from .pdl import launch_args, wait_then_release

MAX_T = 2          # tokens a step (the stream GEMV's regime)
MAX_ROW = 16384    # the reduction width (x, residual and g chunks stream beside the weights; no row in registers)
CONFIG: dict | None = None   # a tile over dense_config's (in-step A/B's; scripts/step_probe.py knobs)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def norm_chunk(x_row, res_row, g_ptr, res_out_row, k0, D, valid_d, blk, n_blocks, BLOCK_K: tl.constexpr,
               HAS_RESIDUAL: tl.constexpr, STORE: tl.constexpr):
    """One BLOCK_K chunk at k0 of the folded norm's row, loaded beside a GEMV's weight tile: s = x (+ residual, rounded
    to x's dtype as rmsnorm.py rounds it), stored into res_out_row where STORE and the chunk's index mod n_blocks is
    the program's block blk (so the row is stored once over the programs); x past valid_d (<= D) reads 0.
    Returns (g, s) in float32 [BLOCK_K]: the GEMV multiplies its weight tile by g ⊙ s, Σ s² adds up s.
    _norm_gemv_kernel's loop below is this body written in place: calling it there changed that measured kernel's
    SASS (scripts/compile_check.py's sass_sha; same instruction count, other registers), so it stays as compiled;
    qkv_gemv_rope.py's norm prologue calls this."""
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < D - k0
    s = tl.load(x_row + k0 + offs_k, mask=offs_k < valid_d - k0, other=0.0)
    if HAS_RESIDUAL:
        rv = tl.load(res_row + k0 + offs_k, mask=k_mask, other=0.0)
        s = (s.to(tl.float32) + rv.to(tl.float32)).to(x_row.dtype.element_ty)     # the residual stream
    if STORE:
        mine = k_mask & (tl.zeros_like(offs_k) + (k0 // BLOCK_K) % n_blocks == blk)      # this program's chunk
        tl.store(res_out_row + k0 + offs_k, s, mask=mine)
    sf = s.to(tl.float32)
    gv = tl.load(g_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    return gv, sf


@triton.jit(do_not_specialize=["T", "eps"])
def _norm_gemv_kernel(x_ptr, res_ptr, g_ptr, w_ptr, bias_ptr, out_ptr, res_out_ptr, ids_ptr,
                      T, N, D, V, stride_x, stride_r, stride_w, stride_o, eps,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, BIAS: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, GATHER: tl.constexpr, PDL: tl.constexpr):
    """Program (t, block): out[t, cols] = (W[cols] · (g ⊙ s[t])) / rms(s[t]) (+ bias), s = x + residual (x alone
    without one; with GATHER x is a table [V, D] and token t's row is x[ids[t]]); the program with block index b
    stores the chunks c of s[t] with c % blocks == b (where s is not the caller's x)."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    t, blk = pid // n_blocks, pid % n_blocks
    t64 = t.to(tl.int64)
    col0 = blk * BLOCK_N
    rows = (col0 + tl.arange(0, BLOCK_N)) % N                            # in range for the weight loads
    offs_k = tl.arange(0, BLOCK_K)
    wait_then_release(PDL)
    x_t = x_ptr.dtype.element_ty
    x_row = x_ptr + t64 * stride_x
    if GATHER:                                   # the embedding: token t's row of the table (an id out of range: 0s)
        tok = tl.load(ids_ptr + t64)
        tok_ok = (tok >= 0) & (tok < V)
        x_row = x_ptr + tl.where(tok_ok, tok, 0).to(tl.int64) * stride_x
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in tl.range(0, D, BLOCK_K, num_stages=STAGES):
        k_mask = offs_k < D - k0
        if GATHER:
            s = tl.load(x_row + k0 + offs_k, mask=offs_k < tl.where(tok_ok, D - k0, 0), other=0.0)
        else:
            s = tl.load(x_row + k0 + offs_k, mask=k_mask, other=0.0)
        if HAS_RESIDUAL:
            rv = tl.load(res_ptr + t64 * stride_r + k0 + offs_k, mask=k_mask, other=0.0)
            s = (s.to(tl.float32) + rv.to(tl.float32)).to(x_t)          # the residual stream, rounded as rmsnorm.py
        if HAS_RESIDUAL or GATHER:
            mine = k_mask & (tl.zeros_like(offs_k) + (k0 // BLOCK_K) % n_blocks == blk)   # this program's chunk
            tl.store(res_out_ptr + t64 * D + k0 + offs_k, s, mask=mine)
        sf = s.to(tl.float32)
        sq += sf * sf
        gv = tl.load(g_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * stride_w + k0 + offs_k[None, :], mask=k_mask[None, :],
                    other=0.0, eviction_policy="evict_first")
        acc += tl.sum(w.to(tl.float32) * (gv * sf)[None, :], axis=1)
    inv = tl.rsqrt(tl.sum(sq, axis=0) / D + eps)                         # rmsnorm.py's 1 / rms
    y = acc * inv
    if BIAS:
        y += tl.load(bias_ptr + rows).to(tl.float32)
    cols = col0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + t64 * stride_o + cols, y.to(x_t).to(out_ptr.dtype.element_ty), mask=cols < N)


def usable(T: int, D: int, weight: torch.Tensor, x_dtype: torch.dtype, bias: torch.Tensor | None = None) -> bool:
    """Whether `norm_gemv` runs T tokens of width D through this weight (plain, contiguous [N, D], x's dtype) and
    bias."""
    return (1 <= T <= MAX_T and 1 <= D <= MAX_ROW and x_dtype in _DTYPES
            and type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype == x_dtype and weight.dim() == 2
            and weight.shape[1] == D and weight.is_contiguous()
            and (bias is None or (bias.shape == (weight.shape[0],) and bias.is_contiguous()
                                  and bias.device == weight.device)))


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
              weight: torch.Tensor, bias: torch.Tensor | None = None, *, pdl: bool = False, config: dict | None = None,
              out_dtype: torch.dtype | None = None, ids: torch.Tensor | None = None):
    """rmsnorm(x + residual) · g, then a dense layer, at decode in one launch:
    x, residual [T, D] (the previous sublayer's output and the residual stream, one dtype; residual None in a first
    layer: s = x), norm_weight g [D], weight W [N, D] in x's dtype (+ bias [N]) -> (y [T, N] in x's dtype, s [T, D]
    = x + residual in x's dtype, x itself without a residual), y = (W · (g ⊙ s)) / rms(s) (+ bias): rms_norm ->
    dense_gemv up to h's rounding (module docstring). out_dtype (float32 for an LM head's logits): y rounded to x's
    dtype, then stored in out_dtype (y.float()'s bits without a copy launch). ids [T] int64 (an embedding gathered in
    the same launch, residual None): x is the table [V, D] and token t's row is x[ids[t]]; s is then those rows (an id
    outside [0, V) reads zeros, where nn.Embedding raises).
    config: dense_gemv's tile keys (BLOCK_N, BLOCK_K, num_warps, num_stages) over dense_config's, then CONFIG's.
    Raises ValueError for inputs outside `usable` or shapes that do not fit."""
    if ids is not None and (ids.dim() != 1 or ids.dtype != torch.int64 or residual is not None
                            or ids.device != x.device or x.dim() != 2):
        raise ValueError(f"norm_gemv: ids {tuple(ids.shape)} {ids.dtype} must be a 1-D int64 tensor on x's device, "
                         "with x the [V, D] table and no residual")
    V, D = x.shape
    T = V if ids is None else ids.shape[0]
    if not usable(T, D, weight, x.dtype, bias):
        raise ValueError(f"norm_gemv: x {tuple(x.shape)} {x.dtype}, W {tuple(weight.shape)} {weight.dtype}, bias "
                         f"{None if bias is None else tuple(bias.shape)}: outside what the kernel runs")
    res = x if residual is None else residual
    if (res.shape[1:] != (D,) or res.shape[0] != (V if ids is not None else T) or res.dtype != x.dtype
            or x.stride(-1) != 1 or res.stride(-1) != 1 or norm_weight.shape != (D,) or not norm_weight.is_contiguous()
            or len({x.device, res.device, norm_weight.device, weight.device}) != 1):
        raise ValueError(f"norm_gemv: residual {tuple(res.shape)} {res.dtype}, norm weight "
                         f"{tuple(norm_weight.shape)} do not fit x {tuple(x.shape)} {x.dtype} on one device")
    N = weight.shape[0]
    base = dense_config(N, D)
    cfg = {key: (config or CONFIG or {}).get(key, base[key]) for key in base}
    y = torch.empty(T, N, dtype=out_dtype or x.dtype, device=x.device)
    s = x if residual is None and ids is None else torch.empty(T, D, dtype=x.dtype, device=x.device)
    _norm_gemv_kernel[(T * triton.cdiv(N, cfg["BLOCK_N"]),)](
        x, res, norm_weight, weight, weight if bias is None else bias, y, s, x if ids is None else ids,
        T, N, D, V, x.stride(0), res.stride(0), weight.stride(0), y.stride(0), float(eps),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"], BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, GATHER=ids is not None, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **launch_args(pdl))
    return y, s
