"""Fused MoE expert layer in Triton: gathered grouped GEMMs with the SwiGLU and routing weight fused.

For every token t and each of its K chosen experts e (shape legend: T tokens, D hidden, E local
experts, K experts per token, I expert FFN width)

    out[t] = Σ_k w[t,k] · W2[e] · ( silu(Wg[e]·x[t]) ⊙ (Wu[e]·x[t]) )

The loop over experts does this with E small matmuls and a permuted copy of the activations. Here
it is three or four launches, none of which copies x:

1. align (moe_align.py): group the T·K (token, slot) pairs by expert into M-blocks of BLOCK_M rows.
2. GEMM1 `_gate_up_kernel` (fused_moe_gemms.py, as GEMM2): each program owns one M-block (one expert) and
   BLOCK_N columns of I. It gathers its A rows straight from x[flat_id // K], loads the gate AND up tiles of w13 for the
   same columns, keeps two fp32 accumulators, and writes h = silu(gate)·up to row flat_id of h.
3. GEMM2 `_down_kernel`: same walk over h and w2; the fp32 epilogue multiplies each row by its
   routing weight before the cast, and writes row flat_id of y [T·K, D]. At decode batches (`OVERLAP_GEMMS`) it is
   launched while GEMM1's last wave runs, each program waiting only for its own M-block's h (GEMM1's arrival flags).
4. `_combine_kernel`: out[t] = Σ_k y[t·K + k] in fp32 (+ a shared expert's S rows, `shared=`), skipping slots
   routed to experts this layer does not hold (expert parallelism), so those contribute exactly zero without
   zeroing y.

Decode variant ("small", fused_moe_small.py): when T·K is small next to E almost every pair has its
own expert, so sorting buys nothing and each pair is a matrix-VECTOR product. Two GEMV kernels
replace all of the above: GEMM1 with no tl.dot (whose 16-row minimum would waste 15 rows and fix the
tile), and GEMM2 with the top-k combine folded in (one program sums a token's K slots for its output
columns, so no y buffer and no combine launch). Only the chosen experts' weights are read; two pairs
sharing an expert read it twice, which T·K·4 <= E keeps rare (vLLM's rule; one token's K slots are
always distinct experts). The variant it replaced, "small_dot" (the tl.dot kernels of fused_moe_gemms.py with one
live row per M-block), is reachable only through config {"variant": "small_dot"}, for comparison.

Weight tiles through TMA (`b_tma` in a tuned config): the GEMMs can read w13 / w2 through host TMA descriptors
instead of pointer tiles (fused_moe_gemms.py says how; `_b_tma` below says where it applies).

Nothing here syncs with the host and every buffer size depends only on (T, K, E, config), so the
call can be captured in a CUDA graph: grids are sized for the worst case and programs past the live
blocks exit after reading the device-side block count.
Reference: vLLM fused_moe (peers.md §1); Triton's matmul tutorial for the grouped ordering.
"""

import functools
from typing import NamedTuple

import torch
import triton

try:    # host TMA descriptors: Triton 3.4+ (pyproject allows 3.2); without them `b_tma` keeps the pointer path
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

from .fused_moe_gemms import _block_rows, _down_kernel, _gate_up_kernel, _shared_rows, _tile_coords  # noqa: F401
from .fused_moe_small import SharedExpert, check_shared, fused_moe_small
from .moe_align import align_tokens_by_expert
from .moe_combine import _combine_kernel
from .moe_configs import down_config, get_config
from .pdl import launch_args

