"""The skinny GEMM's kernel over row blocks, for any number of rows: prefill's float32 router on the tensor cores.

Shape legend: T rows of x (tokens), K the reduction, N outputs (rows of W, nn.Linear layout); BLOCK_M x BLOCK_N tiles.

kernels/skinny_gemm.py computes x [T <= 64, K] @ Wᵀ with each program holding all T rows and K split to fill the GPU;
an fp32 weight with bf16 x runs as three bf16 parts on the tensor cores (`split3`, exact products in fp32). A prefill
has thousands of rows: here the same kernel runs over a grid (column blocks, K splits, row blocks), and K is split
only when that grid is small (a batch-1 prefill of 128 tokens has 2 row blocks of 64 for DeepSeek's 64-expert gate).
Split partials go to an fp32 workspace [SPLIT, T, N]; each (row block, column block) tile's last program, counted on
skinny_gemm's persistent counters, adds them in order. No host sync, shapes-only grids: CUDA-graph safe.
Reference: CUTLASS's split-K serial reduction; cuBLAS's emulated-FP32 (BF16x9) for the split3 idea.
"""
import torch
import triton

from . import skinny_gemm as _sk
from .pdl import launch_args

# tall_gemm's tiles (split3): 64 rows x 64 columns a program over K steps of 64 (K split below TALL_SPLIT_BELOW
# programs). In DeepSeek-V2-Lite's graphed prefill of 8,192 tokens it beat F.linear(x.float(), W) by 1.8%
# (docs/results/2026-12-02-s25, call 4); 128-row blocks at 4 or 8 warps, 32-row blocks and 128-wide K steps were
# within +0.5% of it, none faster beyond noise (call 5). With the split (2026-12-03-s26, call 4): F.linear +0.63% at a
# 128-token prefill, +1.80% at 16 x 128 tokens.
TALL_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
# Below TALL_SPLIT_BELOW programs (few row blocks: a batch-1 prefill of 128 tokens has 2), K is split so that the grid
# reaches ~TARGET_PROGRAMS (at most 16 ways): without it each of the 2 programs walks the whole 512 KB gate, 42.7 µs
# a DeepSeek-V2-Lite layer (docs/results/2026-12-03-s26, call 3's profile). 0: never split.
TALL_SPLIT_BELOW = 64


def tall_split(T: int, N: int, K: int, cfg: dict) -> int:
    """The K split of tall_gemm for these shapes and tiles: 1 from TALL_SPLIT_BELOW programs up."""
    programs = triton.cdiv(T, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    if programs >= TALL_SPLIT_BELOW:
        return 1
    n_k = triton.cdiv(K, cfg["BLOCK_K"])
    split = max(1, min(n_k, triton.cdiv(_sk.TARGET_PROGRAMS, programs), 16))
    return triton.cdiv(n_k, triton.cdiv(n_k, split))          # no share left empty (32 K steps: 9 ways -> 8)


def tall_gemm(x: torch.Tensor, weight: torch.Tensor, *, out_dtype: torch.dtype | None = None,
              config: dict | None = None, pdl: bool = False, split3: bool = True) -> torch.Tensor:
    """y [T, N] = x [T, K] @ weight [N, K]ᵀ for any T >= 1: the skinny kernel over a grid of BLOCK_M-row blocks x
    BLOCK_N-column blocks, each program over all of K, or, for grids of fewer than TALL_SPLIT_BELOW programs, over
    1 / SPLIT of it (`tall_split`; config "SPLIT" overrides), the tile's last program adding the partials in order
    (so how many rows share a call, through the split, decides the fp32 summation order, hence the rounding). For
    prefill's float32 router with bf16 x (DeepSeek's), where F.linear(x.float(), W) runs a cast kernel of x and an
    SGEMM on the CUDA cores (58 µs a layer at 8,192 tokens); split3 (default) runs it as three bf16 parts on the tensor cores, with the rounding described in
    kernels/skinny_gemm.py's docstring (with fp16 x the parts are fp16, whose narrow exponent drops a tiny weight's low parts:
    `skinny_gemm` takes split3 for bf16 only by default). x [T, K] 2-D with unit last stride; weight [N, K] float32
    (or x's dtype, split3 False) with unit last stride, on x's device; y in out_dtype (default: the weight's).
    config overrides TALL_CONFIG. Raises ValueError for x not 2-D, T = 0, or more than 65,535 row blocks (the grid's
    third axis), a weight of another K, layout or device, or split3 without a float32 weight and 2-byte x."""
    if x.dim() != 2 or x.shape[0] == 0 or x.stride(-1) != 1 or weight.dim() != 2 or weight.shape[1] != x.shape[1] \
            or weight.stride(-1) != 1 or weight.device != x.device:
        raise ValueError(f"tall_gemm takes x [T >= 1, K] (unit last stride) and a weight [N, K] (unit last stride) "
                         f"on x's device; got x {tuple(x.shape)}, weight {tuple(weight.shape)} "
                         f"{tuple(weight.stride())} on {weight.device}")
    if split3 and not (weight.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16)):
        raise ValueError(f"split3 takes a float32 weight and bf16 / fp16 x; got {weight.dtype} and {x.dtype}")
    if not split3 and not _sk.usable(1, weight, x.dtype):
        raise ValueError(f"tall_gemm takes a float weight as wide as x; got {weight.dtype} and {x.dtype}")
    T, K = x.shape
    N = weight.shape[0]
    cfg = dict(TALL_CONFIG, **(config or {}))
    if triton.cdiv(T, cfg["BLOCK_M"]) > 65535:
        raise ValueError(f"tall_gemm: {T} rows are more than 65,535 row blocks of {cfg['BLOCK_M']}")
    y = torch.empty(T, N, device=x.device, dtype=out_dtype or weight.dtype)
    split = int(cfg.get("SPLIT") or tall_split(T, N, K, cfg))
    if split > 1 and split * T * N >= 2 ** 31:
        raise ValueError(f"tall_gemm: a {split}-way split of [{T}, {N}] needs int64 workspace offsets")
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), split, triton.cdiv(T, cfg["BLOCK_M"]))
    if split > 1:                     # partials [SPLIT, T, N] fp32, a counter a (row block, column block) tile
        ws = torch.empty(split * T * N, device=x.device, dtype=torch.float32)
        cnt = _sk._counters_for(x.device, grid[0] * grid[2])
    else:
        ws = cnt = y
    _sk._skinny_kernel[grid](
        x, weight, y, y, ws, cnt, T, N, K, x.stride(0), weight.stride(0), y.stride(0), split,
        HAS_BIAS=False, SPLIT_K=split > 1, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        PRECISION="ieee" if weight.dtype == torch.float32 else "tf32", num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], SPLIT3=bool(split3), **launch_args(pdl))
    return y
