"""Skinny GEMM: a dense linear for a handful of token rows (1-64), split over K so the grid fills the GPU.

At batch 16-64 a decode step's dense layers (attention projections, shared experts, routers) multiply
x [T, K] by W [N, K]ᵀ with T far too small to reuse a weight tile much: the layer is still a stream of
W from HBM, T·2 FLOP per weight element. cuBLAS picks GEMM tilings for these shapes whose grids are a
few dozen tiles wide (N / 64), so most of the 132 SMs idle and each tile walks all of K alone; measured
in a graphed OLMoE bs-64 step on the H200 (scripts/profile_step.py, thirteenth session): the o
projection 2048 x 2048 (8 MB, 2.0 µs of bytes) 6.1 µs, q/k/v 6144 x 2048 (25 MB, 5.9 µs) 9.4 µs, the
router's 64 x 2048 gate 5.3 µs (+2.1 µs of top-k).

Here the grid is (N / BLOCK_N column blocks) x (SPLIT shares of K): each program multiplies its
[BLOCK_M, BLOCK_K] x slices by its [BLOCK_N, BLOCK_K] weight tiles on the tensor cores (tl.dot, fp32
accumulation), so ~2 programs per SM stream disjoint weight bytes. With SPLIT > 1 each program stores its
fp32 partial [T, BLOCK_N] into a workspace and bumps its column block's counter; the last program to
arrive adds the SPLIT partials in order 0..SPLIT-1 (the result does not depend on which one finishes
last), adds the bias and stores y. The same "last program finishes" split-K as the quantized decode
kernels' GEMM2 (fused_moe_quant_pair.py) and Triton's / CUTLASS's serial split-K reduction.

The weight may be wider than x (a float32 router gate with bf16 activations, DeepSeek's): x tiles are
converted to W's dtype in registers, which is what `F.linear(x.to(W.dtype), W)` computes without the
cast kernel. float32 tiles multiply in "ieee" precision (exact fp32 products, as cuBLAS's SGEMM), which Triton runs
on the CUDA cores, not the tensor cores: DeepSeek-V2-Lite's 64 x 2048 fp32 router took 10.6 µs at 64 tokens against
4.8 µs for OLMoE's bf16 gate of the same shape (PDL off, docs/results/2026-12-02-s24, call 2). With bf16 x, `split3`
writes each fp32 weight tile as the sum of three bf16 parts in registers (hi = bf16(w), mid = bf16(w - hi),
lo = bf16(w - hi - mid): 3 x 8 significand bits cover fp32's 24) and runs three bf16 tensor-core dots into the fp32
accumulator. x is bf16, so every product x·part is exact in fp32; the sums are not bit-identical to SGEMM's (their
order differs, as any split of K does, and tensor-core accumulation need not round as IEEE adds do): the tests
bound the error at fp32 rounding. Three parts suffice only because x is already bf16 (cuBLAS's emulated-FP32 modes
split both operands, BF16x9; CUTLASS's 3xTF32 is the same idea). The weight's parts underflow only below bf16's
~1e-38: never for a trained gate.

kernels/tall_gemm.py runs the same kernel for any T over a grid of row blocks: prefill's float32 router as split3.

Shapes: T tokens (rows of x, 1..MAX_T), K the reduction, N outputs (rows of W, nn.Linear layout).
Nothing syncs with the host and the workspace size depends on (T, N, config) only: CUDA-graph safe.
"""

import functools

import torch
import triton
import triton.language as tl

from . import fused_moe_quant as FQ
from .fused_moe_quant import byte_tiles
from .quant_dot import dot_step, epilogue_scale, load_a
from .pdl import launch_args, wait_then_release
from .quant_tiles import layout_args, pointer_args, stride_args

MAX_T = 64
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TARGET_PROGRAMS = 264           # ~2 programs per SM of an H200 (132 SMs): the split is chosen to reach this
SPLIT3_BF16 = True              # a float32 weight with bf16 x as three bf16 parts on the tensor cores (split3)