SMALL_BATCH_RATIO = 4  # "small" when T·K·SMALL_BATCH_RATIO <= E
# The combine's tile (an in-step knob for scripts/step_probe.py): D columns a program sums over the K slots, and its
# warps. 256 x 2 warps since the twenty-first session: OLMoE at bs 64 gets 64 x 8 programs (1024 x 4 gave 64 x 2 that
# each walked 8 rows of 2 KB, 4.8 µs a layer in the s20 profile); a step -0.60% (OLMoE bs 64), -0.26% (DeepSeek-V2-Lite
# bs 64), -0.79% (OLMoE bs 16), -0.78% (Qwen3-30B-A3B bs 16), -0.86% (OLMoE fp8 bs 64).
COMBINE_BLOCK_D = 256
COMBINE_WARPS = 2
# The combine's K slots unrolled at compile time (moe_combine.py UNROLL_K) for calls of up to COMBINE_UNROLL_MAX_T
# tokens (0: never): a program issues its K id loads and K row loads together instead of K dependent load pairs in a
# runtime loop. Measured (H100, docs/results/2026-12-05-s46, call 1), graphed OLMoE step: bs 64 -0.21%, bs 16 -0.34%
# (bs 1 takes the small path, no combine: +0.15%, noise); bench.py bs 64 10,958.5 / 10,961.3 against 10,940.1 /
# 10,935.3 out tok/s (+0.2%). The 8,192-token prefill (a combine at its bytes' time, 106 µs a layer) was a tie within
# the rounds' spread (+0.93% median, rounds overlapping): it keeps the loop.
COMBINE_UNROLL_MAX_T = 64
# GEMM2 started per M-block from GEMM1's arrival flags (fused_moe_gemms.py, FLAGS) and launched with PDL while GEMM1's
# last wave still runs; routed blocks of the aligned variant only (no shared expert). "on" / "off" force it (a step-probe
# knob); "auto" takes it with pdl for OVERLAP_T_RANGE tokens when the live M-blocks (about min(E, T·K)) are at least
# OVERLAP_MIN_RATIO times GEMM1's N tiles an M-block: then the first M-blocks are done long before GEMM1's last wave and
# GEMM2's first programs stream w2 beside it. Measured in the graphed step (forty-first session, call 3): OLMoE bs 64
# -0.95%, bs 16 -1.25%, Qwen3-30B-A3B bs 64 -1.17%; Mixtral bs 16 (8 M-blocks of 112 N tiles each: GEMM2's programs
# spin beside GEMM1 until it is nearly done) +1.72%, so off there. Between those points (bucket 32, bs 17-63) the rule
# is interpolated, not measured; under an EP / TP plan PDL is off, so "auto" is too.
OVERLAP_GEMMS = "auto"
OVERLAP_GEMMS_CHOICES = ("auto", "on", "off")         # scripts/bench_knob.py and step_probe.py refuse anything else
OVERLAP_T_RANGE = (16, 64)
OVERLAP_MIN_RATIO = 4


def overlap_gemms(T: int, K: int, E: int, I: int, block_n: int, pdl: bool) -> bool:
    """Whether GEMM2 starts from GEMM1's arrival flags for this call (OVERLAP_GEMMS; "auto" as explained there)."""
    if OVERLAP_GEMMS in ("on", "off"):
        return OVERLAP_GEMMS == "on"
    if OVERLAP_GEMMS != "auto":
        raise ValueError(f"fused_moe.OVERLAP_GEMMS is one of {OVERLAP_GEMMS_CHOICES}, not {OVERLAP_GEMMS!r}")
    lo, hi = OVERLAP_T_RANGE
    return pdl and lo <= T <= hi and min(E, T * K) >= OVERLAP_MIN_RATIO * triton.cdiv(I, block_n)


FLAG_BLOCKS = 16384             # M-blocks a call may have and still use the device's persistent flags
_flags: dict[torch.device, torch.Tensor] = {}


def _flags_for(device: torch.device, n_blocks: int) -> torch.Tensor:
    """Zeroed int32 [2, >= n_blocks] arrival / reader counters. GEMM2's last reader of each M-block zeroes both, so one
    buffer a device, zeroed once, serves every call (calls on one stream never overlap on the counters: within a call
    only its GEMM1 and GEMM2 touch them, and the next call's GEMM1 starts after this GEMM2 has finished). A call
    captured before the buffer exists, or with more blocks, gets its own zeroed counters (a memset in the graph)."""
    buf = _flags.get(device)
    if buf is None and device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        buf = _flags[device] = torch.zeros(2, FLAG_BLOCKS, device=device, dtype=torch.int32)
    if buf is None or n_blocks > buf.shape[1]:
        return torch.zeros(2, n_blocks, device=device, dtype=torch.int32)
    return buf


