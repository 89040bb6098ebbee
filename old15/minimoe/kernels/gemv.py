"""GEMV for decode-sized token counts, optionally fused with the residual add + RMSNorm before it.

At decode a linear layer multiplies a handful of token rows x [T, D] (T = batch, 1..16) by a weight
W [N, D]. Every weight byte is read once and used for T multiply-adds, so the layer is a stream of
W from HBM: ~2 FLOP per 2-byte weight per token, far below the ~185 FLOP/byte an H200 needs to be
compute-bound. Its time is bytes / bandwidth, and a good kernel is one that keeps enough loads in
flight on every SM to reach that. cuBLAS picks GEMM tilings for these shapes and lands short of it;
measured on an H200 (132 SMs, ~4.25 TB/s) in a CUDA-graphed decode step at batch 1:

    OLMoE   x[1,2048] @ W[6144,2048]^T (25 MB)   7.5 us   (streaming the bytes: 5.9 us)
            x[1,2048] @ W[2048,2048]^T  (8 MB)   7.5 us   (2.0 us)
    Mixtral x[1,4096] @ W[6144,4096]^T (50 MB)  15.4 us   (11.8 us)
            x[1,4096] @ W[4096,4096]^T (34 MB)  10.7 us split-K + a 1.6 us reduce kernel

What came of it (scripts/bench_gemv.py on the H200, each call in a CUDA graph, weights cycled past
L2): at T = 1 the best Triton config ties cuBLAS (OLMoE qkv 9.5 vs 9.5 µs, o 6.1 vs 6.3, head 48.6 vs
51.9; Mixtral qkv 15.8 vs 15.8, o 12.9 vs 12.6), and with the norm folded in it is slower than the
norm kernel + cuBLAS (OLMoE qkv 15.9 vs 11.3 µs): the first pass over x and the per-chunk
normalisation in every program cost more than the 2 µs kernel they replace. So the engine's
`--gemv` switch defaults to cuBLAS and this kernel stays as a measured, tested alternative.

Here each program owns BLOCK_N output columns for all T tokens and walks D in BLOCK_K chunks: it
loads a [BLOCK_N, BLOCK_K] weight tile with 16-byte loads along D (contiguous in nn.Linear layout),
multiplies it by the matching [T, BLOCK_K] slice of x and accumulates in fp32. No split-K: the grid
is cdiv(N, BLOCK_N) programs, with the tiles the H200 sweep picked (`default_config`).

Why fuse the norm: in a pre-norm block the projection's input is rmsnorm(x + residual) * w, made by
a separate ~2 us kernel (two per layer) whose output the GEMV reads back. The normed row is only
T x D (a few KB, L2-resident), so every program simply recomputes it: a first pass over x (+
residual) gives inv_rms per token, then the main loop normalises each x chunk just before the
multiply. The normed row is never written; x + residual (the new residual stream) is written once,
its chunks spread over the programs. The roundings are those of `minimoe.kernels.rmsnorm`:
    s = (x + residual) rounded to x.dtype
    n = s * inv_rms in fp32, rounded to x.dtype          (inv_rms = rsqrt(mean(s²) + eps), fp32)
    h = norm_weight * n in fp32, rounded to x.dtype      (the GEMV's input, = rms_norm's output)

How the tile product is done depends on T (padded to a power of two, BLOCK_T):
    BLOCK_T = 1    multiply [BLOCK_N, BLOCK_K] by the x row and tl.sum along K (plain 2-D code)
    BLOCK_T < 16   broadcast to [BLOCK_T, BLOCK_N, BLOCK_K] and tl.sum along K
    BLOCK_T = 16   tl.dot (tensor cores need >= 16 rows; also selectable for smaller T with
                   config["dot"] = True, T then padded to 16 rows of zeros)
The default config uses tl.dot at every T: on the H200 it beat the broadcast forms at T = 1 (by up
to 2.8x on vocabulary heads) and T = 4 (up to 12x), so those stay only as configurable variants.

Shapes: T tokens (rows of x, <= MAX_T), D hidden (the reduction), N outputs (rows of W).
"""

