"""Guards the aligned MoE's combine (kernels/moe_combine.py): the compile-time unrolled slots (UNROLL_K, knob
fused_moe.COMBINE_UNROLL_MAX_T) against the runtime loop and a float64 sum, with foreign slots, shared rows, one token,
one slot and D past the tile; and that both launchers pass the knob through."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before the kernels are decorated
triton = pytest.importorskip("triton")

from minimoe.kernels import fused_moe as fm  # noqa: E402
from minimoe.kernels.moe_combine import _combine_kernel  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


def reference(y, ids, T, K, offset, E, S):
    """out[t] = Σ_k y[t·K + k] over this layer's experts' slots + Σ_j y[T·K + t·S + j], in float64."""
    y, ids = y.double().cpu(), ids.cpu().view(T, K)
    local = (ids >= offset) & (ids < offset + E)                                   # [T, K]
    out = (y[:T * K].view(T, K, -1) * local[..., None]).sum(1)
    if S:
        out += y[T * K:].view(T, S, -1).sum(1)
    return out


CASES = [  # T, K, E (local), offset, n_global, S, D, BLOCK_D, dtype
    (7, 8, 64, 0, 64, 0, 300, 128, torch.float32),     # D past two tiles: the masked tail
    (1, 8, 64, 0, 64, 0, 64, 64, torch.float16),       # one token
    (5, 2, 8, 4, 16, 0, 40, 32, torch.float32),        # half the ids foreign: their rows never written
    (9, 6, 60, 0, 60, 2, 96, 64, torch.float16),       # 60 experts, two shared rows a token
    (3, 1, 4, 0, 4, 0, 48, 32, torch.float32),         # one slot
    (4, 3, 4, 4, 8, 1, 40, 64, torch.float32),         # every slot foreign, a shared row: the shared rows alone
]


@pytest.mark.parametrize("T,K,E,offset,n_global,S,D,block_d,dtype", CASES)
def test_unrolled_slots_equal_the_runtime_loop(T, K, E, offset, n_global, S, D, block_d, dtype):
    gen = torch.Generator().manual_seed(T * 1000 + K * 100 + S * 10 + offset)
    ids = torch.stack([torch.randperm(n_global, generator=gen)[:K] for _ in range(T)]).to(torch.int32)
    if (T, K, E, offset) == (4, 3, 4, 4):
        ids = ids % 4                                                                # all below the offset
    y = torch.randn(T * K + T * S, D, generator=gen).to(dtype)
    foreign = ~((ids >= offset) & (ids < offset + E)).view(-1)
    y[:T * K][foreign] = float("nan")               # never written by GEMM2: must not be read
    y, ids = y.to(DEVICE), ids.to(DEVICE)
    outs = []
    for unroll in (0, K):
        out = torch.empty(T, D, dtype=dtype, device=DEVICE)
        _combine_kernel[(T, triton.cdiv(D, block_d))](y, ids, out, K, offset, E, D, T * K, S,
                                                      BLOCK_D=block_d, PDL=False, UNROLL_K=unroll, num_warps=2)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])            # the same fp32 sum in the same order
    ref = reference(torch.nan_to_num(y.float(), nan=0.0), ids, T, K, offset, E, S)
    assert torch.isfinite(outs[1]).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert torch.allclose(outs[1].double().cpu(), ref, rtol=tol, atol=tol)


class _Spy:
    """Stands in for the jitted kernel: records each launch's constexprs, then launches the real one."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.seen.append(kw.get("UNROLL_K"))
            return self.real[grid](*args, **kw)
        return launch


@pytest.mark.parametrize("max_t,on", [(0, False), (8, False), (9, True), (64, True)])
def test_both_launchers_pass_the_knob(max_t, on, monkeypatch):
    """fused_moe's aligned path and fused_moe_quant's give UNROLL_K = top_k for calls of at most COMBINE_UNROLL_MAX_T
    tokens (here 9), 0 above it or with the knob at 0, and the same output either way."""
    from minimoe import qweights as Q
    from minimoe.kernels import fused_moe_quant as fq
    gen = torch.Generator().manual_seed(5)
    T, K, E, D, I = 9, 2, 6, 64, 40        # the quant tests' aligned shape
    x = torch.randn(T, D, generator=gen).to(DEVICE)
    w13 = (torch.randn(E, 2 * I, D, generator=gen) / D ** 0.5).to(DEVICE)
    w2 = (torch.randn(E, D, I, generator=gen) / I ** 0.5).to(DEVICE)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).to(DEVICE)
    w = torch.rand(T, K, generator=gen).to(DEVICE)
    from minimoe.kernels import moe_configs
    cfg = dict(moe_configs.interpreter_config(), variant="aligned")
    monkeypatch.setattr(fm, "COMBINE_UNROLL_MAX_T", 0)
    base = fm.fused_moe(x, w13, w2, ids, w, config=cfg)
    q13, q2 = Q.quantize_int8(w13), Q.quantize_int8(w2)
    qbase = fq.fused_moe_quant(x, q13, q2, ids, w)
    monkeypatch.setattr(fm, "COMBINE_UNROLL_MAX_T", max_t)
    spy = _Spy(fm._combine_kernel)
    monkeypatch.setattr(fm, "_combine_kernel", spy)
    monkeypatch.setattr(fq, "_combine_kernel", spy)
    assert torch.equal(fm.fused_moe(x, w13, w2, ids, w, config=cfg), base)
    assert torch.equal(fq.fused_moe_quant(x, q13, q2, ids, w), qbase)
    assert spy.seen == [K if on else 0] * 2
