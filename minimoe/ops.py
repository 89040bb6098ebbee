"""The small ops of a layer, each PyTorch function beside its Triton kernel, chosen once per run.

At decode sizes a layer's small ops (RMSNorm with its residual add; q/k norm + rotary embedding +
the KV-cache write; the router's top-k) move a few kilobytes each but cost PyTorch several kernel
launches apiece. minimoe/kernels/ has one Triton kernel for each. This file is the one place where
the two meet: every op has a PyTorch twin here (the oracle the kernel tests compare against, and
what runs on a CPU) and the kernel beside it, and `ops_for(settings)` hands a module the set the run
asked for (`RunSettings.ops`: torch | triton; `RunSettings.pdl` bound into every Triton launch).
Modules never test settings themselves: they call `ops_for(self.settings).rms_norm(...)`.

Each op keeps the PyTorch path's roundings step by step (the kernels' docstrings list them), so the
two agree bit for bit in half precision except where a different summation order moves an fp32
ulp. Shapes: T tokens, B batch, S new tokens, D hidden, H / Hkv heads, d head dim, E experts, K top-k.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from .rope import apply_rope
from .router import RouterSpec, route_softmax_topk, route_topk_softmax, skip_small
from .sampling import argmax

try:   # Triton ships with CUDA builds of torch and with the test extra; a bare CPU install has none
    import triton  # noqa: F401
except ImportError:
    triton = None
if triton is not None:
    from .kernels import mla_expand as _mla_expand, mla_rope as _mla_rope, norm_route as _norm_route
    from .kernels import rmsnorm as _rmsnorm, rope as _rope
    from .kernels import gate_splitk as _gate_splitk, greedy as _greedy, route as _route, silu_mul as _silu_mul
    from .kernels import gate_splitk_fold as _gate_splitk_fold


# ---- the PyTorch twins ---------------------------------------------------------------------------

def rms_norm_torch(x, weight, eps: float, residual=None, *, pdl: bool = False):
    """(w * s / rms(s), s) with s = x + residual (rounded to x.dtype), or (w * x / rms(x), None).
    Normalised in float32 and cast back before the weight, as Llama-style models do."""
    s = x if residual is None else x + residual
    xf = s.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype), (None if residual is None else s)


def qkv_rope_cache_torch(qkv, positions, cos, sin, k_cache, v_cache, n_heads: int, n_kv_heads: int,
                         head_dim: int, *, qk_norm: str | None = None, q_norm_w=None, k_norm_w=None,
                         eps: float = 1e-6, interleave: bool = False, clip_qkv: float | None = None,
                         rows: bool = False, pdl: bool = False) -> torch.Tensor:
    """qkv [B, S, (H + 2Hkv) d] -> q [B, S, H, d] normed and rotated; writes rotated k and v into
    k_cache / v_cache [B, S_max, Hkv, d] at `positions` [B, S]. cos/sin: the full tables [P, d/2], or with `rows`
    this step's rows [B·S, d/2] in token order."""
    B, S, _ = qkv.shape
    H, Hkv, d = n_heads, n_kv_heads, head_dim
    q, k, v = qkv.split([H * d, Hkv * d, Hkv * d], dim=-1)
    if qk_norm == "full":                     # OLMoE: normalise the whole projection, then split heads
        q, k = rms_norm_torch(q, q_norm_w, eps)[0], rms_norm_torch(k, k_norm_w, eps)[0]
    if clip_qkv is not None:
        q, k, v = (t.clamp(-clip_qkv, clip_qkv) for t in (q, k, v))
    q, k, v = q.reshape(B, S, H, d), k.reshape(B, S, Hkv, d), v.reshape(B, S, Hkv, d)
    if qk_norm == "head":                     # Qwen3: normalise each head separately
        q, k = rms_norm_torch(q, q_norm_w, eps)[0], rms_norm_torch(k, k_norm_w, eps)[0]
    if rows:
        cos_bs, sin_bs = cos.reshape(B, S, -1), sin.reshape(B, S, -1)        # [B, S, d/2]
    else:
        cos_bs, sin_bs = cos[positions], sin[positions]                      # [B, S, d/2]
    q, k = apply_rope(q, cos_bs, sin_bs, interleave), apply_rope(k, cos_bs, sin_bs, interleave)
    rows = torch.arange(B, device=qkv.device)[:, None]                       # [B, 1]
    k_cache[rows, positions] = k
    v_cache[rows, positions] = v
    return q


