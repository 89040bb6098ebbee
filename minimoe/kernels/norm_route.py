"""Residual add + RMSNorm + router logits + top-k routing: an MoE layer's entry in one Triton kernel.

At decode an MoE layer starts with three small kernels: the fused add+RMSNorm (rmsnorm.py), the
router's GEMV logits = h Wgateᵀ (a [E, D] gate: 64 x 2048 bf16 = 256 KB for OLMoE), and the top-k
routing (route.py). Each is a launch of 2-5 µs that moves almost nothing: kilobytes of activations
and one pass over the gate. Measured on an H200 in a CUDA-graphed OLMoE decode step, per layer:
    batch  1: RMSNorm 1.85 µs + cuBLAS router GEMV 5.06 µs + top-k 1.83 µs = 8.7 µs
    batch 64: RMSNorm 2.0  µs + cuBLAS router GEMV 5.3  µs + top-k 1.95 µs = 9.3 µs
Here one program owns one token: it loads the row, adds the residual, normalises, stores h (the
experts read it) and the new residual stream, streams the gate through in [BLOCK_E, D] tiles into a
[E] register vector of logits and routes it with route.py's own top-k helper. One launch, and
neither h nor the logits make a round trip through memory before the router uses them.

The roundings are the unfused engine's, step by step (the test checks them against it):
  s       = x + residual, rounded to x.dtype                       (rmsnorm.py)
  h       = w * (s * rsqrt(mean(s²) + eps) rounded to x.dtype), rounded (rmsnorm.py)
  logits  = h · gate[e] accumulated in fp32, rounded to the gate's dtype: the engine's
            nn.Linear returns x.dtype logits, and only then does the router upcast to float32
  w, ids  = route.py's top-k on float32 logits (softmax first or not, renorm, scaling, ties to
            the lowest index, slots in descending weight, then dynamic skipping if `skip` > 0)

`gate_route` is the same kernel without the norm (HAS_NORM = False): router GEMV + top-k on an
already-normed h, what the engine runs with `--fold-norm off` (or beyond the fold's sizes);
`norm_route` is the whole fold, what `--fold-norm on` runs for these small gates (ops.norm_gate_route,
called from model.Block through MoE.fold_norm and the Router).

Scope: the "softmax_topk" and "topk_softmax" routers, a gate in the activations' dtype and no
selection bias (`usable`). DeepSeek-V2's fp32 gate and V3's biased sigmoid router stay on the
generic path.

Shapes: T tokens, D hidden size, E experts, K experts per token.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release
from .rmsnorm import add_rms_norm_row
from .route import MAX_EXPERTS, _topk_weights, topk_rank

# One program per token re-reads the whole gate (from L2 after the first): worth it at decode sizes
# only. Callers fold the router only up to this many tokens.
MAX_T = 64
# One program streams the whole gate, at the speed of one SM's loads. Measured on the H200 in the
# graphed decode step: Mixtral's 8 x 4096 gate (64 KB): 4.9 µs, against 9.5 µs for RMSNorm + cuBLAS
# GEMV + split-K reduce + top-k; OLMoE's 64 x 2048 (256 KB): 14.4 µs, against 8.7 for the three
# kernels. So only gates up to 64 KB fold; larger ones keep the three-kernel path.
MAX_GATE_BYTES = 64 * 1024
MAX_D = 8192  # the widest row held in registers at once (h stays there for the whole gate loop)
# Gate tile: ~32 elements per thread per iteration (64 B of bf16: four 16-byte loads), pipelined
# NUM_STAGES deep so several tiles are in flight. One program reads the whole gate, so at batch 1
# the kernel is bound by the latency of one SM's loads, not by HBM bandwidth: keep many bytes in
# flight. Not tuned: only gates up to MAX_GATE_BYTES run here, where the kernel is already ~2x
# faster than the three it replaces.
GATE_ELEMS_PER_THREAD = 32
NUM_STAGES = 3


@triton.jit
def _gate_logits(h, gate_ptr, stride_g, D, E, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
                 E_P2: tl.constexpr, STAGES: tl.constexpr):
    """h [BLOCK_D] float32 -> logits [E_P2] float32, rounded to the gate's dtype as nn.Linear's are.

    Each iteration reads BLOCK_E whole gate rows. The row stays unsplit along D because h lives in
    registers, where it cannot be sliced into chunks; the loop-invariant h is broadcast once.
    """
    offs_d = tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_E)
    offs_e = tl.arange(0, E_P2)
    logits = tl.zeros([E_P2], tl.float32)
    for e0 in tl.range(0, E, BLOCK_E, num_stages=STAGES):
        e = e0 + rows
        ok = (e < E)[:, None] & (offs_d < D)[None, :]
        g = tl.load(gate_ptr + e[:, None] * stride_g + offs_d[None, :], mask=ok, other=0.0)
        part = tl.sum(g.to(tl.float32) * h[None, :], axis=1)  # [BLOCK_E], fp32 accumulation
        # scatter the chunk into its slots of the register vector (a register array has no
        # dynamic indexing; BLOCK_E x E_P2 compares are cheap next to the tile's loads)
        logits += tl.sum(tl.where(e[:, None] == offs_e[None, :], part[:, None], 0.0), axis=0)
    return logits.to(gate_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _norm_route_kernel(
    x_ptr, res_ptr, nw_ptr, gate_ptr, h_ptr, res_out_ptr, w_ptr, ids_ptr,
    stride_x, stride_r, stride_g, D, E, eps, scaling, skip,
    K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, E_P2: tl.constexpr,
    BLOCK_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_NORM: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
    RANK: tl.constexpr = False,
):
    wait_then_release(PDL)
    t = tl.program_id(0).to(tl.int64)  # int64: t * stride overflows int32 for long prefills
    if HAS_NORM:
        h = add_rms_norm_row(x_ptr, res_ptr, nw_ptr, h_ptr, res_out_ptr, t, stride_x, stride_r, D, eps,
                             BLOCK_D, HAS_RESIDUAL)
    else:  # gate_route: x already is the normed h
        offs = tl.arange(0, BLOCK_D)
        h = tl.load(x_ptr + t * stride_x + offs, mask=offs < D, other=0.0)
    h = h.to(gate_ptr.dtype.element_ty).to(tl.float32)  # the engine feeds h.to(gate dtype) to the gate
    logits = _gate_logits(h, gate_ptr, stride_g, D, E, BLOCK_D, BLOCK_E, E_P2, STAGES)
    w, ids = _topk_weights(logits, E, scaling, skip, K, E_P2, BLOCK_K, SOFTMAX_FIRST, RENORM, RANK)
    slots = tl.arange(0, BLOCK_K)
    tl.store(w_ptr + t * K + slots, w, mask=slots < K)
    tl.store(ids_ptr + t * K + slots, ids.to(tl.int64), mask=slots < K)


def _launch_shape(D: int, E: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_E, num_warps) for a D-wide row and E gate rows."""
    block_d = triton.next_power_of_2(D)
    num_warps = min(max(block_d // 128, 1), 16)  # 2048 -> 16 warps: 4 row values per thread
    tile = GATE_ELEMS_PER_THREAD * 32 * num_warps  # gate elements per iteration
    block_e = min(max(tile // block_d, 1), triton.next_power_of_2(E))  # 2048 -> 8 rows (32 KB bf16)
    return block_d, block_e, num_warps


def norm_route(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
               gate_weight: torch.Tensor, eps: float, k: int, *, renorm: bool, scaling: float = 1.0,
               softmax_first: bool = True, skip: float = 0.0, pdl: bool = False, out=None):
    """-> (h, residual_out, weights [T, K] float32, ids [T, K] int64) for x [T, D] (or [..., D]).

    h = rmsnorm(x + residual) * norm_weight, shaped like x, in torch's promoted dtype of
    (norm_weight, x) as in rmsnorm.py; residual_out = x + residual, or x itself when residual is
    None (as `RMSNorm.add_forward` returns it). The routing arguments are route.py's `route_topk`'s.
    out: (h, residual_out) tensors to write into (contiguous, shaped like x; residual_out unused when
    residual is None), as torch's out= arguments.
    """
    D = x.shape[-1]
    E = gate_weight.shape[0]
    assert D <= MAX_D and 1 <= k <= E <= MAX_EXPERTS, (D, E, k)
    assert norm_weight.shape == (D,) and norm_weight.is_contiguous(), (norm_weight.shape, D)
    assert gate_weight.shape == (E, D) and gate_weight.stride(1) == 1, (gate_weight.shape, D)
    assert gate_weight.dtype == x.dtype, "a gate in another dtype (DeepSeek's fp32) is not fused"
    x2 = x.reshape(-1, D)
    assert x2.stride(-1) == 1
    T = x2.shape[0]
    h = out[0] if out is not None else torch.empty(x.shape, dtype=torch.promote_types(norm_weight.dtype, x.dtype),
                                                   device=x.device)
    res_out, r2 = x, x2  # no residual: the stream is x, and the kernel never reads r2
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype, (residual.shape, residual.dtype)
        r2 = residual.reshape(-1, D)
        assert r2.stride(-1) == 1
        res_out = out[1] if out is not None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    assert h.is_contiguous() and res_out.is_contiguous() and h.numel() == res_out.numel() == x.numel()
    w = torch.empty(T, k, dtype=torch.float32, device=x.device)
    ids = torch.empty(T, k, dtype=torch.int64, device=x.device)
    if T == 0:
        return h, res_out, w, ids
    block_d, block_e, num_warps = _launch_shape(D, E)
    _norm_route_kernel[(T,)](
        x2, r2, norm_weight, gate_weight, h, res_out, w, ids,
        x2.stride(0), r2.stride(0), gate_weight.stride(0), D, E, eps, float(scaling), float(skip),
        K=k, BLOCK_D=block_d, BLOCK_E=block_e, E_P2=triton.next_power_of_2(E),
        BLOCK_K=triton.next_power_of_2(k), HAS_RESIDUAL=residual is not None, HAS_NORM=True,
        SOFTMAX_FIRST=softmax_first, RENORM=renorm, STAGES=NUM_STAGES, RANK=topk_rank(triton.next_power_of_2(E), num_warps),
        num_warps=num_warps, **launch_args(pdl),
    )
    return h, res_out, w, ids


def gate_route(h: torch.Tensor, gate_weight: torch.Tensor, k: int, *, renorm: bool, scaling: float = 1.0,
               softmax_first: bool = True, skip: float = 0.0,
               pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Router GEMV + top-k in one launch: h [T, D] (normed) -> (weights [T, K] float32, ids [T, K] int64).
    logits = h · gate[e] in fp32, rounded to the gate's dtype (nn.Linear's output), then route.py's top-k
    (and its skipping: skip = beta, 0 = off; a skipped slot has weight 0 and id -1)."""
    T, D = h.shape
    E = gate_weight.shape[0]
    assert D <= MAX_D and 1 <= k <= E <= MAX_EXPERTS, (D, E, k)
    assert gate_weight.shape == (E, D) and gate_weight.stride(1) == 1, (gate_weight.shape, D)
    assert gate_weight.dtype == h.dtype and h.stride(-1) == 1, (gate_weight.dtype, h.dtype)
    w = torch.empty(T, k, dtype=torch.float32, device=h.device)
    ids = torch.empty(T, k, dtype=torch.int64, device=h.device)
    if T == 0:
        return w, ids
    block_d, block_e, num_warps = _launch_shape(D, E)
    _norm_route_kernel[(T,)](
        h, h, h, gate_weight, h, h, w, ids,  # norm and residual pointers are never read
        h.stride(0), 0, gate_weight.stride(0), D, E, 0.0, float(scaling), float(skip),
        K=k, BLOCK_D=block_d, BLOCK_E=block_e, E_P2=triton.next_power_of_2(E),
        BLOCK_K=triton.next_power_of_2(k), HAS_RESIDUAL=False, HAS_NORM=False,
        SOFTMAX_FIRST=softmax_first, RENORM=renorm, STAGES=NUM_STAGES, RANK=topk_rank(triton.next_power_of_2(E), num_warps),
        num_warps=num_warps, **launch_args(pdl),
    )
    return w, ids


def usable(E: int, D: int, fusable_router: bool, gate_dtype: torch.dtype, x_dtype: torch.dtype) -> bool:
    """Whether `norm_route` computes this layer's routing exactly as the generic path does:
    fusable_router = a "softmax_topk" or "topk_softmax" router with no selection bias."""
    return (fusable_router and gate_dtype == x_dtype
            and E <= MAX_EXPERTS and D <= MAX_D and E * D * gate_dtype.itemsize <= MAX_GATE_BYTES)