@triton.jit
def _finish(acc, b_ptr, y_ptr, ws_ptr, cnt_ptr, blk, sp, offs_t, cols, T, N, stride_yt, SPLIT,
            HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store a program's fp32 [BLOCK_M, BLOCK_N] product: directly (+ bias), or, split over K, as partial sp,
    the last of the tile's SPLIT programs adding all of them in order 0..SPLIT-1 (+ bias). blk: the tile's counter
    (its column block, and with tall_gemm's row blocks, row block x column blocks + column block)."""
    t_ok = offs_t < T
    c_ok = cols < N
    y_ptrs = y_ptr + offs_t.to(tl.int64)[:, None] * stride_yt + cols[None, :]
    y_ok = t_ok[:, None] & c_ok[None, :]
    if SPLIT_K:                                              # SPLIT > 1 (a runtime value: one compile)
        ws_tile = ws_ptr + offs_t[:, None] * N + cols[None, :]                # partial sp at ws + sp·T·N
        tl.store(ws_tile + sp * T * N, acc, mask=y_ok)
        tl.debug_barrier()                                   # every thread's partial is out before the count
        arrived = tl.atomic_add(cnt_ptr + blk, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:                             # the last: the others' partials are visible
            tl.store(cnt_ptr + blk, 0)                       # left zeroed for the next call
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for q in range(SPLIT):
                acc += tl.load(ws_tile + q * T * N, mask=y_ok, other=0.0, volatile=True)
            if HAS_BIAS:
                acc += tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, T, N, K, stride_xt, stride_wn, stride_yt, SPLIT,
                   HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr, SPLIT3: tl.constexpr = False):
    wait_then_release(PDL)
    blk = tl.program_id(0)
    sp = tl.program_id(1)
    offs_t = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)         # row blocks: tall_gemm's grid (else one)
    t_ok = offs_t < T
    cols = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = w_ptr + (cols % N).to(tl.int64)[:, None] * stride_wn        # wrap past N: in bounds, never stored
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * stride_xt
    n_k = tl.cdiv(K, BLOCK_K)
    share = tl.cdiv(n_k, SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(sp * share, tl.minimum(n_k, sp * share + share)):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=k_ok[None, :], other=0.0)                  # [BN, BK]
        a = tl.load(x_rows + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        if SPLIT3:   # an fp32 w as three parts of x's 2-byte dtype, smallest first (see the module docstring)
            hi = w.to(a.dtype)
            rest = w - hi.to(tl.float32)
            mid = rest.to(a.dtype)
            lo = (rest - mid.to(tl.float32)).to(a.dtype)
            acc = tl.dot(a, tl.trans(lo), acc)
            acc = tl.dot(a, tl.trans(mid), acc)
            acc = tl.dot(a, tl.trans(hi), acc)
        else:
            acc = tl.dot(a.to(w.dtype), tl.trans(w), acc, input_precision=PRECISION)
    _finish(acc, b_ptr, y_ptr, ws_ptr, cnt_ptr, blk + tl.program_id(2) * tl.num_programs(0), sp, offs_t, cols, T, N,
            stride_yt, SPLIT, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N)


@triton.jit
def _skinny_quant_kernel(x_ptr, w_ptr, s_ptr, z_ptr, c_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, T, N, K, KW, NG,
                         stride_xt, stride_wn, stride_sn, stride_sg, stride_yt, SPLIT,
                         BITS: tl.constexpr, CODES: tl.constexpr, GROUP: tl.constexpr, ROW_BLOCK: tl.constexpr,
                         OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr, PDL: tl.constexpr, BYTES: tl.constexpr = False):
    """The same grid over a quantized weight (qweights' layouts): each B tile is dequantized in registers by
    quant_dot's `dot_step` (fp8 codes converted to x's dtype, integer codes minus their zero point),
    group scales per K step (BLOCK_K = the group), a row scale in the epilogue. Activations stay in x's dtype
    (weight-only numerics: W8A16 / W4A16, fp8 included, as the decode GEMVs)."""
    wait_then_release(PDL)
    blk = tl.program_id(0)
    sp = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_M)
    t_ok = offs_t < T
    cols = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_w = (cols % N).to(tl.int64)                                      # wrap past N: in bounds, never stored
    x_rows = x_ptr + offs_t.to(tl.int64) * stride_xt                       # [BM] row pointers
    n_k = tl.cdiv(K, BLOCK_K)
    share = tl.cdiv(n_k, SPLIT)
    ones = tl.full((BLOCK_M,), 1.0, tl.float32)                           # no activation scales
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(sp * share, tl.minimum(n_k, sp * share + share)):
        k0 = kb * BLOCK_K
        a, a_odd = load_a(x_rows, t_ok, k0, K, BLOCK_K, BITS, CODES, BYTES)                        # [BM, BK]
        acc = dot_step(acc, a, a_odd, w_ptr, s_ptr, z_ptr, c_ptr, cols_w, k0, K, KW, NG, ones, stride_wn, stride_sn,
                       stride_sg, BITS, CODES, GROUP, ROW_BLOCK, OFFSET, HAS_ZERO, BLOCK_K, BLOCK_N, PRECISION, BYTES)
    acc = epilogue_scale(acc, s_ptr, cols_w, ones, stride_sn, BITS, GROUP)
    _finish(acc, b_ptr, y_ptr, ws_ptr, cnt_ptr, blk, sp, offs_t, cols, T, N, stride_yt, SPLIT,
            HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N)


def default_config(T: int, N: int, K: int, w_dtype: torch.dtype, sms: int = 132, bits: int | None = None,
                   group: int = 0) -> dict:
    """Tiles from the shape, as the H200 sweep of the engine's dense shapes ranked them (scripts/bench_skinny.py,
    thirteenth session): 64 columns a program (32 past 16 tokens for layers up to 4096 wide, 128 past 8192), K
    steps of 128 elements (64 for fp32 weights and int8 codes, whose unpacking is lighter in shorter steps; the
    scale group for grouped formats), and a split of K that brings the grid to ~TARGET_PROGRAMS (scaled to the SM
    count) while the fp32 partials it writes and reads back (2·SPLIT·T·4 bytes a column) stay under twice the
    column's weight bytes. bits: a quantized weight's (0 = fp8), None for a float weight of w_dtype."""
    block_n = 128 if N > 8192 else 32 if (T > 16 and N <= 4096) else 64
    block_k = group or (64 if (bits == 8 or (bits is None and w_dtype == torch.float32)) else 128)
    col_bytes = K * (w_dtype.itemsize if bits is None else 0.5 if bits == 4 else 1)
    n_blocks, n_k = triton.cdiv(N, block_n), triton.cdiv(K, block_k)
    target = TARGET_PROGRAMS * sms // 132
    split = max(1, min(n_k, round(target / n_blocks), 16, int(col_bytes // (4 * T))))
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT": split, "num_warps": 4,
            "num_stages": 4 if bits == 8 else 3}


COUNTERS = 8192                 # split tiles (column blocks; tall_gemm: x row blocks) a call may have and still
                                # use the device's persistent counters
_counters: dict[torch.device, torch.Tensor] = {}


def _counters_for(device: torch.device, n_blocks: int) -> torch.Tensor:
    """Zeroed int32 counters [>= n_blocks]. The kernel's last program of each split tile sets its counter
    back to 0, so one buffer a device, zeroed once, serves every call (no memset a layer); calls on one
    stream never overlap (a PDL launch waits in gdc_wait for its predecessor before touching them). A call
    being captured before the buffer exists, or with more blocks, gets its own zeroed counters."""
    buf = _counters.get(device)
    if buf is None and device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        buf = _counters[device] = torch.zeros(COUNTERS, device=device, dtype=torch.int32)
    if buf is None or n_blocks > buf.numel():
        return torch.zeros(n_blocks, device=device, dtype=torch.int32)
    return buf


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def usable(T: int, weight: torch.Tensor, x_dtype: torch.dtype | None = None) -> bool:
    """Whether skinny_gemm takes x [T, K] @ weightᵀ: 1 <= T <= MAX_T, a 2-D weight with unit last stride,
    float dtypes, and x of the weight's dtype or a float32 weight (x's tiles are converted to it in registers:
    exact, where bf16 -> fp16 could overflow)."""
    x_dtype = x_dtype or weight.dtype
    return (1 <= T <= MAX_T and weight.dim() == 2 and weight.stride(-1) == 1 and weight.dtype in _DTYPES
            and x_dtype in _DTYPES and (x_dtype == weight.dtype or weight.dtype == torch.float32))


def _bias_arg(bias: torch.Tensor | None, N: int, device) -> torch.Tensor | None:
    if bias is None:
        return None
    if bias.shape != (N,) or bias.device != device:
        raise ValueError(f"the bias must be [{N}] on {device}; got {tuple(bias.shape)} on {bias.device}")
    return bias.contiguous()


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                out_dtype: torch.dtype | None = None, config: dict | None = None, pdl: bool = False,
                split3: bool | None = None) -> torch.Tensor:
    """y [T, N] = x [T, K] @ weight [N, K]ᵀ (+ bias [N], added in fp32) with fp32 accumulation, in out_dtype
    (default: the weight's dtype, as `F.linear(x.to(weight.dtype), weight, bias)`). x is 2-D with a unit last
    stride, 1 <= T <= MAX_T, in the weight's dtype (or any float dtype for a float32 weight). config overrides
    default_config's keys (BLOCK_N, BLOCK_K, SPLIT, num_warps, num_stages). split3 (a float32 weight and 2-byte x
    only): the weight's tiles as three parts of x's dtype on the tensor cores (module docstring); None takes it
    for bf16 x where SPLIT3_BF16 is on (fp16's narrow exponent would drop a small weight's low parts, and |w| > 65504
    overflows). On a GPU the split's counters are one buffer a device (`_counters_for`): calls must not run
    concurrently on two streams. Raises ValueError where `usable` says no (T = 0 included), for a K mismatch, a
    bias that is not [N] on x's device, or split3 without a float32 weight and 2-byte x."""
    if x.dim() != 2:
        raise ValueError(f"skinny_gemm takes a 2-D x [T, K]; got {tuple(x.shape)}")
    T, K = x.shape
    N = weight.shape[0]
    if not usable(T, weight, x.dtype) or weight.shape[1] != K or x.stride(-1) != 1:
        raise ValueError(f"skinny_gemm takes x [1..{MAX_T}, K] (unit last stride) and a float weight [N, K] at "
                         f"least as wide as x; got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
                         f"{weight.dtype}")
    bias = _bias_arg(bias, N, x.device)
    sms = _sm_count(x.device.index or 0) if x.is_cuda else 132
    cfg = dict(default_config(T, N, K, weight.dtype, sms), **(config or {}))
    y = torch.empty(T, N, device=x.device, dtype=out_dtype or weight.dtype)
    split = int(cfg["SPLIT"])
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    if split > 1:                     # partials [SPLIT, T, N] fp32 (never zeroed), counters [n_blocks] zeroed
        ws = torch.empty(split * T * N, device=x.device, dtype=torch.float32)
        cnt = _counters_for(x.device, n_blocks)
    else:
        ws = cnt = y
    has_bias = bias is not None
    precision = "ieee" if weight.dtype == torch.float32 else "tf32"
    if split3 is None:
        split3 = SPLIT3_BF16 and weight.dtype == torch.float32 and x.dtype == torch.bfloat16
    if split3 and not (weight.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16)):
        raise ValueError(f"split3 takes a float32 weight and bf16 / fp16 x; got {weight.dtype} and {x.dtype}")
    _skinny_kernel[(n_blocks, split)](
        x, weight, bias if has_bias else y, y, ws, cnt, T, N, K, x.stride(0), weight.stride(0), y.stride(0), split,
        HAS_BIAS=has_bias, SPLIT_K=split > 1, BLOCK_M=max(16, triton.next_power_of_2(T)), BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        SPLIT3=bool(split3), **launch_args(pdl))
    return y


def quant_usable(T: int, w, x_dtype: torch.dtype) -> bool:
    """Whether skinny_gemm_quant takes x [T, K] @ w (a qweights.QuantMatrix [N, K], one stack): minimoe's own
    codes (fp8, int8, int4, with or without zero points; not bitsandbytes' storage), scale groups of a power
    of two >= 16 (each K step is one group), 1 <= T <= MAX_T, float activations."""
    g = w.group
    return (1 <= T <= MAX_T and w.codes == 0 and w.bits in (0, 4, 8) and x_dtype in _DTYPES
            and (g == 0 or (g >= 16 and g & (g - 1) == 0)) and w.data3.shape[0] == 1)


def skinny_gemm_quant(x: torch.Tensor, w, bias: torch.Tensor | None = None, *, config: dict | None = None,
                      pdl: bool = False) -> torch.Tensor:
    """y [T, N] = x [T, K] @ dequant(w)ᵀ (+ bias [N]) in x.dtype, w a dense layer's quantized weight
    (qweights.QuantWeight: fp8 e4m3 per row or per 128 x 128 block, int8 per row, int4 per group, zero
    points optional); the activations are not quantized (weight-only numerics at every format, as the
    decode GEMVs). config overrides default_config's keys; a grouped format's BLOCK_K is its group. The bias
    ([N] on x's device) is added in fp32. Raises ValueError where `quant_usable` says no (T = 0 included), for
    a K mismatch or a bad bias."""
    if x.dim() != 2:
        raise ValueError(f"skinny_gemm_quant takes a 2-D x [T, K]; got {tuple(x.shape)}")
    T, K = x.shape
    N = w.stack_shape[1]
    if not quant_usable(T, w, x.dtype) or w.K != K or x.stride(-1) != 1:
        raise ValueError(f"skinny_gemm_quant takes x [1..{MAX_T}, K] (unit last stride, float) and one fp8 / int8 / "
                         f"int4 matrix [N, K] with groups of a power of two >= 16; got x {tuple(x.shape)} {x.dtype}, "
                         f"{w.describe() if hasattr(w, 'describe') else type(w).__name__} {tuple(w.stack_shape)}")
    bias = _bias_arg(bias, N, x.device)
    sms = _sm_count(x.device.index or 0) if x.is_cuda else 132
    cfg = dict(default_config(T, N, K, x.dtype, sms, bits=w.bits, group=w.group), **(config or {}))
    if w.group:
        cfg["BLOCK_K"] = w.group
    y = torch.empty(T, N, device=x.device, dtype=x.dtype)
    split = int(cfg["SPLIT"])
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    if split > 1:
        ws = torch.empty(split * T * N, device=x.device, dtype=torch.float32)
        cnt = _counters_for(x.device, n_blocks)
    else:
        ws = cnt = y
    data, scale, zero, code, _, kw, ng = pointer_args(w)
    _, stride_wn, _, stride_sn, stride_sg = stride_args(w)
    has_bias = bias is not None
    _skinny_quant_kernel[(n_blocks, split)](
        x, data, scale, zero, code, bias if has_bias else y, y, ws, cnt, T, N, K, kw, ng,
        x.stride(0), stride_wn, stride_sn, stride_sg, y.stride(0), split, **layout_args(w),
        HAS_BIAS=has_bias, SPLIT_K=split > 1, BLOCK_M=max(16, triton.next_power_of_2(T)), BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BYTES=byte_tiles(w, cfg["BLOCK_K"], max(16, triton.next_power_of_2(T)), FQ.SKINNY_BIASED_MAX_M),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    return y
