"""Guards the routers: each family router against a per-token float64 re-derivation of its published maths (model-facts §A.3), and each synthetic router against the distribution it claims."""
from __future__ import annotations

import math

import pytest
import torch

from minimoe.router import ROUTERS, SYNTHETIC_ROUTERS, RouterSpec, route, zipf_probs

T = 64
W_TOL = 2e-6          # float32 router vs float64 re-derivation, relative to max(1, |weight|)


def _logits(T: int, E: int, seed: int) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed)) * 2.0


def _top(values: list, k: int, allowed=None) -> list:
    """Indices of the k largest values among `allowed` (a plain sort: independent of torch.topk)."""
    allowed = range(len(values)) if allowed is None else allowed
    return sorted(allowed, key=lambda e: -values[e])[:k]


def _finish(weights: list, renorm: bool, scaling: float) -> list:
    if renorm:
        total = sum(weights)
        weights = [w / (total + 1e-20) for w in weights]
    return [w * scaling for w in weights]


def ref_softmax_topk(row, spec):
    z = max(row)
    p = [math.exp(v - z) for v in row]
    p = [v / sum(p) for v in p]
    ids = _top(p, spec.top_k)
    return ids, _finish([p[e] for e in ids], spec.renorm, spec.scaling)


def ref_group_limited_greedy(row, spec):
    """DeepSeek-V2: groups ranked by their best probability; top-k inside the kept groups."""
    z = max(row)
    p = [math.exp(v - z) for v in row]
    p = [v / sum(p) for v in p]
    size = len(p) // spec.n_group
    best = [max(p[g * size:(g + 1) * size]) for g in range(spec.n_group)]
    groups = _top(best, spec.topk_group)
    allowed = [e for g in groups for e in range(g * size, (g + 1) * size)]
    ids = _top(p, spec.top_k, allowed)
    return ids, _finish([p[e] for e in ids], spec.renorm, spec.scaling)


def ref_sigmoid_group_bias(row, spec, bias):
    """DeepSeek-V3: choose by sigmoid + bias (groups ranked by the sum of their top-2), weigh by sigmoid."""
    s = [1.0 / (1.0 + math.exp(-v)) for v in row]
    choice = [v + b for v, b in zip(s, bias)]
    size = len(s) // spec.n_group
    group_score = [sum(sorted(choice[g * size:(g + 1) * size])[-2:]) for g in range(spec.n_group)]
    groups = _top(group_score, spec.topk_group)
    allowed = [e for g in groups for e in range(g * size, (g + 1) * size)]
    ids = _top(choice, spec.top_k, allowed)
    return ids, _finish([s[e] for e in ids], spec.renorm, spec.scaling)


def assert_same_routing(weights, ids, expected):
    """Compare per token as {id: weight}: top-k order is not part of the contract."""
    assert weights.dtype == torch.float32 and ids.dtype == torch.int64
    for t, (want_ids, want_w) in enumerate(expected):
        got = dict(zip(ids[t].tolist(), weights[t].tolist()))
        assert set(got) == set(want_ids), f"token {t}"
        for e, w in zip(want_ids, want_w):
            assert abs(got[e] - w) <= W_TOL * max(1.0, abs(w)), f"token {t} expert {e}: {got[e]} vs {w}"


@pytest.mark.parametrize("E,K,renorm,scaling", [(64, 8, False, 1.0), (60, 4, True, 1.0), (7, 3, True, 2.5),
                                                (16, 1, False, 1.0)])
def test_softmax_topk(E, K, renorm, scaling):
    spec = RouterSpec("softmax_topk", K, renorm=renorm, scaling=scaling)
    logits = _logits(T, E, seed=E + K)
    w, ids = route(logits, spec)
    assert_same_routing(w, ids, [ref_softmax_topk(row, spec) for row in logits.double().tolist()])


@pytest.mark.parametrize("E,K,n_group,topk_group,renorm,scaling", [(16, 3, 4, 2, False, 1.5),
                                                                     (64, 6, 8, 3, True, 1.0),
                                                                     (12, 2, 6, 1, False, 16.0)])
