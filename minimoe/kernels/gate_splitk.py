"""Router GEMV split along D over at most one wave of programs, then top-k routing: large gates at decode.

At decode an MoE layer's router is logits = h Wgateᵀ, h [T, D] with T = 1..16 and a gate [E, D] of
256-512 KB (OLMoE 64 x 2048 bf16, Qwen3-30B 128 x 2048 bf16, DeepSeek-V2-Lite 64 x 2048 fp32).
Reading 256 KB at the H200's ~4.25 TB/s takes 0.06 µs; what costs is latency. cuBLAS tiles the
[T, E] output 64 experts at a time, so it runs 1-2 CTAs that each walk all of D: ~5 µs measured, on
1-2 of 132 SMs. norm_route.py's `gate_route` (one program per token streams the whole gate) has the
same problem, and wins only for gates <= 64 KB. Here the gate is cut into [BLOCK_E, BLOCK_D] tiles
(16 x 256 = 8 KB of bf16 in the fold and, unfolded, on 2-byte gates of >= WIDE_GATE_E experts; 8 x 128 elsewhere:
`gate_tiles`) and the D axis is split into KSPLIT ranges, so that
    grid = (E tiles, KSPLIT, token blocks)  <=  one wave of ~132 programs at T = 1,
each program reading its tile of gate once and using it for every token of its block:

  kernel 1 (`_gate_partial_kernel`), program (i, s, b):
      part[s, t, e] = sum over d in split s of h[t, d] * gate[e, d]     (fp32, e in tile i, t in block b)
      Split s owns D tiles [s n / S, (s + 1) n / S) of the n = cdiv(D, BLOCK_D): S need not divide n,
      no split is empty (S <= n), and sizes differ by at most one tile.
  kernel 2 (`_reduce_route_kernel`), program t:
      logits[t] = sum over s = 0..S-1 of part[s, t, :]  in a fixed order: deterministic, no atomics
      w, ids    = route.py's `_topk_weights` on logits[t] rounded to the gate's dtype (with its
                  dynamic skipping when `skip` > 0)

The partials round-trip through a [KSPLIT, T, E] fp32 workspace (L2-resident). Two launches with shapes-only
grids and no host syncs: CUDA-graph safe; with `pdl` the second launches while the first drains (kernels/pdl.py).

Kernel 1 also carries the fold, the layer's whole entry in ONE launch (its NORM and ROUTE options): its launcher,
`norm_gate_route_splitk`, is gate_splitk_fold.py's, and reads this module's tiles and knobs at call time.

The roundings are `minimoe.ops.gate_route_torch`'s (the tests check them against it):
  h       = h rounded to the gate's dtype, as the engine feeds h.to(gate dtype) to the gate
  logits  = h · gate[e] accumulated in fp32 (per split, then over the splits), rounded to the gate's dtype
            (nn.Linear returns gate-dtype logits; only then does the router upcast)
  w, ids  = route.py's top-k on float32 logits (softmax first or not, renorm, scaling, ties to the
            lowest index, slots in descending weight, then dynamic skipping if `skip` > 0)
Only the fp32 summation order differs from cuBLAS's, so a logit may round one gate-dtype ulp the
other way (the same allowance as norm_route.py).

Scope (`usable`): the "softmax_topk" and "topk_softmax" routers without a selection bias (as for
route.py), E <= MAX_EXPERTS, any D, T <= MAX_T (the kernel takes more tokens, in blocks of 16 that
each re-read the gate from L2, but is benchmarked only up to 16), fp32/fp16/bf16 gate and activations.
Tiles (`gate_tiles`), from the graphed bs-1 step on the H200 (s21, scripts/step_probe.py; docs/perf_notes.md): the fold
with a 2-byte gate takes 16 x 256 and PREFETCH_GATE (Qwen3-30B-A3B's step -3.25%, OLMoE's -0.88% against 8 x 128):
fewer arrivals at its counter, and the gate's first bytes overlap the previous kernel's drain.
Idea: CUTLASS's "parallel split-K" GEMM (gemm_splitk_parallel.h), slices' partials reduced by a second kernel;
here that kernel is route.py's top-k, which has to read the logits anyway.

Shapes: T tokens, D hidden size, E experts, K experts per token, S = KSPLIT splits of D.
"""

import functools

import torch
import triton
import triton.language as tl

from .pdl import launch_args, prefetch_l2_lanes, wait_then_release
from .route import MAX_EXPERTS, _topk_weights, topk_rank

