"""The q/k/v projection at batch 1 with rotary embedding and the KV-cache write in its epilogue: one launch, not two.

Shape legend: T new tokens (B sequences x S tokens each; one token a step at decode), D the input width, H / Hkv
query / kv heads, d the head dim, N = (H + 2·Hkv)·d the projection's outputs, P rows of the rope tables.

At decode the attention sublayer starts with two launches: the q/k/v GEMV (kernels/dense_gemv.py, a stream of the
[N, D] weight) and `qkv_rope_cache` (kernels/rope.py: split q/k/v, rotate q and k, write k and v into the cache),
which moves a few kilobytes and costs a kernel's launch, ramp and tail (~2-3 µs in a chain of ~10 kernels a layer).
Rotary embedding needs nothing but a channel pair (x1, x2) of one head, its token's position and the cos / sin of
the pair's frequency, so it can be the GEMV's epilogue if each program owns whole pairs:

    program  =  BLOCK_N weight rows = BLOCK_N/2 channel pairs of one q or k head (or BLOCK_N rows of v)
    rows     =  head·d + c1(j), head·d + c2(j) for j in jbase .. jbase + BLOCK_N/2 - 1, stored interleaved:
                "rotate half" (NeoX, most families) c1 = j, c2 = j + d/2; interleaved (DeepSeek) c1 = 2j, c2 = 2j + 1

Each row is still a contiguous stream along D read with 16-byte loads, exactly as in the dense GEMV; only which
rows a program owns changes. The fp32 accumulator (+ bias) is rounded to the activation dtype, as the GEMV's output
is, split into (x1, x2), rotated in fp32 and rounded once; q goes to q [B, S, H, d], k and v to the cache at the
token's position. The roundings and products are those of the unfused path (dense_gemv, then rope.py with its
multiply-adds unfused: here `_mul_rn`), so the two paths give the same bits when the fused tile has dense_gemv's
shape, as at the engine's head dims (tests/test_qkv_gemv_rope.py; another tile sums each row in another order).

Where it applies (rope_fusion.py): no q/k norm (a "full" norm needs all heads, a "head" norm a whole head per
program), no clip, a plain weight; Mixtral, Qwen1.5/2-MoE. Peers: TensorRT-LLM and vLLM fuse rope into the
attention kernel or a separate "qkv rope + cache" kernel (FlashInfer's `apply_rope_with_cos_sin_cache`); folding it
into the projection's epilogue is the batch-1 answer when the projection is a GEMV that owns rows.

With `norm` (NORM) the residual add + RMSNorm before the projection is its prologue too (norm_gemv.py's fold, through
its `norm_chunk`): each program streams x, the residual and the norm weight g beside its weight tiles, multiplies by
g ⊙ s with s = x + residual, adds up Σ s², and scales its accumulator by 1 / rms(s) before the bias and the rotation;
s is stored once, its chunks spread over the token's programs. Three launches (norm, GEMV, rope) become one. Against
the unfused path the q/k/v outputs skip h's bf16 rounding, as norm_gemv's do (norm_fusion.py, WITH_ROPE).
"""
import torch
import triton
import triton.language as tl

from .dense_gemv import dense_config
from .moe_configs import on_gpu
from .norm_gemv import MAX_ROW, norm_chunk
from .pdl import launch_args, wait_then_release


@triton.jit
def _mul_rn(a, b, RN_ASM: tl.constexpr):
    """a·b rounded on its own (never contracted into a multiply-add with a following add): PTX mul.rn on a GPU; the
    interpreter (numpy) never fuses."""
    if RN_ASM:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b


