"""Fused MoE expert layer in Triton: gathered grouped GEMMs with the SwiGLU and routing weight fused.

For every token t and each of its K chosen experts e (shape legend: T tokens, D hidden, E local
experts, K experts per token, I expert FFN width)

    out[t] = Σ_k w[t,k] · W2[e] · ( silu(Wg[e]·x[t]) ⊙ (Wu[e]·x[t]) )

The loop over experts does this with E small matmuls and a permuted copy of the activations. Here
it is three or four launches, none of which copies x:

1. align (moe_align.py): group the T·K (token, slot) pairs by expert into M-blocks of BLOCK_M rows.
2. GEMM1 `_gate_up_kernel`: each program owns one M-block (one expert) and BLOCK_N columns of I.
   It gathers its A rows straight from x[flat_id // K], loads the gate AND up tiles of w13 for the
   same columns, keeps two fp32 accumulators, and writes h = silu(gate)·up to row flat_id of h.
3. GEMM2 `_down_kernel`: same walk over h and w2; the fp32 epilogue multiplies each row by its
   routing weight before the cast, and writes row flat_id of y [T·K, D].
4. `_combine_kernel`: out[t] = Σ_k y[t·K + k] in fp32 (+ a shared expert's S rows, `shared=`), skipping slots
   routed to experts this layer does not hold (expert parallelism), so those contribute exactly zero without
   zeroing y.

Decode variant ("small", fused_moe_small.py): when T·K is small next to E almost every pair has its
own expert, so sorting buys nothing and each pair is a matrix-VECTOR product. Two GEMV kernels
replace all of the above: GEMM1 with no tl.dot (whose 16-row minimum would waste 15 rows and fix the
tile), and GEMM2 with the top-k combine folded in (one program sums a token's K slots for its output
columns, so no y buffer and no combine launch). Only the chosen experts' weights are read; two pairs
sharing an expert read it twice, which T·K·4 <= E keeps rare (vLLM's rule; one token's K slots are
always distinct experts). The variant it replaced, "small_dot" (the tl.dot kernels below with one
live row per M-block), is reachable only through config {"variant": "small_dot"}, for comparison.

Weight tiles through TMA (`b_tma` in a tuned config, prefill and mid-size buckets): instead of a [BK, BN] tile of
pointers, each GEMM asks Hopper's tensor memory accelerator for a [BN, BK] box of w13 seen as [E·2I, D] rows (w2 as
[E·D, I]) at (expert row, k) through a host descriptor, and multiplies by its transpose. The unit zero-fills past D
(or I); rows past I (or D) in the last N tile are computed and dropped at the store, as the pointer path's wrap-around
is. The A rows stay pointer loads: they are a gather, which Hopper's TMA cannot do. Compiled at the prefill tile it
frees 86 of GEMM1's 255 registers and the B tiles' cp.async address math; tuned beside the pointer tiles it won by
2.4-3.9% at 2,048-8,192 tokens (docs/results.md, thirty-fifth session). The shared expert's virtual blocks keep the
pointer path. Reference: Triton's tensor-descriptor matmul tutorial; SGLang's fused MoE `b_use_tma` (its design, not
its code).

Nothing here syncs with the host and every buffer size depends only on (T, K, E, config), so the
call can be captured in a CUDA graph: grids are sized for the worst case and programs past the live
blocks exit after reading the device-side block count.
Reference: vLLM fused_moe (peers.md §1); Triton's matmul tutorial for the grouped ordering.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .fused_moe_small import SharedExpert, check_shared, fused_moe_small
from .moe_align import align_tokens_by_expert
from .moe_combine import _combine_kernel
from .moe_configs import down_config, get_config
from .pdl import launch_args, wait_then_release

SMALL_BATCH_RATIO = 4  # "small" when T·K·SMALL_BATCH_RATIO <= E
# The combine's tile (an in-step knob for scripts/step_probe.py): D columns a program sums over the K slots, and its
# warps. 256 x 2 warps since the twenty-first session: OLMoE at bs 64 gets 64 x 8 programs (1024 x 4 gave 64 x 2 that
# each walked 8 rows of 2 KB, 4.8 µs a layer in the s20 profile); a step -0.60% (OLMoE bs 64), -0.26% (DeepSeek-V2-Lite
# bs 64), -0.79% (OLMoE bs 16), -0.78% (Qwen3-30B-A3B bs 16), -0.86% (OLMoE fp8 bs 64).
COMBINE_BLOCK_D = 256
COMBINE_WARPS = 2


def plan(T: int, K: int, E: int, config: dict | None = None) -> str:
    """Which variant fused_moe runs for T tokens: "small" (GEMVs, no alignment) or "aligned";
    config["variant"] forces one of those or the legacy "small_dot"."""
    if config is not None and "variant" in config:
        return config["variant"]
    return "small" if T * K * SMALL_BATCH_RATIO <= E else "aligned"


@triton.jit
def _tile_coords(num_pid_m, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M M-blocks sweep the N tiles together, so a weight tile fetched for
    one block is still in L2 when the next block of the same expert needs it."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr, topk_ids_ptr,
                numel, expert_offset, E, BLOCK_M: tl.constexpr, SMALL: tl.constexpr):
    """Flat (token, slot) ids of M-block pid_m, which rows are real, and its local expert (-1: the
    program has nothing to do)."""
    offs = tl.arange(0, BLOCK_M)
    if SMALL:
        rows = pid_m + offs * 0
        row_mask = offs == 0
        expert = tl.load(topk_ids_ptr + pid_m).to(tl.int32) - expert_offset
        expert = tl.where((expert >= 0) & (expert < E), expert, -1)
    else:
        rows = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + offs)
        row_mask = rows < numel
        expert = tl.load(block_expert_ptr + pid_m)
        expert = tl.where(pid_m * BLOCK_M < tl.load(num_padded_ptr), expert, -1)
    return rows, row_mask, expert


@triton.jit
def _shared_rows(pid_m, numel, T, S, BLOCK_M: tl.constexpr):
    """Shared M-block pid_m (< S·cdiv(T, BLOCK_M)): virtual shared expert j = pid_m // cdiv(T, BLOCK_M) and its
    BLOCK_M tokens t. Their rows of h / y are numel + t·S + j, after the T·K routed ones."""
    per_j = tl.cdiv(T, BLOCK_M)
    j = pid_m // per_j
    t = (pid_m % per_j) * BLOCK_M + tl.arange(0, BLOCK_M)
    return numel + t * S + j, t < T, t, j


@triton.jit(do_not_specialize=["numel", "top_k", "expert_offset", "E", "num_pid_m", "T", "S", "n_sb"])
def _gate_up_kernel(x_ptr, w13_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                    topk_ids_ptr, numel, top_k, expert_offset, E, num_pid_m, I, D,
                    stride_xt, stride_we, stride_wn, stride_ht, ws13_ptr, T, S, I_S, n_sb, w13_desc,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, SMALL: tl.constexpr, SHARED: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, B_TMA: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, I, BLOCK_N, GROUP_M)
    if SHARED:      # the first n_sb M-blocks are the shared expert's, as S virtual experts of width I
        if pid_m < n_sb:
            rows, row_mask, tokens, j = _shared_rows(pid_m, numel, T, S, BLOCK_M)
            expert = 0
            w_base = ws13_ptr + (j * I).to(tl.int64) * D                     # gate rows j·I .., up rows I_S + j·I ..
            up_off = I_S * D
        else:
            rows, row_mask, expert = _block_rows(pid_m - n_sb, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                                 topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
            tokens = rows // top_k
            w_base = w13_ptr + expert.to(tl.int64) * stride_we
            up_off = I * stride_wn
    else:
        rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                             topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
        tokens = rows // top_k
        w_base = w13_ptr + expert.to(tl.int64) * stride_we
        up_off = I * stride_wn
    if expert < 0:
        return
    offs_k = tl.arange(0, BLOCK_K)
    # Columns past I wrap around rather than being masked: the weight loads stay in bounds and
    # need no mask along N; the store drops those columns.
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % I
    a_ptrs = x_ptr + tokens.to(tl.int64)[:, None] * stride_xt + offs_k[None, :]  # [BM, BK]
    # B tiles are read as [BK, BN] with the contiguous D axis first: 16-byte loads along D.
    gate_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None]          # [BK, BN]
    up_ptrs = gate_ptrs + up_off
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if B_TMA:       # w13 as [E·2I, D] rows through the TMA unit (`b_tma`; never with SHARED, see the launcher)
        n0 = expert * (2 * I) + pid_n * BLOCK_N        # past I the gate tile reads up rows: dropped at the store
        for k in range(0, tl.cdiv(D, BLOCK_K)):
            k_mask = offs_k < D - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            gate = w13_desc.load([n0, k * BLOCK_K])                            # [BN, BK], zeros past D
            up = w13_desc.load([n0 + I, k * BLOCK_K])
            acc_gate = tl.dot(a, gate.T, acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(a, up.T, acc_up, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
    else:
        for k in range(0, tl.cdiv(D, BLOCK_K)):
            k_mask = offs_k < D - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            gate = tl.load(gate_ptrs, mask=k_mask[:, None], other=0.0)
            up = tl.load(up_ptrs, mask=k_mask[:, None], other=0.0)
            acc_gate = tl.dot(a, gate, acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(a, up, acc_up, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
            gate_ptrs += BLOCK_K
            up_ptrs += BLOCK_K
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up                             # silu(gate)·up, fp32
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_ht + cols[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < I)[None, :])


@triton.jit(do_not_specialize=["numel", "expert_offset", "E", "num_pid_m", "T", "S", "n_sb"])
def _down_kernel(h_ptr, w2_ptr, y_ptr, weights_ptr, sorted_ids_ptr, block_expert_ptr,
                 num_padded_ptr, topk_ids_ptr, numel, expert_offset, E, num_pid_m, D, I,
                 stride_ht, stride_we, stride_wn, stride_yt, ws2_ptr, sgate_ptr, T, S, I_S, n_sb, w2_desc,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, SMALL: tl.constexpr, SHARED: tl.constexpr, SHARED_GATE: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, B_TMA: tl.constexpr, PDL: tl.constexpr):
    wait_then_release(PDL)
    pid_m, pid_n = _tile_coords(num_pid_m, D, BLOCK_N, GROUP_M)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % D
    if SHARED:      # as GEMM1: the first n_sb M-blocks are the shared expert's (its w2 [D, I_S], columns j·I ..)
        if pid_m < n_sb:
            rows, row_mask, tokens, j = _shared_rows(pid_m, numel, T, S, BLOCK_M)
            expert = 0
            b_base = ws2_ptr + j * I + offs_n[None, :] * I_S
            if SHARED_GATE:     # Qwen2-MoE: sigmoid(x · wsg) per token, made before this kernel
                route_w = tl.load(sgate_ptr + tokens, mask=row_mask, other=0.0).to(tl.float32)
            else:
                route_w = tl.where(row_mask, 1.0, 0.0)
        else:
            rows, row_mask, expert = _block_rows(pid_m - n_sb, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                                 topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
            b_base = w2_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn
            route_w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0)
    else:
        rows, row_mask, expert = _block_rows(pid_m, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                                             topk_ids_ptr, numel, expert_offset, E, BLOCK_M, SMALL)
        b_base = w2_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn
    if expert < 0:
        return
    offs_k = tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    a_ptrs = h_ptr + rows64[:, None] * stride_ht + offs_k[None, :]           # [BM, BK]
    b_ptrs = b_base + offs_k[:, None]                                          # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if B_TMA:       # w2 as [E·D, I] rows through the TMA unit (never with SHARED)
        n0 = expert * D + pid_n * BLOCK_N              # past D the tile reads the next expert's rows: dropped
        for k in range(0, tl.cdiv(I, BLOCK_K)):
            k_mask = offs_k < I - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = w2_desc.load([n0, k * BLOCK_K])                                # [BN, BK], zeros past I
            acc = tl.dot(a, b.T, acc, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
    else:
        for k in range(0, tl.cdiv(I, BLOCK_K)):
            k_mask = offs_k < I - k * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
    # The routing weight goes in while the sum is still fp32, before the single rounding.
    if not SHARED:
        route_w = tl.load(weights_ptr + rows, mask=row_mask, other=0.0)
    acc = acc * route_w[:, None]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = y_ptr + rows64[:, None] * stride_yt + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < D)[None, :])


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
    _launch_gate_up(x, w13, h, blocks, K, config, precision, pdl, sh)
    y = x.new_empty(rows, D)                                                 # [T·K + T·S, D]
    weights = topk_weights.float().contiguous().view(-1)  # [T·K]; no copy when already fp32
    # after GEMM1: not launched early (pdl.py)
    _launch_down(h, w2, y, weights, blocks, down_config(config), precision, False, sh)
    out = x.new_empty(T, D)
    block_d = min(COMBINE_BLOCK_D, triton.next_power_of_2(D))
    _combine_kernel[(T, triton.cdiv(D, block_d))](y, ids, out, K, expert_offset, E, D, numel, sh.S,
                                                  BLOCK_D=block_d, num_warps=COMBINE_WARPS, **launch_args(pdl))
    return out


def _b_tma(cfg, w: torch.Tensor, b: _Blocks, sh: _Shared) -> bool:
    """Whether this launch reads its weights w through a TMA descriptor: the config's `b_tma` (tuned per bucket), on
    the aligned variant's routed blocks only (the shared expert's virtual blocks and small_dot keep the pointer loads),
    and where the TMA unit can address w (a 16-byte aligned base and rows a multiple of 16 bytes)."""
    return (bool(cfg.get("b_tma", False)) and not b.small and sh.S == 0 and w.data_ptr() % 16 == 0
            and w.shape[-1] * w.element_size() % 16 == 0)


def _weight_desc(w: torch.Tensor, block_n: int, block_k: int):
    """A host TMA descriptor over w [E, N, K] seen as [E·N, K] rows, tiles [block_n, block_k]."""
    return TensorDescriptor.from_tensor(w.view(-1, w.shape[-1]), [block_n, block_k])


def _launch_gate_up(x, w13, h, b: _Blocks, top_k, cfg, precision, pdl, sh: _Shared):
    I, D = h.shape[1], x.shape[1]
    num_pid_m = sh.n_sb + b.num_pid_m
    grid = (num_pid_m * triton.cdiv(I, cfg["BLOCK_N"]),)
    tma = _b_tma(cfg, w13, b, sh)
    _gate_up_kernel[grid](
        x, w13, h, b.sorted_ids, b.block_expert, b.num_padded, b.ids,
        b.numel, top_k, b.expert_offset, b.E, num_pid_m, I, D,
        x.stride(0), w13.stride(0), w13.stride(1), h.stride(0), sh.w13, b.ids.shape[0], sh.S, sh.S * I, sh.n_sb,
        _weight_desc(w13, cfg["BLOCK_N"], cfg["BLOCK_K"]) if tma else w13,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], SMALL=b.small, SHARED=sh.S > 0, DOT_PRECISION=precision, B_TMA=tma,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def _launch_down(h, w2, y, weights, b: _Blocks, cfg, precision, pdl, sh: _Shared):
    D, I = y.shape[1], h.shape[1]
    num_pid_m = sh.n_sb + b.num_pid_m
    grid = (num_pid_m * triton.cdiv(D, cfg["BLOCK_N"]),)
    tma = _b_tma(cfg, w2, b, sh)
    _down_kernel[grid](
        h, w2, y, weights, b.sorted_ids, b.block_expert, b.num_padded, b.ids,
        b.numel, b.expert_offset, b.E, num_pid_m, D, I,
        h.stride(0), w2.stride(0), w2.stride(1), y.stride(0), sh.w2, weights if sh.gate is None else sh.gate,
        b.ids.shape[0], sh.S, sh.S * I, sh.n_sb, _weight_desc(w2, cfg["BLOCK_N"], cfg["BLOCK_K"]) if tma else w2,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], SMALL=b.small, SHARED=sh.S > 0, SHARED_GATE=sh.gate is not None,
        DOT_PRECISION=precision, B_TMA=tma, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **launch_args(pdl))