MAX_T = 16          # the decode sizes it is meant (and benchmarked) for; see `usable`
TOKEN_BLOCK = 16    # tokens per program: each gate tile is loaded once and used for all of them
# [gate rows, gate columns] a tile, read at call time by `gate_tiles`: the fold with a 2-byte gate (s21 step probe)
BLOCK_E, BLOCK_D = 16, 256
# the rest keeps the pre-s21 tile: fp32 gates (16 x 256 + prefetch: +0.31% / +0.86% a DeepSeek-V2-Lite step at bs 1 / 8)
# and the unfolded gate_route_splitk (bs 2-4) on gates of fewer than WIDE_GATE_E experts
BLOCK_E_OTHER, BLOCK_D_OTHER = 8, 128
# unfolded, 2-byte gates of >= WIDE_GATE_E experts take BLOCK_E x BLOCK_D (s22 step probe: Qwen3-30B-A3B -1.2% a bs-2 / 4
# step; OLMoE, Mixtral, Qwen1.5-MoE within +-0.2%: 8 x 128)
WIDE_GATE_E = 128
REDUCE_ELEMS = 1024  # partials per load in kernel 2: 32 fp32 values per thread of its one warp
MAX_ROW = 8192      # norm_gate_route_splitk holds one token's whole row in registers for 1 / rms
# In-step knobs (scripts/step_probe.py flips them; the twentieth session's profile with PDL off put the norm + router
# fold at 6.5 µs a Qwen3-30B-A3B layer for 0.5 MB of gate, the largest latency beside the GEMVs):
WAVE_PROGRAMS = None  # programs default_splits fills (None: the SM count); fewer splits = fewer arrivals to count
PREFETCH_GATE = True  # norm_gate_route_splitk with PDL: ask the L2 for each program's gate rows before gdc_wait
PREFETCH_GATE_FP32 = False  # the same for an fp32 gate (its measured configuration, 8 x 128, had none)
# The fold's gate tile loaded before its 1 / rms row reduction where every split holds exactly one D tile (Qwen3-30B-
# A3B's 16 x 256 tiles: 8 splits of 8 tiles): the tile's load and the row's then share one L2 round trip instead of
# waiting one after the other. In the graphed bs-1 step of Qwen3-30B-A3B (docs/results/2026-12-04-s32, call 4) it was
# no faster: off -0.31% against a repeated baseline at -0.20% (probably because the prefetched tile is an L2 hit
# either way; not profiled). Off.
HOIST_TILE = False
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _reduce_route(part_ptr, gate_ptr, w_ptr, ids_ptr, t, T, E, KSPLIT, scaling, skip,
                  K: tl.constexpr, E_P2: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
                  SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, VOLATILE: tl.constexpr,
                  RANK: tl.constexpr = False):
    """Token t: logits = the KSPLIT partial rows summed in a fixed order, then top-k into w / ids."""
    offs_e = tl.arange(0, E_P2)
    rows = tl.arange(0, BLOCK_S)
    logits = tl.zeros([E_P2], tl.float32)
    for s0 in range(0, KSPLIT, BLOCK_S):  # BLOCK_S splits per load, summed; chunks in order
        s = s0 + rows
        ok = (s < KSPLIT)[:, None] & (offs_e < E)[None, :]
        p = tl.load(part_ptr + (s.to(tl.int64)[:, None] * T + t) * E + offs_e[None, :], mask=ok, other=0.0,
                    volatile=VOLATILE)
        logits += tl.sum(p, axis=0)
    logits = logits.to(gate_ptr.dtype.element_ty).to(tl.float32)  # nn.Linear's gate-dtype logits
    w, ids = _topk_weights(logits, E, scaling, skip, K, E_P2, BLOCK_K, SOFTMAX_FIRST, RENORM, RANK)
    slots = tl.arange(0, BLOCK_K)
    tl.store(w_ptr + t * K + slots, w, mask=slots < K)
    tl.store(ids_ptr + t * K + slots, ids.to(tl.int64), mask=slots < K)


@triton.jit
def _reduce_route_kernel(
    part_ptr, gate_ptr, w_ptr, ids_ptr, T, E, KSPLIT, scaling, skip,
    K: tl.constexpr, E_P2: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, PDL: tl.constexpr, RANK: tl.constexpr = False,
):
    """Token program_id(0): logits = the KSPLIT partial rows summed in a fixed order, then top-k."""
    wait_then_release(PDL)
    _reduce_route(part_ptr, gate_ptr, w_ptr, ids_ptr, tl.program_id(0).to(tl.int64), T, E, KSPLIT, scaling, skip,
                  K, E_P2, BLOCK_S, BLOCK_K, SOFTMAX_FIRST, RENORM, False, RANK)


