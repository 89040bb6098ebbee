"""Split-K ("flash-decoding") attention for one new query token per sequence.

At decode time each sequence adds one query token, so attention is a matrix-vector product against
the whole KV cache: almost no arithmetic per byte, and the time is the time to stream the filled
part of the cache from HBM once. Two things decide whether we get there:

1. **Read each K/V byte once.** With grouped-query attention (GQA) the G = H / Hkv query heads of a
   kv head share its cache, so one program loads a K/V tile and multiplies it by all G query rows
   (a [G, Dk] x [Dk, BLOCK_N] `tl.dot`), instead of G programs each re-reading it. DeepSeek's
   absorbed MLA is the extreme case: Hkv = 1, G = 16..128, and V is a prefix view of K's latent.
2. **Fill the GPU when B * Hkv is small.** One program per (sequence, kv head) would leave most of
   the 132 SMs idle at small batch, so the sequence axis is cut into `num_splits` chunks (split-K).
   Each program produces a partial softmax for its chunk: the chunk-normalised output and its
   log-sum-exp. A small second kernel (decode_attention_merge.py) merges the partials, exactly, in fp32:
   out = sum_s exp(lse_s - lse_max) * o_s / sum_s exp(lse_s - lse_max).

Static shapes for CUDA graphs: the grid depends only on (B, H, S_max), never on `seq_lens`, which
stays on the device. A program whose chunk starts at or beyond its sequence's length returns at
once, so a short sequence in a long cache costs a few empty programs, and positions >= seq_len are
never read (masked loads), so stale or NaN cache entries cannot leak. The catch is that splits are
sized by S_max: a 1k-token batch in a 32k cache uses few of its splits. An engine that graphs per
length bucket can pass `k_cache[:, :S_bucket]` (any strides are accepted) to fix that.

Files: this one plans the splits and launches; the split kernel is decode_attention_split.py, the merge
decode_attention_merge.py (absorbed MLA's merge with W_uv: mla_merge_uv.py).

Shapes: B batch, S sequence (S_max cache capacity), H query heads, Hkv kv heads, G = H / Hkv,
Dk key/query head dim, Dv value head dim.
Reference: Dao et al., "Flash-Decoding for long-context inference" (2023); DeepSeek-V2 (MLA),
arXiv:2405.04434; the grouped MLA decode kernels of lightllm / sglang follow the same plan.
"""

import functools
from typing import NamedTuple

import torch
import triton

from . import decode_attention_merge as _merge
from .decode_attention_merge import merge_splits_kernel
from .decode_attention_persistent import _decode_persistent_kernel, persistent_grid
from .decode_attention_split import _decode_split_kernel
from .mla_merge_uv import merge_uv
from .pdl import launch_args