def plan(T: int, K: int, E: int, config: dict | None = None) -> str:
    """Which variant fused_moe runs for T tokens: "small" (GEMVs, no alignment) or "aligned";
    config["variant"] forces one of those or the legacy "small_dot"."""
    if config is not None and "variant" in config:
        return config["variant"]
    return "small" if T * K * SMALL_BATCH_RATIO <= E else "aligned"


def _check_inputs(x, w13, w2, topk_ids, topk_weights):
    T, D = x.shape
    E, two_i, d_in = w13.shape
    assert two_i % 2 == 0 and d_in == D, f"w13 {tuple(w13.shape)} does not match x {tuple(x.shape)}"
    assert w2.shape == (E, D, two_i // 2), f"w2 {tuple(w2.shape)} is not [E, D, I]"
    assert x.dtype == w13.dtype == w2.dtype, "x, w13 and w2 must share a dtype"
    assert x.is_contiguous() and w13.is_contiguous() and w2.is_contiguous()
    assert topk_ids.shape == topk_weights.shape and topk_ids.shape[0] == T
    assert topk_ids.dtype in (torch.int32, torch.int64), "topk_ids must be int32 or int64"


class _Blocks(NamedTuple):
    """What both GEMMs need to find their M-block's rows and expert."""
    ids: torch.Tensor           # [T, K] topk_ids (read directly by the small_dot variant)
    sorted_ids: torch.Tensor    # alignment outputs; placeholders (= ids) in the small_dot variant
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    num_pid_m: int              # M-blocks in the grid (static for a given T)
    numel: int                  # T·K
    expert_offset: int
    E: int
    small: bool


class _Shared(NamedTuple):
    """The shared expert in the aligned GEMMs: its I_S columns as S = I_S / I virtual experts of width I, whose
    n_sb = S·cdiv(T, BLOCK_M) M-blocks (every token, weight 1 or Qwen2's sigmoid gate) run before the routed ones."""
    w13: torch.Tensor           # [2·I_S, D] gate rows, then up rows
    w2: torch.Tensor            # [D, I_S]
    gate: torch.Tensor | None   # [T] sigmoid(x · wsg) in x's dtype (Qwen2-MoE), or None: weight 1
    S: int
    n_sb: int

    @staticmethod
    def none(x) -> "_Shared":
        return _Shared(x, x, None, 0, 0)        # placeholders the kernels never read


def aligned_shared_fits(I: int, shared: SharedExpert | None) -> bool:
    """Whether the aligned variant can take this shared expert: its width a multiple of the routed experts' I."""
    return shared is not None and shared.w2.shape[1] % I == 0


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
              topk_weights: torch.Tensor, *, expert_offset: int = 0,
              config: dict | None = None, pdl: bool = False, shared: SharedExpert | None = None) -> torch.Tensor:
    """out [T, D] = Σ_k topk_weights[:, k] · expert(topk_ids[:, k])(x), experts
    expert_offset .. expert_offset+E-1 held here as w13 [E, 2I, D] (gate rows, then up rows) and
    w2 [E, D, I]; ids outside that range contribute zero. shared (fused_moe_small.SharedExpert): plus an
    always-on expert inside the same launches. The decode ("small") variant gives it its own programs; the aligned
    variant cuts its width I_S into I_S / I virtual experts of width I that every token routes to with weight 1
    (Qwen2's sigmoid(x · gate) instead where it has a gate), their M-blocks ahead of the routed ones in both GEMMs
    and their rows summed by the combine (SGLang's shared-experts fusion, without copying the weights).
    ValueError for shared weights that do not fit x, for a shared I_S that is not a multiple of I in the aligned
    variant (ask `aligned_shared_fits`), and for the legacy small_dot variant with a shared expert."""
    _check_inputs(x, w13, w2, topk_ids, topk_weights)
    (T, D), (E, two_i, _), K = x.shape, w13.shape, topk_ids.shape[1]
    I = two_i // 2
    if T == 0:
        return x.new_empty(0, D)
    if config is None:
        config = get_config(E, I, D, K, T, x.dtype)
    ids = topk_ids.contiguous()                                              # [T, K]
    variant = plan(T, K, E, config)
    if variant == "small":
        return fused_moe_small(x, w13, w2, ids, topk_weights, expert_offset, config, pdl, shared)
    numel = T * K
    if variant == "small_dot":  # one M-block per (token, slot) pair, no alignment
        if shared is not None:
            raise ValueError("a shared expert runs in the small and aligned variants, not small_dot")
        blocks = _Blocks(ids, ids, ids, ids, numel, numel, expert_offset, E, True)
    else:
        assert variant == "aligned", f"unknown fused_moe variant {variant!r}"
        sorted_ids, block_expert, num_padded = align_tokens_by_expert(
            ids, E, config["BLOCK_M"], expert_offset, pdl=pdl)
        blocks = _Blocks(ids, sorted_ids, block_expert, num_padded, block_expert.numel(),
                         numel, expert_offset, E, False)
    sh = _Shared.none(x)
    if shared is not None:
        check_shared(x, shared)
        if not aligned_shared_fits(I, shared):
            raise ValueError(f"the aligned variant takes a shared expert of width a multiple of I={I}, "
                             f"not {shared.w2.shape[1]}")
        if shared.w2.numel() >= 2 ** 31:       # the kernels address the shared weights with int32 row offsets
            raise ValueError(f"shared expert w2 {tuple(shared.w2.shape)} has 2^31 or more elements")
        S = shared.w2.shape[1] // I
        gate = None if shared.gate is None else torch.sigmoid(x @ shared.gate.view(-1, 1)).view(-1)   # [T]
        sh = _Shared(shared.w13, shared.w2, gate, S, S * triton.cdiv(T, config["BLOCK_M"]))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # exact fp32 for the CPU tests

    rows = numel + T * sh.S                                                  # routed rows, then shared
    h = x.new_empty(rows, I)                                                 # [T·K + T·S, I]
    y = x.new_empty(rows, D)                                                 # [T·K + T·S, D]
    weights = topk_weights.float().contiguous().view(-1)  # [T·K]; no copy when already fp32 (a cast: before GEMM1)
    flags = (_flags_for(x.device, sh.n_sb + blocks.num_pid_m)
             if variant == "aligned" and sh.S == 0 and overlap_gemms(T, K, E, I, config["BLOCK_N"], pdl) else None)
    try:
        _launch_gate_up(x, w13, h, blocks, K, config, precision, pdl, sh, flags)
        # after GEMM1: not launched early (pdl.py), unless its programs wait on GEMM1's flags
        _launch_down(h, w2, y, weights, blocks, down_config(config), precision, False, sh, flags,
                     n1_tiles=triton.cdiv(I, config["BLOCK_N"]), early=pdl and flags is not None)
    except BaseException:
        if flags is not None:       # GEMM1 may have counted arrivals no GEMM2 will read: later calls must start at 0
            flags.zero_()
        raise
    out = x.new_empty(T, D)
    block_d = min(COMBINE_BLOCK_D, triton.next_power_of_2(D))
    _combine_kernel[(T, triton.cdiv(D, block_d))](y, ids, out, K, expert_offset, E, D, numel, sh.S,
                                                  BLOCK_D=block_d, num_warps=COMBINE_WARPS,
                                                  UNROLL_K=K if T <= COMBINE_UNROLL_MAX_T else 0, **launch_args(pdl))
    return out