@triton.jit
def _qkv_gemv_rope_kernel(x_ptr, w_ptr, bias_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
                          S, D, stride_xt, stride_wn, stride_pb, stride_ps, stride_cos, stride_sin,
                          stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                          H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                          INTERLEAVE: tl.constexpr, BIAS: tl.constexpr, RN_ASM: tl.constexpr, PDL: tl.constexpr,
                          res_ptr, g_ptr, res_out_ptr, stride_r, eps,
                          NORM: tl.constexpr = False, HAS_RESIDUAL: tl.constexpr = False):
    HALF: tl.constexpr = BLOCK_N // 2
    PER_HEAD: tl.constexpr = HD // BLOCK_N                 # programs per head (q, k and v alike)
    N: tl.constexpr = (H + 2 * HKV) * HD
    pid = tl.program_id(0)
    per_token: tl.constexpr = N // BLOCK_N
    t, blk = pid // per_token, pid % per_token
    head, sub = blk // PER_HEAD, blk % PER_HEAD            # head < H: q; < H + HKV: k; else v
    i = tl.arange(0, BLOCK_N)
    if head < H + HKV:       # rotated heads: BLOCK_N/2 pairs, member 0 / 1 interleaved in i
        j = sub * HALF + i // 2
        if INTERLEAVE:
            c = 2 * j + i % 2
        else:
            c = j + (i % 2) * (HD // 2)
    else:
        c = sub * BLOCK_N + i
    rows = head * HD + c                                                   # [BLOCK_N] weight rows
    offs_k = tl.arange(0, BLOCK_K)
    wait_then_release(PDL)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    x_row = x_ptr + t.to(tl.int64) * stride_xt
    if NORM:                 # the residual add + RMSNorm as the prologue: g ⊙ s into the GEMV, Σ s², s stored once
        sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for kk in tl.range(0, tl.cdiv(D, BLOCK_K), num_stages=STAGES):
            k0 = kk * BLOCK_K
            gv, sf = norm_chunk(x_row, res_ptr + t.to(tl.int64) * stride_r, g_ptr, res_out_ptr + t.to(tl.int64) * D,
                                k0, D, D, blk, per_token, BLOCK_K, HAS_RESIDUAL, HAS_RESIDUAL)
            sq += sf * sf
            w = tl.load(w_rows + k0 + offs_k[None, :], mask=(offs_k < D - k0)[None, :], other=0.0,
                        eviction_policy="evict_first")
            acc += tl.sum(w.to(tl.float32) * (gv * sf)[None, :], axis=1)
        acc = acc * tl.rsqrt(tl.sum(sq, axis=0) / D + eps)               # rmsnorm.py's 1 / rms, before the bias
    else:
        for kk in tl.range(0, tl.cdiv(D, BLOCK_K), num_stages=STAGES):     # the dense GEMV's loop, unchanged
            k0 = kk * BLOCK_K
            k_mask = offs_k < D - k0
            xk = tl.load(x_row + k0 + offs_k, mask=k_mask, other=0.0)
            w = tl.load(w_rows + k0 + offs_k[None, :], mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
            acc += tl.sum(w.to(tl.float32) * xk.to(tl.float32)[None, :], axis=1)
    if BIAS:
        acc += tl.load(bias_ptr + rows).to(tl.float32)
    OUT_T: tl.constexpr = q_ptr.dtype.element_ty
    y = acc.to(OUT_T)                                    # the projection's output, as the unfused GEMV writes it
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    pos = tl.load(pos_ptr + b * stride_pb + s * stride_ps).to(tl.int64)
    if head < H + HKV:
        x1, x2 = tl.split(tl.reshape(y.to(tl.float32), (HALF, 2)))     # [HALF] each: pair members
        jj = sub * HALF + tl.arange(0, HALF)
        cos = tl.load(cos_ptr + pos * stride_cos + jj)
        sin = tl.load(sin_ptr + pos * stride_sin + jj)
        o1 = _mul_rn(x1, cos, RN_ASM) - _mul_rn(x2, sin, RN_ASM)
        o2 = _mul_rn(x2, cos, RN_ASM) + _mul_rn(x1, sin, RN_ASM)
        o = tl.reshape(tl.join(o1, o2), (BLOCK_N,))                      # back in i's order
        if head < H:
            tl.store(q_ptr + t.to(tl.int64) * (H * HD) + head * HD + c, o.to(OUT_T))
        else:
            dst = k_ptr + b * stride_kb + pos * stride_ks + (head - H) * stride_kh + c
            tl.store(dst, o.to(k_ptr.dtype.element_ty))
    else:
        dst = v_ptr + b * stride_vb + pos * stride_vs + (head - H - HKV) * stride_vh + c
        tl.store(dst, y.to(v_ptr.dtype.element_ty))


def pair_block(head_dim: int, block_n: int) -> int:
    """The GEMV tile's BLOCK_N as this kernel can use it: an even count of rows that divides the head dim (block_n
    rounded up to a power of two, capped at the largest power of two dividing head_dim), or 0 where none does (an
    odd head dim)."""
    low = head_dim & -head_dim                   # largest power of two dividing head_dim
    bn = min(triton.next_power_of_2(block_n), low)
    return bn if bn >= 2 else 0


def qkv_gemv_rope(x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv_heads: int,
                  head_dim: int, *, bias: torch.Tensor | None = None, interleave: bool = False,
                  config: dict | None = None, pdl: bool = False, norm: tuple | None = None):
    """q [B, S, H, d] (rotated) from x [B, S, D] @ W[(H + 2·Hkv)·d, D]ᵀ (+ bias), with k (rotated) and v written into
    k_cache / v_cache [B, S_max, Hkv, d] (x's dtype) at `positions` [B, S] (int32 or int64, on x's device): `Linear`
    then `rope.qkv_rope_cache` with no q/k norm and no clip, in one launch; the same bits where the tile's rows are
    dense_gemv's (its BLOCK_N divides the head dim). cos, sin [P, d/2] float32 (unit last stride).
    config: dense_gemv's keys (BLOCK_N, BLOCK_K, num_warps, num_stages) over `dense_config(N, D)`; BLOCK_N is cut to
    `pair_block`. norm (residual [B, S, D] or None, g [D], eps): x is the sublayer's input before its residual add +
    RMSNorm, which run inside (module docstring); returns (q, s) then, s [B, S, D] = x + residual (x itself without a
    residual). Raises ValueError for shapes, dtypes, devices or strides that do not fit (x and W the same dtype,
    both with unit last strides, W contiguous, a bias [N] in that dtype, caches with unit stride on d, an even head
    dim; with norm, g and a contiguous residual in x's dtype and D <= norm_gemv.MAX_ROW), before any launch."""
    B, S, D = x.shape
    H, Hkv, d = n_heads, n_kv_heads, head_dim
    N = (H + 2 * Hkv) * d
    problems = []
    if weight.shape != (N, D) or weight.dtype != x.dtype or not weight.is_contiguous() or weight.device != x.device:
        problems.append(f"W {tuple(weight.shape)} {weight.dtype} is not a contiguous [{N}, {D}] in x's dtype {x.dtype}")
    if x.stride(-1) != 1 or (B * S > 1 and x.stride(0) != S * x.stride(1)):
        problems.append("x needs unit last stride and [B, S] rows that flatten")
    if bias is not None and (bias.shape != (N,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        problems.append(f"bias {tuple(bias.shape)} {bias.dtype} is not a contiguous [{N}] in x's dtype")
    if positions.shape != (B, S) or positions.dtype not in (torch.int32, torch.int64) or positions.device != x.device:
        problems.append(f"positions {tuple(positions.shape)} {positions.dtype} is not an integer [{B}, {S}] on x's device")
    if cos.shape[-1] != d // 2 or sin.shape[-1] != d // 2 or cos.dtype != torch.float32 or sin.dtype != torch.float32 \
            or cos.stride(-1) != 1 or sin.stride(-1) != 1 or cos.device != x.device or sin.device != x.device:
        problems.append(f"cos / sin must be float32 [P, {d // 2}] with unit last stride, on x's device")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.shape[0] != B or tuple(c.shape[2:]) != (Hkv, d) or c.stride(-1) != 1 or c.device != x.device \
                or c.dtype != x.dtype:
            problems.append(f"{name} {tuple(c.shape)} {c.dtype} is not [{B}, S_max, {Hkv}, {d}] in x's dtype with unit "
                            "stride on d")
    base = dense_config(N, D)
    cfg = {k: (config or {}).get(k, base[k]) for k in base}
    block_n = pair_block(d, cfg["BLOCK_N"])
    if block_n == 0:
        problems.append(f"head dim {d} is odd: no channel pairs to give a program")
    residual, g, eps = norm if norm is not None else (None, None, 0.0)
    if norm is not None:
        if g.shape != (D,) or g.dtype != x.dtype or g.device != x.device or not g.is_contiguous():
            problems.append(f"norm weight {tuple(g.shape)} {g.dtype} is not a contiguous [{D}] in x's dtype")
        if D > MAX_ROW:
            problems.append(f"the norm's row of {D} is wider than {MAX_ROW}")
        if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                     or not residual.is_contiguous() or residual.device != x.device):
            problems.append(f"residual {tuple(residual.shape)} {residual.dtype} is not a contiguous {tuple(x.shape)} "
                            "in x's dtype")
    if problems:
        raise ValueError("qkv_gemv_rope: " + "; ".join(problems))
    q = torch.empty(B, S, H, d, dtype=x.dtype, device=x.device)
    s = x if norm is None or residual is None else torch.empty_like(x)                   # the residual stream out
    if B * S == 0:
        return q if norm is None else (q, s)
    grid = (B * S * (N // block_n),)
    _qkv_gemv_rope_kernel[grid](
        x, weight, x if bias is None else bias, positions, cos, sin, q, k_cache, v_cache,
        S, D, x.stride(1), weight.stride(0), positions.stride(0), positions.stride(1), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2),
        H=H, HKV=Hkv, HD=d, BLOCK_N=block_n, BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        INTERLEAVE=interleave, BIAS=bias is not None, RN_ASM=on_gpu() and x.is_cuda,
        res_ptr=x if residual is None else residual, g_ptr=x if g is None else g, res_out_ptr=s, stride_r=D, eps=float(eps),
        NORM=norm is not None, HAS_RESIDUAL=residual is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    return q if norm is None else (q, s)