# K tiles per split at least (the split plan's floor). Measured on the H200 (scripts/bench_attn_splits.py,
# docs/results/2026-11-30-s4/call2_x2): when B x (kv heads x head tiles) programs do not fill the SMs once, 1 tile is
# fastest (batch 1, 256 positions: OLMoE 7.7 -> 5.9 µs, Qwen3-30B 7.3 -> 5.5, Mixtral 7.9 -> 5.7, DeepSeek-V2-Lite MLA
# 10.5 -> 7.1; Qwen3 bs 16 8.4 -> 7.2); when they do, 4 tiles avoid a merge for a short cache (bs 64, 256 entries: one
# split). Absorbed MLA with many head tiles (DeepSeek-V3: each split writes a [128, 512] fp32 partial) keeps 4: at bs
# 16 more splits cost more than they give.
MIN_TILES_PER_SPLIT = 4
SMALL_GRID_MIN_TILES = 1
MAX_SPLITS = 64  # bounds the partial workspace and the merge kernel's loop
PROGRAMS_PER_SM = 2  # splits are added until the grid covers the SMs about this many times
ACC_BUDGET = 16384  # fp32 accumulator elements per program (BLOCK_H * Dv): 64 regs/thread, 8 warps
# K/V pipeline stages by (G, Dk) when the grid fills the SMs (else 2). In the graphed step
# (docs/results/2026-12-03-s28, calls 2-4) 3 against 2: -0.1 to -0.4% on OLMoE / Qwen1.5-MoE (G 1) bs 16 / 64,
# Qwen3-30B-A3B (G 8) bs 64; Mixtral +0.25%. MLA's shapes ((16 | 128, 576)) are not listed: it keeps 2.
BIG_GRID_STAGES = {(1, 128): 3, (8, 128): 3}
DEFAULT_TILES: dict | None = None  # the split kernel's tiles when a caller gives none (scripts/step_probe.py A/Bs)
# Where every split is one K tile (small grids at batch 1: 4 splits of 64 for a 256-entry cache), one new token and no
# MLA: the split kernel loads q and its K / V tile before seq_len arrives, not after (one L2 round trip fewer on the
# critical path), and drops the rows past seq_len after. The same bits. In the graphed bs-1 step
# (docs/results/2026-12-04-s33, call 2; the baseline repeated within -0.09%): Qwen3-30B-A3B -0.73%, OLMoE -0.64%. On.
# (The twenty-ninth session's peeled first tile inside a loop lost at bs 64; this one is only the one-tile split.)
EARLY_TILE = True
# L2 eviction priority of the split kernel's K / V loads ("" the default, "evict_last" / "evict_first"; Triton emits
# createpolicy + L2::cache_hint): a step-probe knob. The decode step streams its weights evict_first; whether a cache
# read with evict_last stays in the L2 from one step to the next is what it measures (kernels/rope.py KV_EVICT marks
# the new entries' stores the same way). In the graphed step (docs/results/2026-12-04-s36, call 2; the base repeated
# within 0.11%) ties: Qwen3-30B-A3B bs 1 +0.06% (loads) / +0.01% (loads and stores), OLMoE bs 1 -0.00 / +0.03%, OLMoE
# bs 64 -0.06 / +0.27%. Off.
KV_EVICT = ""
# Full grids (one split: B x Hkv programs fill the SMs) as persistent programs that stream several (sequence, kv head)
# items each (decode_attention_persistent.py): one token, no MLA, one head tile, B <= PERSISTENT_MAX_B.
# PERSISTENT_PROGRAMS_PER_SM programs an SM at most, PERSISTENT_STAGES the loop's pipeline depth (None: the split
# plan's num_stages). Measured (H200, docs/results/2026-12-04-s39, call 1): 0.93-0.94x the split kernel at 138-202
# cached entries, 1.01-1.02x from 256 (OLMoE, Mixtral at B 64), OLMoE's graphed bs-64 step +0.98%. Off.
PERSISTENT = False
PERSISTENT_PROGRAMS_PER_SM = 2
PERSISTENT_STAGES: int | None = None
PERSISTENT_MAX_B = 1024


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # H200; only the interpreter gets here, where splits are just a test knob
    return torch.cuda.get_device_properties(device).multi_processor_count


def _head_dim_blocks(dk: int, dv: int) -> tuple[int, int, int]:
    """Power-of-two blocks covering the head dims (tl.arange needs powers of two).

    Dk is split into the largest power of two that fits (512 for MLA's 576 = 512 latent + 64 rope)
    plus a masked power-of-two remainder (64). Padding 576 to 1024 would load and multiply 78% more
    than needed; the split costs one extra small dot. Both parts are >= 16 because tl.dot needs
    K >= 16. Dv is padded and masked (Dv is 64, 128 or 512 in practice, so exact).
    """
    block_dk = triton.next_power_of_2(dk + 1) // 2
    rest = dk - block_dk
    block_dr = 0 if rest == 0 else max(16, triton.next_power_of_2(rest))
    return block_dk, block_dr, max(16, triton.next_power_of_2(dv))


def _plan_splits(B: int, programs_per_split: int, s_max: int, block_n: int,
                 device: torch.device, max_splits: int | None,
                 min_tiles: int = MIN_TILES_PER_SPLIT) -> tuple[int, int]:
    """Pick (num_splits, chunk) from shapes only, so the grid is static under CUDA graphs."""
    want = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), B * programs_per_split)
    longest = triton.cdiv(s_max, min_tiles * block_n)
    num_splits = max(1, min(want, longest, MAX_SPLITS, max_splits or MAX_SPLITS))
    chunk = triton.cdiv(triton.cdiv(s_max, num_splits), block_n) * block_n
    return triton.cdiv(s_max, chunk), chunk  # recount: rounding up may leave trailing splits empty