def silu_mul_torch(x, *, pdl: bool = False):
    """x [..., 2I] (gate, then up) -> silu(gate) * up [..., I]: SwiGLU's activation (layers.py)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def mla_rope_cache_torch(q, kv, positions, cos, sin, latent, norm_weight, eps: float, *, nope: int,
                         interleave: bool, q_pe_out, absorb=None, pdl: bool = False) -> None:
    """MLA's prologue (mla.py): latent[b, positions] = [rmsnorm(kv[..., :r]) * w, rope(kv[..., r:])] and
    q_pe_out = rope(q[..., nope:]). q [B, S, H, nope + rope], kv [B, S, r + rope], latent
    [B, S_max, r + rope], q_pe_out [B, S, H, rope] (may alias q's rope columns); tables [P, rope/2].
    absorb (W_uk [H, nope, r], q_lat [B, S, H, r]): also q_lat = q_nope @ W_uk per head (one batched GEMM)."""
    if absorb is not None and positions.numel():
        w_uk, q_lat = absorb
        T, H = positions.numel(), q.shape[2]
        torch.bmm(q[..., :nope].reshape(T, H, nope).transpose(0, 1), w_uk, out=q_lat.view(T, H, -1).transpose(0, 1))
    B, S = positions.shape
    rope = q.shape[-1] - nope
    c, k_pe = kv.split([kv.shape[-1] - rope, rope], dim=-1)
    c = rms_norm_torch(c, norm_weight, eps)[0]                                # [B, S, r]
    cos_bs, sin_bs = cos[positions], sin[positions]                          # [B, S, rope/2]
    k_pe = apply_rope(k_pe[:, :, None, :], cos_bs, sin_bs, interleave)[:, :, 0]
    q_pe_out.copy_(apply_rope(q[..., nope:], cos_bs, sin_bs, interleave))
    rows = torch.arange(B, device=q.device)[:, None]                         # [B, 1]
    latent[rows, positions] = torch.cat([c, k_pe], dim=-1).to(latent.dtype)


def mla_expand_k_torch(kv, k_pe, nope: int, pdl: bool = False):
    """MLA prefill's per-head key: kv [B, S, H, nope + v], k_pe [B, S, rope] -> [B, S, H, nope + rope] =
    [kv[..., :nope], k_pe under every head] (kernels/mla_expand.py is the one-pass twin)."""
    B, S, H, _ = kv.shape
    return torch.cat([kv[..., :nope], k_pe[:, :, None, :].expand(B, S, H, -1)], dim=-1)


def route_topk_torch(logits, k: int, *, renorm: bool, scaling: float = 1.0, softmax_first: bool = True,
                     skip: float = 0.0, pdl: bool = False):
    """logits [T, E] -> (weights [T, K] float32, ids [T, K] int64): router.py's routers in float32,
    then `skip_small` when skip (beta) > 0: a skipped slot has weight 0 and id -1."""
    spec = RouterSpec("softmax_topk" if softmax_first else "topk_softmax", k, renorm, scaling)
    w, ids = (route_softmax_topk if softmax_first else route_topk_softmax)(logits.float(), spec)
    return skip_small(w, ids, skip) if skip > 0 else (w, ids)


def gate_route_torch(h, gate_weight, k: int, *, renorm: bool, scaling: float = 1.0, softmax_first: bool = True,
                     skip: float = 0.0, pdl: bool = False):
    """h [T, D] -> the gate's logits [T, E] (in the gate's dtype, as nn.Linear returns them) -> top-k."""
    logits = F.linear(h.to(gate_weight.dtype), gate_weight)
    return route_topk_torch(logits, k, renorm=renorm, scaling=scaling, softmax_first=softmax_first, skip=skip)


def norm_gate_route_torch(x, residual, norm_weight, eps: float, gate_weight, k: int, *, renorm: bool,
                          scaling: float = 1.0, softmax_first: bool = True, skip: float = 0.0, counters=None,
                          out=None, pdl: bool = False):
    """The MoE layer's entry: x, residual [T, D] -> (h = rmsnorm(x + residual) * w, x + residual (x when
    residual is None), weights [T, K], ids [T, K]): `rms_norm_torch` then `gate_route_torch`. out: (h,
    residual_out) to write into, as torch's out= (residual_out unused when residual is None)."""
    h, s = rms_norm_torch(x, norm_weight, eps, residual)
    w, ids = gate_route_torch(h, gate_weight, k, renorm=renorm, scaling=scaling, softmax_first=softmax_first,
                              skip=skip)
    if out is not None:
        h = out[0].copy_(h)
        s = None if s is None else out[1].copy_(s)
    return h, (x if s is None else s), w, ids