import functools

import torch
import triton
import triton.language as tl


MAX_T = 16  # past this a GEMM tiling (cuBLAS) reuses each weight tile across enough rows to win
NORM_CHUNK = 8192  # x elements per chunk of the inv_rms pass: 64 fp32 values per thread at 4 warps
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _inv_rms(x_ptr, res_ptr, res_out_ptr, T, D, eps, offs_t,
             BLOCK_T: tl.constexpr, NORM_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """rsqrt(mean(s²) + eps) per token [BLOCK_T], s = x (+ residual) rounded to x.dtype.

    The chunks of s = x + residual are stored to res_out round-robin over the programs (chunk c by
    program c % programs): each is written exactly once, and no program carries the whole write.
    """
    pid, n_prog = tl.program_id(0), tl.num_programs(0)
    t_ok = offs_t[:, None] < T
    ss = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for k0 in range(0, D, NORM_K):
        offs_k = k0 + tl.arange(0, NORM_K)
        ok = t_ok & (offs_k[None, :] < D)
        idx = offs_t[:, None] * D + offs_k[None, :]
        s = tl.load(x_ptr + idx, mask=ok, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + idx, mask=ok, other=0.0)
            s = (s.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            if (k0 // NORM_K) % n_prog == pid:
                tl.store(res_out_ptr + idx, s, mask=ok)
        sf = s.to(tl.float32)
        ss += tl.sum(sf * sf, axis=1)
    return tl.rsqrt(ss / D + eps)


@triton.jit
def _load_h(x_ptr, res_ptr, nw_ptr, offs_t, offs_k, T, D, inv_rms,
            HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The GEMV input for one chunk [BLOCK_T, BLOCK_K], in x.dtype: x, or rmsnorm(x + res) * w."""
    ok = (offs_t[:, None] < T) & (offs_k[None, :] < D)
    idx = offs_t[:, None] * D + offs_k[None, :]
    h = tl.load(x_ptr + idx, mask=ok, other=0.0)
    if HAS_NORM:
        dt = x_ptr.dtype.element_ty
        if HAS_RESIDUAL:  # recomputed, not re-read from res_out: another program may be writing it
            r = tl.load(res_ptr + idx, mask=ok, other=0.0)
            h = (h.to(tl.float32) + r.to(tl.float32)).to(dt)
        normed = (h.to(tl.float32) * inv_rms[:, None]).to(dt).to(tl.float32)
        w = tl.load(nw_ptr + offs_k, mask=offs_k < D, other=0.0).to(tl.float32)
        h = (w[None, :] * normed).to(dt)
    return h


@triton.jit
def _tile_product(h, w, BLOCK_T: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """h [BLOCK_T, BLOCK_K] @ w[BLOCK_N, BLOCK_K]^T -> [BLOCK_T, BLOCK_N] in fp32."""
    if USE_DOT:
        out = tl.dot(h, tl.trans(w), input_precision=PRECISION)
    elif BLOCK_T == 1:  # h [1, K] broadcasts over the weight rows: a 2-D product, 2-D layouts
        out = tl.sum(w.to(tl.float32) * h.to(tl.float32), axis=1)[None, :]
    else:
        out = tl.sum(h.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return out


@triton.jit
def _gemv_kernel(
    x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, res_out_ptr, T, N, D, eps,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_t = tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * D  # int64: N * D passes 2^31 for big heads
    inv_rms = tl.zeros((BLOCK_T,), dtype=tl.float32)
    if HAS_NORM:
        inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, T, D, eps, offs_t,
                           BLOCK_T, NORM_K, HAS_RESIDUAL)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        # each weight byte is read once per step: evict_first keeps the small rows every program
        # re-reads (x, residual, norm weight) in L2 instead
        w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & (offs_k[None, :] < D),
                    other=0.0, eviction_policy="evict_first")
        h = _load_h(x_ptr, res_ptr, nw_ptr, offs_t, offs_k, T, D, inv_rms, HAS_NORM, HAS_RESIDUAL)
        acc += _tile_product(h, w, BLOCK_T, USE_DOT, PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ok = (offs_t[:, None] < T) & n_ok[None, :]
    tl.store(y_ptr + offs_t[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # H200; only the interpreter gets here, where the config is just a test knob
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(T: int, N: int, D: int, sms: int = 132) -> dict:
    """The launch config the H200 sweep (scripts/bench_gemv.py: 41 configs x 8 shapes x T 1/4/16)
    found best or within 5% of it: always tl.dot on a 16-row tile (T padded with zero rows; the
    broadcast-and-sum variants were up to 9x slower at T = 4), [16, 512] tiles for N <= 4096,
    [32, 256] up to 16384, [64, 128] with 4 stages for vocabulary-sized heads. BLOCK_K <= D."""
    if N <= 4096:
        block_n, block_k, stages = 16, 512, 3
    elif N <= 16384:
        block_n, block_k, stages = 32, 256, 3
    else:
        block_n, block_k, stages = 64, 128, 4
    block_k = min(block_k, max(triton.next_power_of_2(D), 16))
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 4, "num_stages": stages, "dot": True}


def usable(T: int, weight: torch.Tensor) -> bool:
    """Whether `gemv` takes T tokens against this weight (else use F.linear)."""
    return (1 <= T <= MAX_T and weight.dim() == 2 and weight.is_contiguous()
            and weight.dtype in _DTYPES and weight.shape[0] > 0 and weight.shape[1] > 0)


def _check(x, weight, bias, norm_weight, residual):
    T, D = x.shape
    assert usable(max(T, 1), weight) and weight.shape[1] == D, (x.shape, weight.shape, weight.dtype)
    assert x.is_contiguous() and x.dtype == weight.dtype, (x.stride(), x.dtype, weight.dtype)
    assert bias is None or (bias.shape == (weight.shape[0],) and bias.is_contiguous())
    if norm_weight is not None:  # one dtype: then h's rounding is rms_norm's exactly
        assert norm_weight.shape == (D,) and norm_weight.dtype == x.dtype and norm_weight.is_contiguous(), \
            (norm_weight.shape, norm_weight.dtype)
    if residual is not None:
        assert norm_weight is not None, "residual is the pre-norm add; without a norm, add it yourself"
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.is_contiguous()


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         norm_weight: torch.Tensor | None = None, residual: torch.Tensor | None = None,
         eps: float = 1e-6, config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, residual_out): y = h @ weight.T (+ bias) with h = x, or rmsnorm(x [+ residual]) * norm_weight.

    x [T, D] with T <= MAX_T, weight [N, D], bias [N], norm_weight [D]; all contiguous, one dtype.
    residual_out = x + residual (the new residual stream) when residual is given, else None.
    No host syncs: safe inside a CUDA graph. `config` overrides `default_config`.
    """
    _check(x, weight, bias, norm_weight, residual)
    (T, D), N = x.shape, weight.shape[0]
    y = torch.empty((T, N), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else None
    if T == 0:
        return y, res_out
    cfg = dict(default_config(T, N, D, _sm_count(x.device)), **(config or {}))
    dot = cfg.get("dot", False)
    block_t = max(triton.next_power_of_2(T), 16 if dot else 1)
    if dot:
        assert cfg["BLOCK_N"] >= 16 and cfg["BLOCK_K"] >= 16, f"tl.dot needs tiles >= 16: {cfg}"
    _gemv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x,
        weight, bias if bias is not None else weight, y, res_out if res_out is not None else y,
        T, N, D, eps,
        BLOCK_T=block_t, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        NORM_K=min(triton.next_power_of_2(D), max(NORM_CHUNK // block_t, 16)),
        HAS_BIAS=bias is not None, HAS_NORM=norm_weight is not None,
        HAS_RESIDUAL=residual is not None, USE_DOT=dot,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # exact fp32 on tensor cores
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return y, res_out