class SplitPlan(NamedTuple):
    """How `decode_attention` (and kernels/decode_rope_attention.py) cut one step: tiles, launch and splits."""
    block_dk: int          # power-of-two block of the key head dim (+ block_dr, a masked remainder: MLA's 576)
    block_dr: int
    block_dv: int
    block_h: int           # query rows a program (>= 16: tl.dot's M)
    head_tiles: int        # programs a kv head (G x S rows in tiles of block_h)
    block_n: int           # cache positions a K / V tile
    launch: dict           # num_warps, num_stages
    num_splits: int
    chunk: int             # positions a split (a multiple of block_n)
    s_max: int


def split_plan(B: int, S: int, H: int, hkv: int, dk: int, dv: int, s_max: int, device: torch.device,
               max_splits: int | None = None, min_tiles: int | None = None, tiles: dict | None = None) -> SplitPlan:
    """The split kernel's tiles, launch and split count for B sequences of S new tokens, H query / hkv kv heads, head
    dims dk / dv and a cache of s_max positions: shapes only (CUDA-graph safe). Arguments as `decode_attention`'s."""
    G = H // hkv
    block_dk, block_dr, block_dv = _head_dim_blocks(dk, dv)
    block_h = min(max(16, triton.next_power_of_2(G * S)), max(16, ACC_BUDGET // block_dv))
    head_tiles = triton.cdiv(G * S, block_h)
    mla = block_dk + block_dr > 256
    small_grid = B * hkv * head_tiles < _sm_count(device)
    block_n = 32 if mla else 64  # MLA: a 32 x 576 K tile is already 36 KB
    launch = {"num_warps": 8 if block_h * block_dv > 8192 else 4,
              "num_stages": 2 if small_grid else BIG_GRID_STAGES.get((G, dk), 2)}
    tiles = tiles if tiles is not None else DEFAULT_TILES
    if tiles:
        block_n = tiles.get("BLOCK_N", block_n)
        launch.update({k: v for k, v in tiles.items() if k in launch})
    if min_tiles is None:
        min_tiles = SMALL_GRID_MIN_TILES if small_grid and not (mla and head_tiles > 1) else MIN_TILES_PER_SPLIT
    num_splits, chunk = _plan_splits(B, hkv * head_tiles, s_max, block_n, device, max_splits, min_tiles)
    return SplitPlan(block_dk, block_dr, block_dv, block_h, head_tiles, block_n, launch, num_splits, chunk, s_max)


def counters_needed(B: int, H: int, S: int = 1) -> int:
    """Arrival counters `decode_attention` may use for B sequences of S new tokens and H query heads:
    one per (sequence, kv head, head tile), and Hkv x head tiles <= H x S."""
    return B * H * S


def decode_attention(q, k_cache, v_cache, seq_lens, scale: float, *, positions=None,
                     max_splits: int | None = None, min_tiles: int | None = None,
                     tiles: dict | None = None, counters: torch.Tensor | None = None,
                     w_uv: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """softmax(scale * q K^T) V over the cache -> [B, H, Dv] (or [B, S, H, Dv]) in q.dtype.

    q [B, H, Dk]: one new token per sequence, attending to the first seq_lens[b] positions; or q [B, S, H, Dk] with
    positions [B, S] (int64, device): S new tokens per sequence (speculative verification, chunked appends), token s
    attending to positions <= positions[b, s] (and < seq_lens[b]). k_cache [B, S_max, Hkv, Dk]; v_cache [B, S_max,
    Hkv, Dv] (any strides, unit stride on the head dim; may be a view of k_cache); seq_lens [B] int32 on device,
    each >= 1, counting the entries once this step's K/V are written. max_splits / min_tiles (K tiles per split)
    override the split plan (benchmarks, tests); tiles {BLOCK_N, num_warps, num_stages} (default DEFAULT_TILES)
    overrides the split kernel's launch (scripts/bench_attn_tiles.py). counters: a zeroed int32 buffer of at least B
    x Hkv x head tiles entries (KVCache.counters; `counters_needed`), kept zeroed by the kernel: with it the last
    split to finish of each (sequence, head tile) merges the partials itself, so a split launch is one kernel, not
    two (the merge kernel runs when it is None or too small). Measured in the engine on the H200 (eighth session,
    calls 3-4) it was slower at batch 1: ~0.4 µs a layer for OLMoE, ~3.9 for DeepSeek-V2-Lite's 512-wide MLA values,
    because that last program walks the splits one after another where the merge kernel spreads them over H x S
    programs; so the engine passes none. w_uv [H, N, Dv] (absorbed MLA's value un-absorption W_uv, unit last stride;
    one new token a sequence): the partials are merged and multiplied by W_uv per head in one kernel
    (kernels/mla_merge_uv.py) -> [B, H, N] = W_uv[h] @ out[b, h] with out rounded to q.dtype first, as a separate
    torch.bmm would see it.
    Raises AssertionError on bad shapes (a w_uv that is not [H, N, Dv] with a unit last stride included).
    """
    one = q.dim() == 3
    q4 = q[:, None] if one else q                                            # [B, S, H, Dk]
    B, S, H, dk = q4.shape
    _, s_max, hkv, _ = k_cache.shape
    dv = v_cache.shape[-1]
    assert H % hkv == 0 and dk >= 16 and dv >= 16, (H, hkv, dk, dv)
    assert q.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == 1, "head dim not unit-stride"
    assert k_cache.dtype == v_cache.dtype and seq_lens.dtype == torch.int32
    assert one or (positions is not None and positions.shape == (B, S)), "S > 1 needs positions [B, S]"
    assert w_uv is None or (one and w_uv.dim() == 3 and w_uv.shape[0] == H and w_uv.shape[2] == v_cache.shape[-1]
                            and w_uv.stride(-1) == 1), "w_uv: one new token a sequence and W_uv [H, N, Dv]"
    G = H // hkv
    plan = split_plan(B, S, H, hkv, dk, dv, s_max, q.device, max_splits, min_tiles, tiles)
    block_dk, block_dr, block_dv = plan.block_dk, plan.block_dr, plan.block_dv
    block_h, head_tiles, block_n, launch = plan.block_h, plan.head_tiles, plan.block_n, plan.launch
    num_splits, chunk = plan.num_splits, plan.chunk
    # MLA stores one latent; V = latent[..., :Dv] aliases K's main block, so reuse the loaded tile.
    v_from_k = (v_cache.data_ptr() == k_cache.data_ptr() and v_cache.stride() == k_cache.stride()
                and dv == block_dk)
    out = torch.empty(B, S, H, dv, device=q.device, dtype=q.dtype)
    direct = num_splits == 1 and w_uv is None     # merge_uv reads partials, even a single split's
    if direct:
        part, lse = out[:, :, :, None], out  # lse is never touched when DIRECT
    else:
        part = torch.empty(B, S, H, num_splits, dv, device=q.device, dtype=torch.float32)
        lse = torch.empty(B, S, H, num_splits, device=q.device, dtype=torch.float32)
    if persistent_fits(plan, one, B, dk, dv, v_from_k, w_uv):
        _persistent(q, k_cache, v_cache, seq_lens, out[:, 0], scale, plan, pdl)
        return out[:, 0]
    pos = positions if positions is not None else seq_lens[:, None]          # unread when one token
    merge = (not direct and counters is not None and counters.dtype == torch.int32
             and counters.numel() >= B * hkv * head_tiles and counters.device == q.device and w_uv is None)
    cnt = counters if merge else seq_lens                                    # unread without MERGE
    _decode_split_kernel[(hkv * head_tiles, B, num_splits)](
        q4, k_cache, v_cache, seq_lens, pos, part, lse,
        q4.stride(0), q4.stride(1), q4.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), pos.stride(0), pos.stride(1),
        part.stride(0), part.stride(1), part.stride(2), part.stride(3),
        lse.stride(0), lse.stride(1), lse.stride(2),
        scale * 1.4426950408889634, s_max, chunk,  # log2(e): the kernel uses exp2
        cnt, out, out.stride(0), out.stride(1), out.stride(2),
        G=G, S_Q=S, HEAD_TILES=head_tiles, DK=dk, DV=dv, BLOCK_H=block_h, BLOCK_N=block_n,
        BLOCK_DK=block_dk, BLOCK_DR=block_dr, BLOCK_DV=block_dv, V_FROM_K=v_from_k, DIRECT=direct,
        USE_POS=not one,
        # fp32 caches would silently drop to tf32 on tensor cores; "ieee" keeps them exact
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32", MERGE=merge,
        EARLY=EARLY_TILE and one and chunk == block_n and block_dr == 0 and not v_from_k and not merge,
        KV_EVICT=KV_EVICT,
        **launch, **launch_args(pdl),
    )
    if w_uv is not None:
        return merge_uv(part[:, 0], lse[:, 0], seq_lens, w_uv, s_max, chunk, num_splits, out_dtype=q.dtype, pdl=pdl)
    if not direct and not merge:
        merge_partials(part, lse, seq_lens, out, plan, pdl)
    return out[:, 0] if one else out


def persistent_fits(plan: SplitPlan, one: bool, B: int, dk: int, dv: int, v_from_k: bool, w_uv) -> bool:
    """Whether this call takes the persistent kernel: PERSISTENT on, one split (a full grid), one new token, one head
    tile, Dk = Dv a power of two (no MLA), B <= PERSISTENT_MAX_B."""
    return (PERSISTENT and one and plan.num_splits == 1 and plan.head_tiles == 1 and plan.block_dr == 0
            and dk == dv == plan.block_dk and not v_from_k and w_uv is None and B <= PERSISTENT_MAX_B)


def _persistent(q, k_cache, v_cache, seq_lens, out, scale: float, plan: SplitPlan, pdl: bool) -> None:
    """decode_attention_persistent.py's kernel: q [B, H, d] -> out [B, H, d] (written)."""
    B, H, d = q.shape
    s_max, hkv = k_cache.shape[1], k_cache.shape[2]
    n_items = B * hkv
    programs, items = persistent_grid(n_items, _sm_count(q.device), PERSISTENT_PROGRAMS_PER_SM)
    launch = dict(plan.launch)
    if PERSISTENT_STAGES is not None:
        launch["num_stages"] = PERSISTENT_STAGES
    _decode_persistent_kernel[(programs,)](
        q, k_cache, v_cache, seq_lens, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        scale * 1.4426950408889634, s_max, B, n_items,
        HKV=hkv, G=H // hkv, D=d, ITEMS=items, BLOCK_B=max(16, triton.next_power_of_2(B)), BLOCK_H=plan.block_h,
        BLOCK_N=plan.block_n, STAGES=launch["num_stages"],
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        **launch, **launch_args(pdl),
    )


def merge_partials(part, lse, seq_lens, out, plan: SplitPlan, pdl: bool = False) -> None:
    """The merge kernel (decode_attention_merge.py) over the split kernel's partials: part [B, S, H, splits, Dv] and
    lse [B, S, H, splits] float32 -> out [B, S, H, Dv] (any strides; written in its dtype)."""
    B, S, H, num_splits, dv = part.shape
    tile = triton.next_power_of_2(num_splits) * plan.block_dv <= _merge.TILE_ELEMS
    merge_splits_kernel[(H * S, B)](
        part, lse, seq_lens, out,
        part.stride(0), part.stride(1), part.stride(2), part.stride(3),
        lse.stride(0), lse.stride(1), lse.stride(2), out.stride(0), out.stride(1), out.stride(2),
        plan.s_max, plan.chunk, H=H, DV=dv, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_DV=plan.block_dv,
        TILE=tile, EARLY=tile and _merge.EARLY_LOADS, num_warps=4, **launch_args(pdl),
    )