def greedy_torch(logits, nonfinite, *, pdl: bool = False, counters=None, out=None):
    """logits [B, V] -> tokens [B] int64 (argmax, first index); nonfinite (0-dim int64, on the device)
    += the rows holding a NaN or an inf (the count kernels/greedy.py keeps). counters: kernels/greedy.py's scratch
    (unused here). out: an int64 [B] tensor to write the tokens into (returned), as torch's out= arguments."""
    nonfinite += nonfinite_rows(logits)
    tokens = argmax(logits)
    return tokens if out is None else out.copy_(tokens)


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> 0-dim int64 on the device: how many rows hold a NaN or an inf (no host sync)."""
    return (~torch.isfinite(logits).all(-1)).sum()


def _triton_greedy(logits, nonfinite, *, pdl: bool = False, counters=None, out=None):
    if logits.device.type != "cuda" or logits.stride(-1) != 1:   # the interpreter is for tests only
        return greedy_torch(logits, nonfinite, out=out)
    return _greedy.greedy_tail(logits, nonfinite, pdl=pdl, counters=counters, out=out)


# ---- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ops:
    name: str
    rms_norm: Callable          # (x [..., N], weight [N], eps, residual=None) -> (y, x + residual | None)
    qkv_rope_cache: Callable    # (qkv [B, S, (H+2Hkv)d], positions [B, S], cos, sin, k_cache, v_cache, ...) -> q
    mla_rope_cache: Callable    # (q, kv, positions, cos, sin, latent, norm_w, eps, *, nope, interleave, q_pe_out,
                                #  absorb=(W_uk, q_lat) | None)
    silu_mul: Callable          # (x [..., 2I]) -> silu(x[..., :I]) * x[..., I:]
    route_topk: Callable        # (logits [T, E], k, *, renorm, scaling, softmax_first, skip) -> (w, ids) [T, K]
    gate_route: Callable        # (h [T, D], gate [E, D], k, *, <route_topk's>) -> (w, ids): gate GEMV + top-k
    gate_route_fits: Callable   # (T, E, D, gate dtype, h dtype) -> whether gate_route is one fused kernel here
    greedy: Callable            # (logits [B, V], nonfinite 0-dim int64, *, counters, out) -> tokens [B]: argmax + non-finite count
    norm_gate_route: Callable   # (x, residual, norm_w, eps, gate [E, D], k, *, <route_topk's>, counters, out)
                                #   -> (h, x + residual, w, ids): rms_norm then gate_route, one launch with triton
    norm_gate_route_fits: Callable  # (T, E, D, gate dtype, x dtype) -> whether norm_gate_route is one kernel here
    mla_expand_k: Callable      # (kv [B, S, H, nope + v], k_pe [B, S, rope], nope) -> k [B, S, H, nope + rope]


def _never(*args) -> bool:
    return False


# Gates at least this large (bytes) route through the split-K GEMV + top-k (kernels/gate_splitk.py)
# for up to SPLITK_MAX_T tokens (any T <= 16 for an fp32 gate, whose alternative is an fp32 cuBLAS
# GEMM); None keeps them on cuBLAS + route_topk. Measured on the H200 (scripts/bench_router.py,
# docs/results/2026-11-30-s4/call2_x2), µs for cuBLAS + top-k -> split-K: OLMoE T=1 6.7 -> 4.0, T=4
# 7.3 -> 5.7, T=8 7.3 -> 7.3; Qwen3-30B T=1 7.7 -> 5.4, T=4 7.8 -> 7.3, T=8 8.1 -> 10.3; DeepSeek-V2-Lite
# (fp32 gate) T=1 8.6 -> 4.4, T=16 12.9 -> 10.5. Mixtral's 64 KB gate stays on norm_route.py.
SPLITK_GATE_MIN_BYTES: int | None = 128 * 1024
SPLITK_MAX_T = 4


def _splitk_gate(T: int, E: int, D: int, gate_dtype, x_dtype) -> bool:
    return (SPLITK_GATE_MIN_BYTES is not None and E * D * gate_dtype.itemsize >= SPLITK_GATE_MIN_BYTES
            and (T <= SPLITK_MAX_T or gate_dtype == torch.float32)
            and _gate_splitk.usable(T, E, D, gate_dtype, x_dtype))


def _triton_gate_fits(T: int, E: int, D: int, gate_dtype, x_dtype) -> bool:
    """Small gates (<= 64 KB): one program per token streams the whole gate (norm_route.py); large
    ones at decode sizes: the gate split over at most one wave of programs, then top-k (gate_splitk.py)."""
    small = 0 < T <= _norm_route.MAX_T and _norm_route.usable(E, D, True, gate_dtype, x_dtype)
    return small or _splitk_gate(T, E, D, gate_dtype, x_dtype)


def _triton_gate_route(h, gate_weight, k: int, *, renorm: bool, scaling: float = 1.0,
                       softmax_first: bool = True, skip: float = 0.0, pdl: bool = False):
    E, D = gate_weight.shape
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first, skip=skip, pdl=pdl)
    if _splitk_gate(h.shape[0], E, D, gate_weight.dtype, h.dtype):
        return _gate_splitk.gate_route_splitk(h, gate_weight, k, **kw)
    return _norm_route.gate_route(h, gate_weight, k, **kw)


def _triton_norm_gate_route(x, residual, norm_weight, eps: float, gate_weight, k: int, *, renorm: bool,
                            scaling: float = 1.0, softmax_first: bool = True, skip: float = 0.0, counters=None,
                            out=None, pdl: bool = False):
    """One launch where `norm_gate_route_fits`: the split-K gate with the norm in front (gate_splitk_fold.py),
    or norm_route.py's one program per token for small gates."""
    E, D = gate_weight.shape
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first, skip=skip, pdl=pdl, out=out)
    if _splitk_gate(x.shape[0], E, D, gate_weight.dtype, x.dtype):
        return _gate_splitk_fold.norm_gate_route_splitk(x, residual, norm_weight, eps, gate_weight, k,
                                                        counters=counters, **kw)
    return _norm_route.norm_route(x, residual, norm_weight, gate_weight, eps, k, **kw)