@triton.jit
def _gate_partial_kernel(
    h_ptr, gate_ptr, part_ptr, T, E, D, stride_h, stride_g, n_tiles, KSPLIT,
    res_ptr, norm_ptr, hout_ptr, res_out_ptr, stride_r, eps, cnt_ptr, w_ptr, ids_ptr, scaling, skip,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
    NORM: tl.constexpr = False, HAS_RESIDUAL: tl.constexpr = False, BLOCK_ROW: tl.constexpr = 16,
    ROUTE: tl.constexpr = False, K: tl.constexpr = 1, E_P2: tl.constexpr = 1, BLOCK_S: tl.constexpr = 1,
    BLOCK_K: tl.constexpr = 1, SOFTMAX_FIRST: tl.constexpr = True, RENORM: tl.constexpr = False,
    PREFETCH: tl.constexpr = False, ELT_BYTES: tl.constexpr = 2, HOIST: tl.constexpr = False,
    RANK: tl.constexpr = False,
):
    """part[s, t, e] for e in tile program_id(0), split s = program_id(1), t in block program_id(2).

    NORM (the layer's entry in one launch, `norm_gate_route_splitk`): h_ptr holds the sublayer output x;
    every program first reduces each of its tokens' whole row s = x + residual (HAS_RESIDUAL) for
    1 / rms (a few KB from L2), normalises its own D tiles as rmsnorm.py rounds them, and the E-tile-0
    programs store h and s. ROUTE: the last program of token block b to finish (an arrival counter in
    cnt_ptr, left zeroed) sums the partials in split order and routes (`_reduce_route`).
    PREFETCH (launched with PDL, D a multiple of BLOCK_D, 16-byte rows): before waiting for the previous kernel,
    ask the L2 for this program's gate rows (a hint; the gate does not depend on that kernel, pdl.py).
    HOIST (every split exactly one D tile): that tile is loaded before NORM's row reduction, not after it."""
    s = tl.program_id(1)
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    t0 = tl.program_id(2) * BLOCK_T
    slot_t = tl.arange(0, BLOCK_T)
    e_ok = offs_e < E
    g_rows = gate_ptr + offs_e.to(tl.int64)[:, None] * stride_g
    # split s's D tiles: [s n / S, (s + 1) n / S), a balanced partition (never empty when S <= n)
    first = s * n_tiles // KSPLIT
    last = (s + 1) * n_tiles // KSPLIT
    if PREFETCH:     # rows past E re-ask for an existing row: every address stays inside the gate
        nbytes = ((last - first) * (BLOCK_D * ELT_BYTES)).to(tl.int32)
        prefetch_l2_lanes(gate_ptr + (offs_e % E).to(tl.int64) * stride_g + first * BLOCK_D,
                          tl.full((BLOCK_E,), 0, tl.int32) + nbytes, tl.full((BLOCK_E,), BLOCK_E, tl.int32))
    wait_then_release(PDL)
    x_t = h_ptr.dtype.element_ty
    if HOIST:        # the split's one tile, in flight while the row below is reduced
        offs_h = first * BLOCK_D + tl.arange(0, BLOCK_D)
        g_hoisted = tl.load(g_rows + offs_h[None, :], mask=e_ok[:, None] & (offs_h < D)[None, :], other=0.0)
    inv = tl.zeros([BLOCK_T], tl.float32)            # NORM: 1 / rms of each token's s, as rmsnorm.py
    if NORM:
        offs_row = tl.arange(0, BLOCK_ROW)
        for i in tl.static_range(BLOCK_T):
            t = (t0 + i).to(tl.int64)
            row_ok = offs_row < tl.where(t < T, D, 0)
            row = tl.load(h_ptr + t * stride_h + offs_row, mask=row_ok, other=0.0)
            if HAS_RESIDUAL:
                row = (row.to(tl.float32)
                       + tl.load(res_ptr + t * stride_r + offs_row, mask=row_ok, other=0.0).to(tl.float32)).to(x_t)
            rf = row.to(tl.float32)
            inv += tl.where(slot_t == i, tl.rsqrt(tl.sum(rf * rf, axis=0) / D + eps), 0.0)
    acc = tl.zeros([BLOCK_T, BLOCK_E], tl.float32)
    for j in range(first, last):
        offs_d = j * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        if HOIST:
            g = g_hoisted.to(tl.float32)
        else:
            g = tl.load(g_rows + offs_d[None, :], mask=e_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        if NORM:
            nw = tl.load(norm_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        # the tile stays in registers for every token of the block (h rows are tiny: L1/L2 hits)
        for i2 in tl.static_range(BLOCK_T):
            tt = (t0 + i2).to(tl.int64)
            live = offs_d < tl.where(tt < T, D, 0)  # a padding token (t >= T) loads nothing
            h = tl.load(h_ptr + tt * stride_h + offs_d, mask=live, other=0.0)
            if NORM:
                if HAS_RESIDUAL:
                    h = (h.to(tl.float32)
                         + tl.load(res_ptr + tt * stride_r + offs_d, mask=live, other=0.0).to(tl.float32)).to(x_t)
                    if tl.program_id(0) == 0:
                        tl.store(res_out_ptr + tt * D + offs_d, h, mask=live)
                inv_i = tl.sum(tl.where(slot_t == i2, inv, 0.0), axis=0)
                normed = (h.to(tl.float32) * inv_i).to(x_t).to(tl.float32)   # rounded before the weight
                h = (nw * normed).to(hout_ptr.dtype.element_ty)
                if tl.program_id(0) == 0:
                    tl.store(hout_ptr + tt * D + offs_d, h, mask=live)
            h = h.to(gate_ptr.dtype.element_ty).to(tl.float32)  # the engine feeds h.to(gate dtype)
            part = tl.sum(g * h[None, :], axis=1)  # [BLOCK_E], fp32
            acc += tl.where(slot_t[:, None] == i2, part[None, :], 0.0)
    offs_t = t0 + slot_t
    out = part_ptr + (s.to(tl.int64) * T + offs_t[:, None]) * E + offs_e[None, :]
    tl.store(out, acc, mask=(offs_t < T)[:, None] & e_ok[None, :])
    if ROUTE:
        tl.debug_barrier()                               # every thread's partial is out before the count
        cnt = cnt_ptr + tl.program_id(2)
        if tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu") == tl.num_programs(0) * KSPLIT - 1:
            tl.store(cnt, 0)                             # the last of this token block: reset, then route
            for i3 in tl.static_range(BLOCK_T):
                if t0 + i3 < T:
                    _reduce_route(part_ptr, gate_ptr, w_ptr, ids_ptr, (t0 + i3).to(tl.int64), T, E, KSPLIT,
                                  scaling, skip, K, E_P2, BLOCK_S, BLOCK_K, SOFTMAX_FIRST, RENORM, True, RANK)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # H200; only the interpreter gets here, where the grid is just a test knob
    return torch.cuda.get_device_properties(device).multi_processor_count


def gate_tiles(gate_dtype: torch.dtype, fold: bool, E: int = 0) -> tuple[int, int, bool]:
    """(BLOCK_E, BLOCK_D, prefetch allowed) for a gate [E, D] of this dtype in the fold (`norm_gate_route_splitk`,
    fold=True) or in `gate_route_splitk` (the prefetch is the fold's only; E >= WIDE_GATE_E takes the fold's tile):
    the module knobs, read at call time."""
    if gate_dtype == torch.float32:
        return BLOCK_E_OTHER, BLOCK_D_OTHER, fold and PREFETCH_GATE_FP32
    if fold:
        return BLOCK_E, BLOCK_D, PREFETCH_GATE
    if E >= WIDE_GATE_E:
        return BLOCK_E, BLOCK_D, False
    return BLOCK_E_OTHER, BLOCK_D_OTHER, False


def default_splits(T: int, E: int, D: int, sms: int = 132, block_d: int | None = None,
                   block_e: int | None = None) -> int:
    """KSPLIT from shapes: the most splits, at a whole number of D tiles each, whose grid still fits
    one wave of `sms` programs. With n = cdiv(D, block_d) tiles and P = E tiles x token blocks:
    the smallest tiles-per-split q with P * cdiv(n, q) <= sms, then S = cdiv(n, q) (so every split
    does q or q - 1 tiles). block_d / block_e: the tile (None: BLOCK_D / BLOCK_E, read at call time). With the
    fold's 16 x 256 tiles, OLMoE (E 64, D 2048): 4 x 8 = 32 programs, one tile each; Qwen3-30B (E 128): 8 x 8;
    Mixtral (E 8, D 4096): 1 x 16. At 8 x 128 (fp32 gates, smaller unfolded ones), E 64: 8 x 16 = 128. At least 1."""
    block_d = block_d or BLOCK_D
    block_e = block_e or BLOCK_E
    n = triton.cdiv(D, block_d)
    programs = triton.cdiv(E, block_e) * triton.cdiv(T, TOKEN_BLOCK)
    for q in range(1, n + 1):
        if programs * triton.cdiv(n, q) <= sms:
            return triton.cdiv(n, q)
    return 1


def gate_route_splitk(h: torch.Tensor, gate_weight: torch.Tensor, k: int, *, renorm: bool, scaling: float = 1.0,
                      softmax_first: bool = True, skip: float = 0.0, pdl: bool = False,
                      splits: int | None = None, block_d: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K router GEMV + top-k: h [T, D] (normed, any float dtype) -> (weights [T, K] float32,
    ids [T, K] int64), exactly `minimoe.ops.gate_route_torch`'s contract and roundings (skip = beta
    of dynamic expert skipping, 0 = off: a skipped slot has weight 0 and id -1).

    splits: how many ranges D is cut into (KSPLIT), default `default_splits`; clamped to the
    number of D tiles. block_d: D columns per gate tile (a power of two >= 16; default `gate_tiles`' (BLOCK_D_OTHER),
    or D rounded up to a power of two when narrower). Both only move speed (and the fp32 summation
    order); they are knobs for the benchmark and tests.
    No host syncs: safe inside a CUDA graph.
    """
    T, D = h.shape
    E = gate_weight.shape[0]
    assert 1 <= k <= E <= MAX_EXPERTS, (k, E)
    assert gate_weight.shape == (E, D) and gate_weight.stride(1) == 1, (gate_weight.shape, D)
    assert h.stride(-1) == 1 and h.dtype in _DTYPES and gate_weight.dtype in _DTYPES, (h.dtype, gate_weight.dtype)
    w = torch.empty(T, k, dtype=torch.float32, device=h.device)
    ids = torch.empty(T, k, dtype=torch.int64, device=h.device)
    if T == 0:
        return w, ids
    tile_e, tile_d, _ = gate_tiles(gate_weight.dtype, fold=False, E=E)
    block_d = block_d or min(tile_d, max(triton.next_power_of_2(D), 16))
    assert block_d >= 16 and block_d & (block_d - 1) == 0, f"block_d must be a power of two >= 16: {block_d}"
    n_tiles = triton.cdiv(D, block_d)
    block_e = min(tile_e, triton.next_power_of_2(E))
    if splits is None:
        splits = default_splits(T, E, D, WAVE_PROGRAMS or _sm_count(h.device), block_d, block_e)
    splits = max(1, min(int(splits), n_tiles))
    part = torch.empty(splits, T, E, dtype=torch.float32, device=h.device)  # every entry is written
    block_t = min(triton.next_power_of_2(T), TOKEN_BLOCK)
    _gate_partial_kernel[(triton.cdiv(E, block_e), splits, triton.cdiv(T, block_t))](
        h, gate_weight, part, T, E, D, h.stride(0), gate_weight.stride(0), n_tiles, splits,
        h, h, h, h, 0, 0.0, h, h, h, 0.0, 0.0,               # the norm and routing arguments: never read
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_D=block_d,
        num_warps=max(1, min(4, block_e * block_d // 256)),  # 8 x 128: 4 warps, 8 values each (16 x 256: 32)
        **launch_args(pdl),
    )
    e_p2 = triton.next_power_of_2(E)
    _reduce_route_kernel[(T,)](
        part, gate_weight, w, ids, T, E, splits, float(scaling), float(skip),
        K=k, E_P2=e_p2, BLOCK_S=min(max(REDUCE_ELEMS // e_p2, 1), triton.next_power_of_2(splits)),
        BLOCK_K=triton.next_power_of_2(k), SOFTMAX_FIRST=softmax_first, RENORM=renorm, RANK=topk_rank(e_p2, 1),
        num_warps=1,  # as route.py: one warp reduces the [E] row with shuffles, no shared memory
        **launch_args(pdl),
    )
    return w, ids


def usable(T: int, E: int, D: int, gate_dtype: torch.dtype, x_dtype: torch.dtype) -> bool:
    """Whether `gate_route_splitk` computes this router (a "softmax_topk" or "topk_softmax" one
    without selection bias: the caller checks that) exactly as `gate_route_torch` does, at the
    decode sizes it is built for. Which of it, norm_route's `gate_route` and cuBLAS + route_topk is
    fastest per shape is scripts/bench_router.py's question, not this one's."""
    return (1 <= T <= MAX_T and 1 <= E <= MAX_EXPERTS and D >= 1
            and gate_dtype in _DTYPES and x_dtype in _DTYPES)
