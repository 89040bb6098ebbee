"""The attention's o projection, the residual add, the MoE layer's RMSNorm and its router in ONE launch at decode.

Shape legend: T tokens (1-2), A the o projection's input width (H·dv), D hidden size, E experts, K experts per token.

At batch 1 a MoE layer goes, after its attention,

    o       = a Woᵀ                          [T, D]   a GEMV (dense_gemv.py: ~256 programs, each BLOCK_N columns)
    r       = x + o  (the residual stream)   [T, D]
    h       = rmsnorm(r) · g                  [T, D]
    logits  = h Wgateᵀ;  w, ids = top-k      [T, K]   gate_splitk_fold.py: one more launch, whose programs first
                                                      re-read the whole row r for 1 / rms

and the second launch moves ~256 KB: its cost is latency (4.5-4.8 µs a layer PDL-off, plus a boundary). The fold
here puts the router into the GEMV's epilogue, using that the RMSNorm's scale is one number per token:

    logits[e] = Σ_c Wgate[e, c] · g[c] · r[c] / rms(r)   =   z[e] / rms(r),   z = Wgate · (g ⊙ r)

z is linear in r, so it splits over the GEMV's column blocks: the program that owns columns c of o (it has just
computed o[c], hence r[c]) adds its share Σ_{c in block} Wgate[:, c] · g[c] · r[c] to an [E] accumulator. The last
program of the token to arrive (an arrival counter, as the router fold's) reads z, reduces its token's whole row r
(written by every program) for 1 / rms, writes h, and routes (route.py's `_topk_weights`).

Determinism: the shares are added as 64-bit fixed point (2^-32 units) with integer atomics, so their sum is exact
and the same in every order: a CUDA-graph replay and an eager call give the same bits (fp32 atomics would not).
The programs spread their atomics over REPLICAS copies of the accumulator (same-address atomics serialise in the L2);
the last program reads every copy in one load, zeroes them with stores and resets the counter: all are left zeroed
(KVCache.route_acc / counters).

Roundings, against the unfused path (dense_gemv -> rmsnorm -> gate_splitk): o, r and h are bit for bit the same
(the same GEMV tile and loop, rmsnorm.py's arithmetic, the fp32 order of mean(r²) aside); the logits are not.
Unfused, h is rounded to x's dtype before the gate GEMV; here the gate sees g ⊙ r in fp32 and the scale comes
after, so a logit can differ by about one bf16 rounding of h (a relative ~2^-9 per term, averaged over D) and a
near-tie between two experts can go the other way. That is why `--fold-router` is a switch of its own, and
tests/test_o_route.py checks the logits against an fp64 oracle of this formula.

Scope (`usable`): T <= MAX_T, a plain o weight in a's dtype, no o bias, E <= MAX_EXPERTS, D <= MAX_ROW, a router of
route.py's kinds (softmax_topk, topk_softmax) without a selection bias (the caller checks).
Design sources: the router fold's last-program epilogue (gate_splitk.py, itself CUTLASS's parallel split-K),
and the residual add + RMSNorm folded into the epilogue of the operation before them (TensorRT-LLM's and FlashInfer's
all-reduce + residual + RMSNorm kernels); the router's share-wise sum is ours.
"""
import torch
import triton
import triton.language as tl

from .dense_gemv import dense_config
from .pdl import launch_args, wait_then_release
from .route import MAX_EXPERTS, _topk_weights, topk_rank

