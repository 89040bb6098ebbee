"""Guards the rank top-k (kernels/route.py's `_topk_rank`, switched on by route.TOPK_RANK_MAX_E) against the argmax
rounds it replaces: every kernel that routes gives the same experts in the same slots and the same weights (the same bits
in the interpreter, within an fp32 ulp or two compiled) with the knob on as off, on rows with ties, signed zeros, -inf (masked) experts, padding (E not a power of two) and one
expert, for every K and both softmax orders. The rounds themselves are checked against PyTorch elsewhere
(test_small_kernels.py, test_gate_splitk.py, test_norm_route.py, test_o_route.py)."""

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels import route  # noqa: E402
from minimoe.kernels.gate_splitk import gate_route_splitk  # noqa: E402
from minimoe.kernels.gate_splitk_fold import norm_gate_route_splitk  # noqa: E402
from minimoe.kernels.norm_route import gate_route, norm_route  # noqa: E402
from minimoe.kernels import o_route  # noqa: E402
from minimoe.kernels.route import route_topk  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


def _rows(T, E, seed):
    """[T, E] float32 logits: random normals, then a row of small integers (many ties), a row of signed zeros
    and ones, a row with every third expert at -inf, a row all -inf but one, a row all equal."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, E, generator=gen)
    kinds = [lambda r: torch.randint(-2, 3, (E,), generator=gen).float(),
             lambda r: torch.where(torch.rand(E, generator=gen) < 0.5, -0.0, 0.0) + (torch.rand(E, generator=gen)
                                                                                     < 0.2).float(),
             lambda r: r.masked_fill(torch.arange(E) % 3 == 0, float("-inf")),
             lambda r: torch.full((E,), float("-inf")).index_fill(0, torch.tensor([E // 2]), 1.5),
             lambda r: torch.full((E,), 0.25)]
    for i, make in enumerate(kinds[:T - 1]):
        x[i + 1] = make(x[i + 1])
    return x.to(DEVICE)


def _same(a, b):
    """The routers' outputs (..., weights, ids) equal: the ids and everything before the weights bit for bit, the
    weights to an fp32 ulp or two. (The interpreter gives the weights' bits too; compiled, the rank form's row can sit
    in another register layout, and the softmax's sum over it then adds in another order.)"""
    w0, ids0, w1, ids1 = a[-2], a[-1], b[-2], b[-1]
    same_rest = all(torch.equal(x, y) for x, y in zip(a[:-2], b[:-2]))
    return same_rest and torch.equal(ids0, ids1) and torch.allclose(w0, w1, rtol=1e-6, atol=0.0, equal_nan=True)


def _both(monkeypatch, fn):
    for knob in ("TOPK_RANK_MAX_E", "TOPK_RANK_MAX_E_ONE_WARP"):
        monkeypatch.setattr(route, knob, 0)
    off = fn()
    for knob in ("TOPK_RANK_MAX_E", "TOPK_RANK_MAX_E_ONE_WARP"):
        monkeypatch.setattr(route, knob, route.MAX_EXPERTS)
    return off, fn()


def test_knobs_read_the_power_of_two_row_and_the_warps(monkeypatch):
    monkeypatch.setattr(route, "TOPK_RANK_MAX_E", 128)
    monkeypatch.setattr(route, "TOPK_RANK_MAX_E_ONE_WARP", 0)
    assert route.topk_rank(128, 4) and route.topk_rank(1, 2) and not route.topk_rank(256, 4)
    assert not route.topk_rank(64, 1)
    monkeypatch.setattr(route, "TOPK_RANK_MAX_E", 0)
    monkeypatch.setattr(route, "TOPK_RANK_MAX_E_ONE_WARP", 64)
    assert not route.topk_rank(1, 4) and route.topk_rank(64, 1) and not route.topk_rank(128, 1)


@pytest.mark.parametrize("softmax_first,renorm,scaling", [(True, False, 1.0), (True, True, 2.5), (False, True, 1.0)])
@pytest.mark.parametrize("E,K", [(1, 1), (2, 2), (8, 2), (60, 4), (64, 6), (64, 8), (128, 8), (256, 8), (512, 8)])
def test_route_topk_rank_is_the_rounds(E, K, softmax_first, renorm, scaling, monkeypatch):
    x = _rows(6, E, seed=E * 10 + K)
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    off, on = _both(monkeypatch, lambda: route_topk(x, K, **kw))
    assert _same(off, on)
    assert (on[1] >= 0).all() and (on[1] < E).all()
    assert all(len(set(r)) == K for r in on[1].tolist()), "K distinct experts, -inf rows included"


def test_rank_skip_and_masked_rows(monkeypatch):
    """Skipping's epilogue reads the rank's slots as it reads the rounds'; a row all -inf but one still gets K ids."""
    x = _rows(6, 64, seed=3)
    off, on = _both(monkeypatch, lambda: route_topk(x, 8, renorm=True, skip=0.4))
    assert _same(off, on) and (on[1] == -1).any()


def test_nan_logits_rank_below_every_number(monkeypatch):
    """A NaN logit (a broken checkpoint) is never chosen over a number, and the slots stay K distinct experts."""
    monkeypatch.setattr(route, "TOPK_RANK_MAX_E_ONE_WARP", route.MAX_EXPERTS)       # route_topk: one warp
    x = torch.randn(2, 16, device=DEVICE)
    x[:, ::2] = float("nan")
    w, ids = route_topk(x, 8, renorm=False, softmax_first=False)     # the softmax over the K chosen: no NaN in it
    assert all(sorted(row) == list(range(1, 16, 2)) for row in ids.tolist())
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,D,T,K", [(64, 256, 1, 8), (128, 512, 1, 8), (60, 200, 3, 4), (8, 256, 2, 2)])
def test_fused_routers_rank_is_the_rounds(E, D, T, K, dtype, monkeypatch):
    """The four fused routers (split-K fold and unfolded, norm_route's one-program pair, o_norm_route) with the knob
    on and off: the same bits in every output (h, the residual, weights, ids)."""
    gen = torch.Generator().manual_seed(E + D + T)
    x = torch.randn(T, D, generator=gen).to(dtype).to(DEVICE)
    r = torch.randn(T, D, generator=gen).to(dtype).to(DEVICE)
    nw = (1 + 0.2 * torch.rand(D, generator=gen)).to(dtype).to(DEVICE)
    gate = (torch.randn(E, D, generator=gen) / D ** 0.5).to(dtype).to(DEVICE)
    gate[E // 2] = gate[E // 3]                                   # two equal logits: a tie at some cut
    a = torch.randn(T, 2 * D, generator=gen).to(dtype).to(DEVICE)
    wo = (torch.randn(D, 2 * D, generator=gen) / (2 * D) ** 0.5).to(dtype).to(DEVICE)
    kw = dict(renorm=True)
    calls = [lambda: norm_gate_route_splitk(x, r, nw, 1e-6, gate, K, **kw),
             lambda: gate_route_splitk(x, gate, K, **kw),
             lambda: norm_route(x, r, nw, gate, 1e-6, K, **kw),
             lambda: gate_route(x, gate, K, **kw),
             lambda: o_route.o_norm_route(a, wo, x, nw, 1e-6, gate, K, **kw)][:5 if T <= o_route.MAX_T else 4]
    for i, call in enumerate(calls):
        off, on = _both(monkeypatch, call)
        assert _same(off, on), f"router {i}"
