"""The MoE layer's whole entry at decode in ONE launch: residual add + RMSNorm + split-K router GEMV + top-k.

gate_splitk.py computes the router in two launches: `_gate_partial_kernel` writes each split's partial logits, then
`_reduce_route_kernel` sums them in split order and routes. `norm_gate_route_splitk` here folds both, and the
RMSNorm in front of them, into one launch (model.Block folds the MoE layer's RMSNorm into the router there,
`--fold-norm`): kernel 1 with NORM (each program normalises its own D tiles, after reducing the token's whole row
for 1 / rms) and ROUTE (the last program of a token block to finish, counted with an atomic arrival counter, does
kernel 2's work). The counter lives in KVCache.counters, zeroed once and reset by that last program, so graph
replays and eager calls find it zeroed; two such kernels must not run at once on one counter (the engine runs one
stream). OLMoE's graphed step on the H200 (eighth session): RMSNorm 1.74 + gate 1.84 + reduce 2.45 µs + two gaps
-> 4.89 µs.

The kernel, its tiles and its knobs stay in gate_splitk.py, and this launcher reads every one of them there at call
time (`gate_splitk.X`): the step probe's `minimoe.kernels.gate_splitk.PREFETCH_GATE`, `.WAVE_PROGRAMS`, `.BLOCK_D`
... reach the fold as before. The PDL prefetch of the gate (PREFETCH, with PREFETCH_GATE / PREFETCH_GATE_FP32)
runs only where `_prefetchable` says the bulk L2 prefetch is well-formed.

Shapes: T tokens (one block of up to TOKEN_BLOCK = 16 per arrival counter), D hidden size (<= MAX_ROW: a token's
whole row is held in registers for 1 / rms), E experts, K experts per token, S = KSPLIT splits of D;
x, residual, h, residual_out [T, D], norm_weight [D], gate [E, D], weights [T, K] float32, ids [T, K] int64,
counters int32 [>= cdiv(T, 16)], partials [S, T, E] float32 (a workspace).
"""

import torch
import triton

from . import gate_splitk
from .pdl import launch_args
from .route import topk_rank


def norm_gate_route_splitk(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                           gate_weight: torch.Tensor, k: int, *, renorm: bool, scaling: float = 1.0,
                           softmax_first: bool = True, skip: float = 0.0, counters: torch.Tensor | None = None,
                           pdl: bool = False, splits: int | None = None, out=None):
    """Residual add + RMSNorm + split-K router GEMV + top-k in one launch (the MoE layer's entry at decode):
    x, residual [T, D] (residual None: the first layer) -> (h [T, D] = rmsnorm(x + residual) * norm_weight in
    torch's promoted dtype, residual_out [T, D] = x + residual (x itself when residual is None),
    weights [T, K] float32, ids [T, K] int64): `rms_norm` then `gate_route_splitk`, the same roundings
    except the fp32 order of mean(s²). counters: zeroed int32, >= cdiv(T, 16) entries, left zeroed
    (KVCache.counters); None allocates zeroed ones (a memset launch). out: (h, residual_out) tensors to
    write into (contiguous [T, D]; residual_out unused when residual is None), as torch's out= arguments.
    Raises AssertionError on bad shapes."""
    gs = gate_splitk                 # every tile, knob and kernel read from there at call time
    T, D = x.shape
    E = gate_weight.shape[0]
    assert 1 <= k <= E <= gs.MAX_EXPERTS and D <= gs.MAX_ROW, (k, E, D)
    assert gate_weight.shape == (E, D) and gate_weight.stride(1) == 1, (gate_weight.shape, D)
    assert norm_weight.shape == (D,) and norm_weight.is_contiguous(), (norm_weight.shape, D)
    assert x.stride(-1) == 1 and x.dtype in gs._DTYPES and gate_weight.dtype in gs._DTYPES, (x.dtype, gate_weight.dtype)
    h = out[0] if out is not None else torch.empty(T, D, dtype=torch.promote_types(norm_weight.dtype, x.dtype),
                                                   device=x.device)
    res_out, r = x, x
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.stride(-1) == 1
        res_out = out[1] if out is not None else torch.empty(T, D, dtype=x.dtype, device=x.device)
        r = residual
    assert h.shape == res_out.shape == (T, D) and h.is_contiguous() and res_out.is_contiguous()
    w = torch.empty(T, k, dtype=torch.float32, device=x.device)
    ids = torch.empty(T, k, dtype=torch.int64, device=x.device)
    if T == 0:
        return h, res_out, w, ids
    tile_e, tile_d, prefetch = gs.gate_tiles(gate_weight.dtype, fold=True)
    block_d = min(tile_d, max(triton.next_power_of_2(D), 16))
    n_tiles = triton.cdiv(D, block_d)
    block_e = min(tile_e, triton.next_power_of_2(E))
    if splits is None:
        splits = gs.default_splits(T, E, D, gs.WAVE_PROGRAMS or gs._sm_count(x.device), block_d, block_e)
    splits = max(1, min(int(splits), n_tiles))
    block_t = min(triton.next_power_of_2(T), gs.TOKEN_BLOCK)
    t_blocks = triton.cdiv(T, block_t)
    if counters is None or counters.numel() < t_blocks:
        counters = torch.zeros(t_blocks, dtype=torch.int32, device=x.device)
    assert counters.dtype == torch.int32 and counters.device == x.device
    part = torch.empty(splits, T, E, dtype=torch.float32, device=x.device)
    e_p2 = triton.next_power_of_2(E)
    warps = max(1, min(4, block_e * block_d // 256))                    # 16 x 256: 4 warps, 32 values each
    gs._gate_partial_kernel[(triton.cdiv(E, block_e), splits, t_blocks)](
        x, gate_weight, part, T, E, D, x.stride(0), gate_weight.stride(0), n_tiles, splits,
        r, norm_weight, h, res_out, r.stride(0), eps, counters, w, ids, float(scaling), float(skip),
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_D=block_d, NORM=True, HAS_RESIDUAL=residual is not None,
        BLOCK_ROW=triton.next_power_of_2(D), ROUTE=True, K=k, E_P2=e_p2,
        BLOCK_S=min(max(gs.REDUCE_ELEMS // e_p2, 1), triton.next_power_of_2(splits)),
        BLOCK_K=triton.next_power_of_2(k), SOFTMAX_FIRST=softmax_first, RENORM=renorm,
        PREFETCH=prefetch and pdl and _prefetchable(gate_weight, block_d), ELT_BYTES=gate_weight.element_size(),
        HOIST=gs.HOIST_TILE and n_tiles == splits,                      # every split one tile: first + 1 == last
        RANK=topk_rank(e_p2, warps), num_warps=warps, **launch_args(pdl),
    )
    return h, res_out, w, ids


def _prefetchable(gate: torch.Tensor, block_d: int) -> bool:
    """Whether PREFETCH's bulk L2 prefetch is well-formed for this gate: whole D tiles, 16-byte rows and base."""
    return (gate.shape[1] % block_d == 0 and gate.stride(0) * gate.element_size() % 16 == 0
            and gate.data_ptr() % 16 == 0)