def test_group_limited_greedy(E, K, n_group, topk_group, renorm, scaling):
    spec = RouterSpec("group_limited_greedy", K, renorm, scaling, n_group, topk_group)
    logits = _logits(T, E, seed=100 + E)
    w, ids = route(logits, spec)
    assert_same_routing(w, ids, [ref_group_limited_greedy(row, spec) for row in logits.double().tolist()])
    size = E // n_group                                  # and the groups really are limited
    assert all(len(set((ids[t] // size).tolist())) <= topk_group for t in range(T))


@pytest.mark.parametrize("E,K,n_group,topk_group,renorm,scaling", [(16, 4, 4, 2, True, 2.5),
                                                                     (256, 8, 8, 4, True, 2.5),
                                                                     (12, 3, 1, 1, False, 1.0)])
def test_sigmoid_group_bias(E, K, n_group, topk_group, renorm, scaling):
    spec = RouterSpec("sigmoid_group_bias", K, renorm, scaling, n_group, topk_group)
    logits = _logits(T, E, seed=200 + E)
    bias = 0.3 * torch.randn(E, generator=torch.Generator().manual_seed(1))
    w, ids = route(logits, spec, bias)
    bias_list = bias.double().tolist()
    assert_same_routing(w, ids, [ref_sigmoid_group_bias(row, spec, bias_list) for row in logits.double().tolist()])
    # the bias steers the choice: without it some token picks differently
    _, ids_nobias = route(logits, spec, None)
    assert any(set(a) != set(b) for a, b in zip(ids.tolist(), ids_nobias.tolist()))


def test_sigmoid_group_bias_weights_exclude_the_bias():
    """With one group and K=E every expert is chosen, so the weights must be exactly the (scaled) sigmoids."""
    E = 6
    spec = RouterSpec("sigmoid_group_bias", E, renorm=False, scaling=2.5)
    logits = _logits(4, E, seed=5)
    w, ids = route(logits, spec, torch.full((E,), 10.0))
    want = torch.sigmoid(logits.double()).gather(1, ids) * 2.5
    assert torch.allclose(w.double(), want, atol=W_TOL, rtol=0)


@pytest.mark.parametrize("E,K,scaling", [(8, 2, 1.0), (7, 3, 1.0), (64, 8, 2.0)])
def test_topk_softmax_equals_renormalised_softmax_topk(E, K, scaling):
    logits = _logits(T, E, seed=300 + E)
    w_a, ids_a = route(logits, RouterSpec("topk_softmax", K, scaling=scaling))
    w_b, ids_b = route(logits, RouterSpec("softmax_topk", K, renorm=True, scaling=scaling))
    assert_same_routing(w_a, ids_a, [(i, w) for i, w in zip(ids_b.tolist(), w_b.tolist())])
    assert torch.allclose(w_a.sum(-1), torch.full((T,), scaling), atol=1e-5)


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_router_returns_float32_weights_and_int64_ids(name, dtype):
    torch.manual_seed(0)
    spec = RouterSpec(name, 4, n_group=4, topk_group=2)
    w, ids = route(_logits(10, 16, seed=1).to(dtype), spec, torch.zeros(16))
    assert w.dtype == torch.float32 and ids.dtype == torch.int64
    assert w.shape == ids.shape == (10, 4)
    assert int(ids.min()) >= 0 and int(ids.max()) < 16


# ---- synthetic routers ------------------------------------------------------------------------------


def _distinct_per_token(ids: torch.Tensor) -> bool:
    return all(len(set(row)) == len(row) for row in ids.tolist())


@pytest.mark.parametrize("T,E,K", [(24, 8, 2), (9, 6, 4), (64, 64, 8), (60, 60, 4)])
def test_balanced_router_gives_each_expert_exactly_its_share(T, E, K):
    assert (T * K) % E == 0
    w, ids = route(torch.zeros(T, E), RouterSpec("balanced", K))
    assert torch.equal(torch.bincount(ids.flatten(), minlength=E), torch.full((E,), T * K // E))
    assert _distinct_per_token(ids)
    assert torch.equal(w, torch.full((T, K), 1.0 / K))


def test_uniform_router_is_distinct_and_roughly_uniform():
    torch.manual_seed(0)
    T, E, K = 8000, 16, 4
    w, ids = route(torch.zeros(T, E), RouterSpec("uniform", K))
    assert _distinct_per_token(ids)
    counts = torch.bincount(ids.flatten(), minlength=E).double()
    mean = T * K / E                                    # 2000; binomial std ~39, so 10% is ~5 sigma
    assert (counts - mean).abs().max() < 0.1 * mean
    assert torch.allclose(w.sum(-1), torch.ones(T))


def test_zipf_router_first_choice_follows_zipf():
    torch.manual_seed(0)
    T, E, K, s = 20000, 8, 2, 1.2
    _, ids = route(torch.zeros(T, E), RouterSpec("zipf", K, zipf_s=s))
    assert _distinct_per_token(ids)
    freq = torch.bincount(ids[:, 0], minlength=E).double() / T
    want = torch.arange(1, E + 1, dtype=torch.float64) ** -s
    want /= want.sum()
    assert torch.allclose(zipf_probs(E, s).double(), want, atol=1e-6)
    assert (freq - want).abs().max() < 0.015          # binomial std <= 0.0035: > 4 sigma
    assert freq[0] > 2 * freq[E // 2]                  # and skewed, not uniform


@pytest.mark.parametrize("name", SYNTHETIC_ROUTERS)
def test_synthetic_routers_ignore_the_logits(name):
    """Ablations must not depend on the model: the same RNG state gives the same ids for any logits."""
    spec = RouterSpec(name, 3)
    torch.manual_seed(5)
    _, a = route(torch.randn(32, 12), spec)
    torch.manual_seed(5)
    _, b = route(torch.randn(32, 12) * 100, spec)
    assert torch.equal(a, b)


def test_the_router_flag_help_names_every_router():
    from minimoe.router import ROUTERS
    from minimoe.settings import SETTINGS_FLAGS
    text = SETTINGS_FLAGS["router"][1]["help"]
    assert all(name in text for name in ROUTERS), text