MAX_T = 2          # tokens a step (the stream GEMV's regime); one counter and R copies of an [E] accumulator a token
MAX_ROW = 8192     # the last program holds its token's whole row r in registers for 1 / rms
FIX = tl.constexpr(4294967296.0)  # 2^32: fixed-point units of the z shares (|z| up to 2^31 before int64 overflows)
CONFIG: dict | None = None   # a tile over dense_config's for the GEMV part (in-step A/B's; scripts/step_probe.py)
# Copies of each token's [E] accumulator (rounded down to a power of two, at most the program count); program p adds to
# copy p % REPLICAS and the last program sums them (exact, in integers) in one [R, E] load. Atomics on one address
# serialise in the L2: with one copy Qwen3-30B-A3B's 1,024 programs made the step +38.7% (session 30, call 3; OLMoE's 256
# -0.07%). Graphed bs-1 step, calls 3-4: 8 copies OLMoE -1.49 / -1.41%, Qwen1.5-MoE -2.04 / -1.93% (32: -1.30 / -1.21%,
# -1.60 / -1.50%); DeepSeek-V2-Lite (an fp32 gate) -0.86 / -0.68% at 8, -1.41 / -1.37% at 32 (STEP_SHAPES);
# Mixtral-8x7B -1.30 to -1.32% at 8, 16 and 32. (Call 2 read each copy by an atomic exchange: ~0.5 µs apiece, in series.)
# Read at call time (step_probe knobs).
REPLICAS = 8
MAX_REPLICAS = 32
# (E, D, A, gate dtype) -> {"replicas": R, "tile": dense_gemv keys}: what the graphed bs-1 step chose per measured shape,
# over REPLICAS and dense_config's tile (CONFIG, a probe's knob, wins over both). DeepSeek-V2-Lite (call 6): the GEMV
# part on [4, 1024] tiles with 2 warps, -2.49% a step against dense_config's [8, 512] x 4 (4 warps -1.68%; bench bs 1
# 499.4 -> 508.1 tok/s at 4 warps in the same call; [16, 256] +3.59%); OLMoE's shape within -0.28 / +0.15%: unchanged.
STEP_SHAPES: dict[tuple[int, int, int, torch.dtype], dict] = {
    (64, 2048, 2048, torch.float32): {"replicas": 32,
                                      "tile": {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 2, "num_stages": 3}},
}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit(do_not_specialize=["T", "E", "eps", "scaling", "skip"])
def _o_route_kernel(a_ptr, wo_ptr, x_ptr, res_out_ptr, gate_ptr, norm_ptr, h_ptr, acc_ptr, cnt_ptr, w_ptr, ids_ptr,
                    T, D, A, E, stride_a, stride_wo, stride_x, stride_g, eps, scaling, skip,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, E_P2: tl.constexpr,
                    K: tl.constexpr, BLOCK_TOP: tl.constexpr, SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr,
                    BLOCK_ROW: tl.constexpr, R: tl.constexpr, PDL: tl.constexpr, RANK: tl.constexpr = False):
    """Program (t, block): o[t, cols] as dense_gemv, r = x + o stored, z shares added; the token's last program
    writes h[t], w[t], ids[t]."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(D, BLOCK_N)
    t, col0 = pid // n_blocks, (pid % n_blocks) * BLOCK_N
    t64 = t.to(tl.int64)
    cols = col0 + tl.arange(0, BLOCK_N)
    c_ok = cols < D
    rows = cols % D                                                      # in range for the weight loads
    offs_e = tl.arange(0, E_P2)
    e_ok = offs_e < E
    # weights only (no kernel writes them): loaded before the wait, so they overlap the predecessor's drain
    gt = tl.load(gate_ptr + offs_e.to(tl.int64)[:, None] * stride_g + rows[None, :],
                 mask=e_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)          # [E_P2, BN]
    nw = tl.load(norm_ptr + rows, mask=c_ok, other=0.0).to(tl.float32)                  # [BN]
    wait_then_release(PDL)
    # the GEMV, as dense_gemv's loop (one slot of weight 1): the same chunks in the same order, the same bits
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in tl.range(0, A, BLOCK_K, num_stages=STAGES):
        k_mask = offs_k < A - k0
        av = tl.load(a_ptr + t64 * stride_a + k0 + offs_k, mask=k_mask, other=0.0)
        w = tl.load(wo_ptr + rows.to(tl.int64)[:, None] * stride_wo + k0 + offs_k[None, :], mask=k_mask[None, :],
                    other=0.0, eviction_policy="evict_first")
        acc += tl.sum(w.to(tl.float32) * av.to(tl.float32)[None, :], axis=1)
    x_t = x_ptr.dtype.element_ty
    o = acc.to(x_t)                                                      # dense_gemv's output rounding
    r = (o.to(tl.float32) + tl.load(x_ptr + t64 * stride_x + cols, mask=c_ok, other=0.0).to(tl.float32)).to(x_t)
    tl.store(res_out_ptr + t64 * D + cols, r, mask=c_ok)
    share = tl.sum(gt * (nw * r.to(tl.float32))[None, :], axis=1)       # [E_P2] this block's part of z
    copy = acc_ptr + (t64 * R + pid % R) * E_P2                         # this program's copy of the accumulator
    tl.atomic_add(copy + offs_e, (share * FIX).to(tl.int64), mask=e_ok, sem="relaxed")
    tl.debug_barrier()                                                   # every thread's shares out before the count
    cnt = cnt_ptr + t
    if tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu") == n_blocks - 1:
        tl.atomic_xchg(cnt, 0)                                           # the token's last program: reset, then finish
        # every copy in one load (no atomic round trip each: call 2's exchanges cost ~0.5 µs apiece, in series) and
        # the token's row in the same phase; the acquire above makes the other programs' writes visible, and
        # volatile loads read them from the L2
        copies = acc_ptr + (t64 * R + tl.arange(0, R))[:, None] * E_P2 + offs_e[None, :]     # [R, E_P2]
        zi = tl.load(copies, mask=e_ok[None, :], other=0, volatile=True)
        offs_row = tl.arange(0, BLOCK_ROW)
        row_ok = offs_row < D
        row = tl.load(res_out_ptr + t64 * D + offs_row, mask=row_ok, other=0.0, volatile=True).to(tl.float32)
        tl.store(copies, tl.zeros([R, E_P2], tl.int64), mask=e_ok[None, :])      # left zeroed for the next call
        z = tl.sum(zi, axis=0).to(tl.float32) * (1.0 / FIX)             # exact: an integer sum
        inv = tl.rsqrt(tl.sum(row * row, axis=0) / D + eps)             # rmsnorm.py's 1 / rms
        g_row = tl.load(norm_ptr + offs_row, mask=row_ok, other=0.0).to(tl.float32)
        h = g_row * (row * inv).to(x_t).to(tl.float32)                  # rounded before the weight, as rmsnorm.py
        tl.store(h_ptr + t64 * D + offs_row, h.to(h_ptr.dtype.element_ty), mask=row_ok)
        logits = (z * inv).to(gate_ptr.dtype.element_ty).to(tl.float32)  # nn.Linear's gate-dtype logits
        wts, ids = _topk_weights(logits, E, scaling, skip, K, E_P2, BLOCK_TOP, SOFTMAX_FIRST, RENORM, RANK)
        slots = tl.arange(0, BLOCK_TOP)
        tl.store(w_ptr + t64 * K + slots, wts, mask=slots < K)
        tl.store(ids_ptr + t64 * K + slots, ids.to(tl.int64), mask=slots < K)


def usable(T: int, A: int, D: int, E: int, wo: torch.Tensor, a_dtype: torch.dtype, gate_dtype: torch.dtype) -> bool:
    """Whether `o_norm_route` runs x [T, A] through this o weight (plain, contiguous, a's dtype) and a gate of E."""
    return (1 <= T <= MAX_T and 1 <= E <= MAX_EXPERTS and 1 <= D <= MAX_ROW and a_dtype in _DTYPES
            and gate_dtype in _DTYPES and type(wo) in (torch.Tensor, torch.nn.Parameter) and wo.dtype == a_dtype
            and tuple(wo.shape) == (D, A) and wo.is_contiguous())


def o_norm_route(a: torch.Tensor, wo: torch.Tensor, x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                 gate_weight: torch.Tensor, k: int, *, renorm: bool, scaling: float = 1.0, softmax_first: bool = True,
                 skip: float = 0.0, counters: torch.Tensor | None = None, acc: torch.Tensor | None = None,
                 pdl: bool = False, config: dict | None = None):
    """The o projection + residual add + RMSNorm + router of a MoE layer at decode, one launch:
    a [T, A] (the attention heads' output), wo [D, A], x [T, D] (the residual stream before this layer's attention
    output is added), norm_weight [D], gate [E, D] -> (h [T, D] = rmsnorm(x + a Woᵀ) · g in promote(g, x) dtype,
    r [T, D] = x + a Woᵀ in x's dtype, weights [T, K] float32, ids [T, K] int64), as dense_gemv -> rms_norm ->
    gate_route except the logits' rounding (module docstring). counters: zeroed int32 (>= T), acc: zeroed int64
    (>= T · REPLICAS · next_pow2(E)); both are left zeroed; None allocates them (memset launches). skip: dynamic expert
    skipping's beta (route.py). config: dense_gemv's tile keys for the GEMV part. Raises ValueError for inputs outside `usable` or bad shapes."""
    T, A = a.shape
    D = wo.shape[0]
    E = gate_weight.shape[0]
    if not usable(T, A, D, E, wo, a.dtype, gate_weight.dtype) or not 1 <= k <= E:
        raise ValueError(f"o_norm_route: a {tuple(a.shape)} {a.dtype}, wo {tuple(wo.shape)} {wo.dtype}, gate "
                         f"{tuple(gate_weight.shape)} {gate_weight.dtype}, k {k}: outside what the kernel runs")
    if (x.shape != (T, D) or x.dtype != a.dtype or x.stride(-1) != 1 or a.stride(-1) != 1
            or gate_weight.shape[1] != D or gate_weight.stride(1) != 1 or norm_weight.shape != (D,)
            or not norm_weight.is_contiguous()):
        raise ValueError(f"o_norm_route: x {tuple(x.shape)}, gate {tuple(gate_weight.shape)}, norm "
                         f"{tuple(norm_weight.shape)} do not fit a {tuple(a.shape)} and wo {tuple(wo.shape)}")
    e_p2 = triton.next_power_of_2(E)
    dev = a.device
    shape = STEP_SHAPES.get((E, D, A, gate_weight.dtype), {}) if dev.type == "cuda" else {}
    base = {**dense_config(D, A), **shape.get("tile", {})}
    cfg = {key: (config or CONFIG or {}).get(key, base[key]) for key in base}
    n_blocks = triton.cdiv(D, cfg["BLOCK_N"])
    R = max(1, min(int(shape.get("replicas", REPLICAS)), MAX_REPLICAS, n_blocks))
    R = 1 << (R.bit_length() - 1)                                           # a power of two (one [R, E] load)
    counters = torch.zeros(T, dtype=torch.int32, device=dev) if counters is None else counters
    acc = torch.zeros(T * R * e_p2, dtype=torch.int64, device=dev) if acc is None else acc
    if (counters.dtype != torch.int32 or counters.numel() < T or acc.dtype != torch.int64
            or acc.numel() < T * R * e_p2):
        raise ValueError(f"o_norm_route: counters int32 >= {T} and acc int64 >= {T * R * e_p2} entries needed")
    h = torch.empty(T, D, dtype=torch.promote_types(norm_weight.dtype, x.dtype), device=dev)
    r = torch.empty(T, D, dtype=x.dtype, device=dev)
    w = torch.empty(T, k, dtype=torch.float32, device=dev)
    ids = torch.empty(T, k, dtype=torch.int64, device=dev)
    _o_route_kernel[(T * n_blocks,)](
        a, wo, x, r, gate_weight, norm_weight, h, acc, counters, w, ids,
        T, D, A, E, a.stride(0), wo.stride(0), x.stride(0), gate_weight.stride(0), float(eps), float(scaling),
        float(skip),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"], E_P2=e_p2, K=k,
        BLOCK_TOP=triton.next_power_of_2(k), SOFTMAX_FIRST=softmax_first, RENORM=renorm,
        BLOCK_ROW=triton.next_power_of_2(D), R=R, RANK=topk_rank(e_p2, cfg["num_warps"]), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **launch_args(pdl))
    return h, r, w, ids