# The fold runs where it was measured: one token (batch-1 decode; docs/results/2026-11-30-s8). Larger T keep
# RMSNorm + gate_route, whose sizes were measured on their own.
FOLD_MAX_T = 1


def _triton_fold_fits(T: int, E: int, D: int, gate_dtype, x_dtype) -> bool:
    """Whether norm_gate_route is one kernel here: T <= FOLD_MAX_T and a gate that `gate_route_fits`,
    a row the split-K kernel holds in registers (D <= MAX_ROW) when the gate takes that path."""
    if not 0 < T <= FOLD_MAX_T or not _triton_gate_fits(T, E, D, gate_dtype, x_dtype):
        return False
    return not _splitk_gate(T, E, D, gate_dtype, x_dtype) or D <= _gate_splitk.MAX_ROW


def _triton_rms_norm(x, weight, eps: float, residual=None, *, pdl: bool = False):
    return _rmsnorm.rms_norm(x.contiguous(), weight, eps, residual, pdl=pdl)


TORCH_OPS = Ops("torch", rms_norm_torch, qkv_rope_cache_torch, mla_rope_cache_torch, silu_mul_torch,
                route_topk_torch, gate_route_torch, _never, greedy_torch, norm_gate_route_torch, _never,
                mla_expand_k_torch)
OPS = {"torch": TORCH_OPS}
if triton is not None:
    OPS["triton"] = Ops("triton", _triton_rms_norm, _rope.qkv_rope_cache, _mla_rope.mla_rope_cache,
                        _silu_mul.silu_mul, _route.route_topk, _triton_gate_route, _triton_gate_fits,
                        _triton_greedy, _triton_norm_gate_route, _triton_fold_fits, _mla_expand.mla_expand_k)


@functools.lru_cache(maxsize=None)
def _bound(name: str, pdl: bool) -> Ops:
    ops = OPS[name]
    if not pdl:
        return ops
    bind = {f: functools.partial(getattr(ops, f), pdl=True)
            for f in ("rms_norm", "qkv_rope_cache", "mla_rope_cache", "silu_mul", "route_topk", "gate_route",
                      "greedy", "norm_gate_route", "mla_expand_k")}
    return replace(ops, **bind)


def ops_for(settings) -> Ops:
    """The op set a (resolved) RunSettings asks for; torch when settings is None (reference modules)."""
    if settings is None:
        return TORCH_OPS
    if settings.ops not in OPS:
        raise ValueError(f"ops {settings.ops!r} is not available here (Triton missing?); have {sorted(OPS)}")
    return _bound(settings.ops, settings.pdl == "on")
