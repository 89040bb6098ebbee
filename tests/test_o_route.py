"""Guards `--fold-router` (router_fusion.py, kernels/o_route.py): the o projection GEMV with the residual add, the
RMSNorm and the router in its epilogue gives the unfused path's bits for o + residual and the norm (within the
fp32 order of mean(r²)), the logits of a float64 oracle of its own formula (z / rms(r), z = Wgate · (g ⊙ r)) within
rounding and their routing, leaves its scratch zeroed, runs only where it fits, and refuses bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import router_fusion  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.kernels.o_route import o_norm_route, usable  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.ops import rms_norm_torch, route_topk_torch  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = {
    # name: (T, A, D, E, K, softmax_first, renorm, scaling, skip)
    "olmoe_like": (1, 64, 64, 64, 8, True, False, 1.0, 0.0),
    "two_tokens_renorm": (2, 48, 96, 16, 4, True, True, 1.0, 0.0),          # D not a power of two
    "sixty_experts_skip": (1, 40, 72, 60, 4, True, False, 2.5, 0.3),        # E not a power of two; skipping
    "mixtral_like_topk_softmax": (1, 64, 48, 8, 2, False, False, 1.0, 0.0),
    "one_expert": (1, 32, 32, 1, 1, True, True, 1.0, 0.0),
}
EPS = 1e-6


def make(T, A, D, E, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(T, A, generator=gen)
    wo = torch.randn(D, A, generator=gen) * A ** -0.5
    x = torch.randn(T, D, generator=gen)
    g = 1.0 + 0.2 * torch.randn(D, generator=gen)
    gate = torch.randn(E, D, generator=gen) * D ** -0.5 * 4.0
    return [t.to(DEVICE, dtype) for t in (a, wo, x, g, gate)]


def oracle_logits(r, g, gate, eps):
    """The fold's formula in float64 from the rounded r: z / rms(r), rounded to the gate's dtype."""
    rd = r.double()
    z = (rd * g.double()) @ gate.double().T
    inv = torch.rsqrt((rd * rd).mean(-1, keepdim=True) + eps)
    return (z * inv).to(gate.dtype)


def margin(logits, k):
    """Smallest gap between the k-th and (k+1)-th logit over the tokens (inf when k = E)."""
    if k >= logits.shape[-1]:
        return float("inf")
    top = logits.float().topk(k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]).min().item()


DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])   # the interpreter: no bf16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_unfused_and_oracle(case, dtype):
    T, A, D, E, K, softmax_first, renorm, scaling, skip = CASES[case]
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first, skip=skip)
    for seed in range(20):         # inputs whose k-th and (k+1)-th logits are apart by more than the rounding
        a, wo, x, g, gate = make(T, A, D, E, dtype, seed)
        r_ref = (dense_gemv(a, wo).float() + x.float()).to(dtype)       # dense_gemv's bits, then torch's add
        logits = oracle_logits(r_ref, g, gate, EPS)
        if margin(logits, K) > 2e-2 * logits.float().abs().max().item():
            break
    counters = torch.zeros(T, dtype=torch.int32, device=DEVICE)
    acc = torch.zeros(T * 32 * 64, dtype=torch.int64, device=DEVICE)         # up to MAX_REPLICAS copies
    h, r, w, ids = o_norm_route(a, wo, x, g, EPS, gate, K, counters=counters, acc=acc, **kw)
    assert torch.equal(r, r_ref), "o + residual: the unfused bits"
    h_ref, _ = rms_norm_torch(r_ref, g, EPS)
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert ((h.float() - h_ref.float()).abs().max() <= tol * h_ref.float().abs().max()).item()
    w_ref, ids_ref = route_topk_torch(logits, K, **kw)
    assert torch.equal(ids, ids_ref)
    assert torch.allclose(w, w_ref, rtol={torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype], atol=1e-6)
    if skip > 0:
        assert (ids < 0).any() and (w[ids < 0] == 0).all(), "the case drops slots, with weight 0"
    assert not counters.any() and not acc.any(), "scratch left zeroed"
    again = o_norm_route(a, wo, x, g, EPS, gate, K, counters=counters, acc=acc, **kw)
    for u, v in zip((h, r, w, ids), again):
        assert torch.equal(u, v), "the same bits on every call"


@pytest.mark.parametrize("replicas", [3, 32])
def test_accumulator_copies_change_no_bit(replicas, monkeypatch):
    """REPLICAS spreads the programs' atomics over copies of the accumulator: the integer sum, hence every output
    bit, is the same, and every copy is left zeroed (32 is clamped to the program count)."""
    from minimoe.kernels import o_route
    a, wo, x, g, gate = make(2, 64, 96, 60, torch.float32, 3)
    kw = dict(renorm=True, scaling=1.5)
    one = o_norm_route(a, wo, x, g, EPS, gate, 4, **kw)
    monkeypatch.setattr(o_route, "REPLICAS", replicas)
    acc = torch.zeros(2 * 32 * 64, dtype=torch.int64, device=DEVICE)
    counters = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    many = o_norm_route(a, wo, x, g, EPS, gate, 4, counters=counters, acc=acc, **kw)
    for u, v in zip(one, many):
        assert torch.equal(u, v)
    assert not acc.any() and not counters.any()
    with pytest.raises(ValueError, match="acc int64"):
        o_norm_route(a, wo, x, g, EPS, gate, 4, acc=torch.zeros(2 * 64, dtype=torch.int64, device=DEVICE), **kw)


def test_fixed_point_sum_is_exact_for_large_and_tiny_activations():
    """The z shares are summed in 2^-32 units: a residual stream of 1e3 (massive activations) and one of 1e-3 both
    give the oracle's routing and weights."""
    for scale in (1e3, 1e-3):
        a, wo, x, g, gate = make(1, 64, 128, 32, torch.float32, 7)
        x = x * scale
        a = a * scale
        h, r, w, ids = o_norm_route(a, wo, x, g, EPS, gate, 4, renorm=True)
        logits = oracle_logits(r, g, gate, EPS)
        w_ref, ids_ref = route_topk_torch(logits, 4, renorm=True)
        assert torch.equal(ids, ids_ref) and torch.allclose(w, w_ref, rtol=1e-5), scale


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs and PDL need a GPU")
def test_graphed_equals_eager_with_pdl():
    """Replayed from a CUDA graph with fresh inputs copied in (PDL where the GPU has it): the eager call's bits, the
    scratch zeroed after every replay (the fixed-point sum does not depend on the programs' arrival order)."""
    pdl = torch.cuda.get_device_capability()[0] >= 9
    a, wo, x, g, gate = make(1, 2048, 2048, 64, torch.bfloat16, 11)
    counters = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    acc = torch.zeros(32 * 64, dtype=torch.int64, device=DEVICE)
    kw = dict(renorm=False, counters=counters, acc=acc, pdl=pdl)
    o_norm_route(a, wo, x, g, EPS, gate, 8, **kw)                      # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = o_norm_route(a, wo, x, g, EPS, gate, 8, **kw)
    for seed in (12, 13, 14):
        a2, _, x2, _, _ = make(1, 2048, 2048, 64, torch.bfloat16, seed)
        a.copy_(a2)
        x.copy_(x2)
        graph.replay()
        eager = o_norm_route(a, wo, x, g, EPS, gate, 8, **kw)
        for u, v in zip(out, eager):
            assert torch.equal(u, v), "graphed = eager, bit for bit"
        assert not counters.any() and not acc.any()