@functools.lru_cache(maxsize=None)
def _tma_unit(device: torch.device) -> bool:
    """Whether launches on this device can use TMA descriptors: an sm90+ GPU, or the interpreter (CPU tests)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def _b_tma(cfg, w: torch.Tensor, b: _Blocks, sh: _Shared) -> bool:
    """Whether this launch reads its weights w through a TMA descriptor: the config's `b_tma` (tuned per bucket), on
    the aligned variant's routed blocks only (the shared expert's virtual blocks and small_dot keep the pointer loads),
    and where the TMA unit can address w (Triton 3.4+, an sm90+ GPU, a 16-byte aligned base, rows a multiple of 16
    bytes, fewer than 2^31 rows): elsewhere the same result through pointer loads."""
    return (bool(cfg.get("b_tma", False)) and TensorDescriptor is not None and not b.small and sh.S == 0
            and w.data_ptr() % 16 == 0 and w.shape[-1] * w.element_size() % 16 == 0
            and w.shape[0] * w.shape[1] < 2 ** 31 and _tma_unit(w.device))              # int32 row coordinates


def _weight_desc(w: torch.Tensor, block_n: int, block_k: int):
    """A host TMA descriptor over w [E, N, K] seen as [E·N, K] rows, tiles [block_n, block_k]."""
    return TensorDescriptor.from_tensor(w.view(-1, w.shape[-1]), [block_n, block_k])


def _launch_gate_up(x, w13, h, b: _Blocks, top_k, cfg, precision, pdl, sh: _Shared, flags=None):
    I, D = h.shape[1], x.shape[1]
    num_pid_m = sh.n_sb + b.num_pid_m
    grid = (num_pid_m * triton.cdiv(I, cfg["BLOCK_N"]),)
    tma = _b_tma(cfg, w13, b, sh)
    _gate_up_kernel[grid](
        x, w13, h, b.sorted_ids, b.block_expert, b.num_padded, b.ids,
        b.numel, top_k, b.expert_offset, b.E, num_pid_m, I, D,
        x.stride(0), w13.stride(0), w13.stride(1), h.stride(0), sh.w13, b.ids.shape[0], sh.S, sh.S * I, sh.n_sb,
        _weight_desc(w13, cfg["BLOCK_N"], cfg["BLOCK_K"]) if tma else w13, h if flags is None else flags,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], SMALL=b.small, SHARED=sh.S > 0, DOT_PRECISION=precision, B_TMA=tma,
        FLAGS=flags is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def _launch_down(h, w2, y, weights, b: _Blocks, cfg, precision, pdl, sh: _Shared, flags=None, n1_tiles=0,
                 early=False):
    """GEMM2. flags (the arrival counters GEMM1 bumped) with early: launched with PDL but no gdc_wait in the kernel,
    each program waiting on its own M-block's counter instead (fused_moe_gemms.py, FLAGS)."""
    D, I = y.shape[1], h.shape[1]
    num_pid_m = sh.n_sb + b.num_pid_m
    grid = (num_pid_m * triton.cdiv(D, cfg["BLOCK_N"]),)
    tma = _b_tma(cfg, w2, b, sh)
    _down_kernel[grid](
        h, w2, y, weights, b.sorted_ids, b.block_expert, b.num_padded, b.ids,
        b.numel, b.expert_offset, b.E, num_pid_m, D, I,
        h.stride(0), w2.stride(0), w2.stride(1), y.stride(0), sh.w2, weights if sh.gate is None else sh.gate,
        b.ids.shape[0], sh.S, sh.S * I, sh.n_sb, _weight_desc(w2, cfg["BLOCK_N"], cfg["BLOCK_K"]) if tma else w2,
        y if flags is None else flags, 0 if flags is None else flags.shape[1], n1_tiles,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], SMALL=b.small, SHARED=sh.S > 0, SHARED_GATE=sh.gate is not None,
        DOT_PRECISION=precision, B_TMA=tma, FLAGS=flags is not None, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **_down_launch(pdl, early))


def _down_launch(pdl: bool, early: bool) -> dict:
    """GEMM2's launch keywords: launch_args(pdl), or with early a PDL launch (unless pdl.OFF_IN names this module) whose
    kernel runs no gdc_wait (PDL False): its programs wait on GEMM1's flags instead."""
    if not early:
        return launch_args(pdl)
    return {"PDL": False, "launch_pdl": launch_args(True)["launch_pdl"]}