def test_refuses_bad_input():
    a, wo, x, g, gate = make(1, 32, 48, 8, torch.float32, 0)
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        o_norm_route(torch.randn(3, 32, device=DEVICE), wo, x, g, EPS, gate, 2, renorm=False)   # 3 tokens
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        o_norm_route(a, wo.half(), x, g, EPS, gate, 2, renorm=False)                           # another dtype
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        o_norm_route(a, wo, x, g, EPS, gate, 9, renorm=False)                                  # k > E
    with pytest.raises(ValueError, match="do not fit"):
        o_norm_route(a, wo, x[:, :40], g, EPS, gate, 2, renorm=False)
    with pytest.raises(ValueError, match="do not fit"):
        o_norm_route(a, wo, x, g, EPS, gate[:, :40], 2, renorm=False)
    with pytest.raises(ValueError, match="counters int32"):
        o_norm_route(a, wo, x, g, EPS, gate, 2, renorm=False, acc=torch.zeros(4, dtype=torch.int64, device=DEVICE))
    assert usable(1, 32, 48, 8, wo, torch.float32, torch.float32)
    assert not usable(1, 32, 48, 8, wo.t(), torch.float32, torch.float32)                      # not [D, A]


@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen2-moe-tiny", "deepseek-v2-lite-tiny"])
def test_model_fold_router_equals_apart(card, monkeypatch):
    """End to end (GQA with a full q/k norm; a gated shared expert; MLA with a dense first layer): the same greedy
    tokens and, in fp32, logits within rounding; the fold runs at batch 1 on every MoE layer whose router fuses."""
    runs = []
    real_run = router_fusion.run
    monkeypatch.setattr(router_fusion, "run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    s = RunSettings(device=DEVICE, ops="triton", fold_router="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    def fusable(T):        # the MoE layers whose router folds at T tokens (--fold-norm's conditions: one token)
        return [b for b in model.layers if hasattr(b.ffn, "router") and b.ffn.router.fold_fits(T, cfg.hidden_size,
                                                                                                torch.float32)]
    prompts = torch.randint(0, cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == []
        s.fold_router = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fold_router = "off"
        expect = len(fusable(batch.shape[0])) * 3                     # 3 decode steps (the logits' and 2 of generate)
        assert len(runs) == expect and set(runs) <= {batch.shape[0]}
        runs.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)
    assert fusable(1) and not fusable(2)


def test_fits_only_where_it_can_run(monkeypatch):
    from minimoe.kv_cache import KVCache
    s = RunSettings(device=DEVICE, ops="triton", fold_router="on").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 3, 8, torch.float32, DEVICE)
    block = model.layers[0]
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    step = cache.step(1, 2)
    assert router_fusion.fits(block, x, x, step)
    assert not router_fusion.fits(block, x.expand(2, 1, -1), x.expand(2, 1, -1), step)        # two tokens: --fold-norm's
    assert not router_fusion.fits(block, x, None, step)                                       # no residual stream yet
    assert not router_fusion.fits(block, x, x, cache.step(1, 0))                              # a fresh prefill
    for module in (block.attn, block.attn.wo, block.ffn_norm, block.ffn.router):              # a TP plan, calibration
        hook = module.register_forward_hook(lambda *a: None)
        assert not router_fusion.fits(block, x, x, step)
        hook.remove()
    assert router_fusion.fits(block, x, x, step)
    monkeypatch.setattr(router_fusion, "MAX_EXPERTS", block.ffn.router.n_experts - 1)       # Qwen3-30B-A3B's 128: apart
    assert not router_fusion.fits(block, x, x, step)
    monkeypatch.undo()
    s.fold_router = "off"
    assert not router_fusion.fits(block, x, x, step)


def test_settings_resolution():
    assert RunSettings(device="cpu", ops="triton").resolve().fold_router == "off"              # auto: on a GPU only
    assert RunSettings(device="cpu", ops="triton", fold_router="on").resolve().fold_router == "on"
    with pytest.raises(ValueError, match="--fold-router on .*got --ops torch"):
        RunSettings(device="cpu", fold_router="on").resolve()
    with pytest.raises(ValueError, match="--fold-router on .*--fold-norm off"):     # its routing is the fold's
        RunSettings(device="cpu", ops="triton", fold_norm="off", fold_router="on").resolve()
    with pytest.raises(ValueError, match="--fold-router yes"):
        RunSettings(fold_router="yes").resolve()
