"""Guards minimoe.sampling: transformers' warpers matched, exact top-p/min-p boundaries, honest draws."""
from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from minimoe.sampling import Sampling, argmax, draw, probs, sample

INF = float("inf")


def reference(logits: torch.Tensor, s: Sampling) -> tuple[torch.Tensor, int]:
    """transformers' warpers in `GenerationMixin._get_logits_processor` order, min_tokens_to_keep = 1,
    plus the one documented difference: tokens tied with top-p's smallest kept logit are put back.
    Returns (probs [B, V], how many rows that put-back changed)."""
    x = logits.clone()                                                       # [B, V]
    if s.temperature != 1.0:
        x = TemperatureLogitsWarper(s.temperature)(None, x)
    if s.top_k:
        x = TopKLogitsWarper(s.top_k)(None, x)
    ties = 0
    if s.top_p < 1:
        kept = TopPLogitsWarper(s.top_p)(None, x)                            # [B, V]
        cut = kept.nan_to_num(neginf=INF).amin(-1, keepdim=True)             # [B, 1] smallest kept
        ties = int(((x >= cut) & kept.isinf()).any(-1).sum())
        x = x.masked_fill(x < cut, -INF)
    if s.min_p > 0:
        x = MinPLogitsWarper(s.min_p)(None, x)
    return x.softmax(-1), ties


def logits_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g)
    with_inf = randn(3, 9) * 2
    with_inf[with_inf < -0.5] = -INF                                         # the max stays finite
    return {
        "B3_V7": randn(3, 7) * 2,
        "ties": torch.randint(-3, 3, (6, 12), generator=g).float(),          # many equal logits
        "neg_inf": with_inf,
        "V1": randn(2, 1),
        "B1_V64": randn(1, 64) * 3,
        "V50304": randn(2, 50304) * 2,                                       # the chunked-argmax width
    }


SETTINGS = [Sampling(t, k, p, m) for t, k, p, m in
            itertools.product([0.6, 1.0, 1.7], [0, 1, 3, 40], [1.0, 0.95, 0.6, 0.2], [0.0, 0.05, 0.4])]


def test_issue_example_top_p_reaches_exactly():
    p = probs(torch.tensor([[0.3, 0.1, 0.1, 0.5]]).log(), Sampling(temperature=1.0, top_p=0.8))
    assert (p[0] > 0).nonzero().flatten().tolist() == [0, 3]
    torch.testing.assert_close(p[0], torch.tensor([0.375, 0.0, 0.0, 0.625]), atol=1e-6, rtol=0)


def test_ties_at_the_top_p_cut_are_kept_whole():
    p = probs(torch.tensor([[0.5, 0.2, 0.2, 0.1]]).log(), Sampling(temperature=1.0, top_p=0.6))
    torch.testing.assert_close(p[0], torch.tensor([5 / 9, 2 / 9, 2 / 9, 0.0]), atol=1e-6, rtol=0)


def random_weights(rng: random.Random) -> list[int]:
    return [rng.randint(1, 20) for _ in range(rng.randint(3, 8))]


def support(logits_row: list[float], s: Sampling) -> set[int]:
    p = probs(torch.tensor([logits_row]), s)[0]
    return set((p > 0).nonzero().flatten().tolist())


def test_exact_boundaries_against_rational_arithmetic():
    """Distributions w / sum(w) with top_p equal to the mass of a top set, and min_p equal to a
    ratio p_i / p_max: the kept set must be exactly what exact arithmetic says."""
    rng = random.Random(0)
    for _ in range(200):
        w = random_weights(rng)
        order = sorted(range(len(w)), key=lambda i: -w[i])
        m = rng.randint(1, len(w) - 1)
        if w[order[m - 1]] == w[order[m]]:
            continue                                                         # a tie: the other test
        top_p = float(Fraction(sum(w[i] for i in order[:m]), sum(w)))
        row = [math.log(a / sum(w)) for a in w]
        assert support(row, Sampling(1.0, top_p=top_p)) == set(order[:m]), (w, top_p)
        j = rng.choice(order[1:])
        min_p = float(Fraction(w[j], max(w)))
        want = {i for i in range(len(w)) if w[i] >= w[j]}
        assert support(row, Sampling(1.0, min_p=min_p)) == want, (w, min_p)


@pytest.mark.parametrize("name", list(logits_cases()))
def test_probs_match_transformers(name):
    logits = logits_cases()[name]
    tie_rows = 0
    for s in SETTINGS if logits.shape[1] < 1000 else SETTINGS[::7]:
        ours = probs(logits, s)
        want, ties = reference(logits, s)
        tie_rows += ties
        assert torch.equal(ours > 0, want > 0), s
        torch.testing.assert_close(ours, want, atol=1e-6, rtol=0, msg=str(s))
    if name == "ties":
        assert tie_rows > 0, "the ties case no longer puts a tie at the top-p cut"


def test_greedy_probs_is_one_hot_of_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, -INF], [0.0, 0.0, 0.0, 0.0]])
    assert probs(logits, Sampling()).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def chi_square_quantile(dof: int, z: float = 3.090232) -> float:
    """Upper quantile of chi-square(dof) by Wilson-Hilferty; z = 3.090232 is the normal's p = 0.001."""
    a = 2 / (9 * dof)
    return dof * (1 - a + z * math.sqrt(a)) ** 3


def chi_square_threshold(dof: int) -> float:
    try:
        from scipy.stats import chi2
    except ImportError:
        return chi_square_quantile(dof)
    return float(chi2.ppf(0.999, dof))


FIXED = torch.tensor([[2.0, 1.5, 1.5, 0.3, -0.2, -1.0, -INF, 0.9, -3.0, 0.0, 1.1, -0.7]])
DRAW_CASES = {
    "filtered": probs(FIXED, Sampling(temperature=0.8, top_k=9, top_p=0.95, min_p=0.05))[0],
    "unnormalised": torch.tensor([0.0, 5.0, 1.0, 0.0, 2.5, 0.5, 3.0]),
}


@pytest.mark.parametrize("name", list(DRAW_CASES))
def test_draw_is_categorical(name):
    p, n = DRAW_CASES[name], 20_000
    assert 0 < (p > 0).sum() < p.numel()                                      # something is filtered
    draws = draw(p.expand(n, -1).contiguous(), torch.Generator().manual_seed(1))
    assert draws.dtype == torch.int64 and draws.shape == (n,)
    counts = torch.bincount(draws, minlength=p.numel()).double()
    assert torch.equal(counts > 0, p > 0)                                     # exactly the support
    expected = (p / p.sum()).double()[p > 0] * n
    stat = float(((counts[p > 0] - expected) ** 2 / expected).sum())
    assert stat < chi_square_threshold(int((p > 0).sum()) - 1), stat


def test_wilson_hilferty_is_close_to_the_table():
    for dof, table in [(3, 16.266), (5, 20.515), (10, 29.588)]:              # chi2.ppf(0.999, dof)
        assert 0 <= chi_square_quantile(dof) - table < 0.02 * table         # a little conservative


ARGMAX_SHAPES = [(3, 50304), (2, 4096), (2, 8192), (2, 4100), (2, 100), (1, 1)]


@pytest.mark.parametrize("shape", ARGMAX_SHAPES)
def test_argmax_first_index_like_torch(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, shape, generator=g).float()                      # the max is tied often
    B, V = shape
    if V > 1:
        x[0, V // 3] = x[0, V - 1] = 9.0                                     # tie in two chunks
        x[-1] = -INF
        x[-1, V - 1] = 1.0
    if B > 2:
        x[1] = 0.0                                                           # a constant row
    assert torch.equal(argmax(x), x.argmax(-1))


@pytest.mark.parametrize("field, bad", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", -1), ("top_k", 2.5),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")), ("min_p", 1.0), ("min_p", -0.1),
])
def test_check_names_the_bad_field(field, bad):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        Sampling(**{field: bad}).check()


def test_a_filter_at_temperature_0_is_refused():
    for s in (Sampling(top_k=50), Sampling(top_p=0.9), Sampling(min_p=0.1), Sampling(0.0, 5, 0.5, 0.1)):
        with pytest.raises(ValueError, match="temperature 0 is greedy"):
            s.check()


def test_check_accepts_good_settings():
    for s in [Sampling(), Sampling(0.7, 50, 0.9, 0.05), Sampling(1.0, 0, 1.0, 0.0)]:
        s.check()


def test_sample_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(3))
    s = Sampling(temperature=1.0, top_k=100, top_p=0.9, min_p=0.01)
    runs = []
    for seed in (5, 5, 6):
        g = torch.Generator().manual_seed(seed)
        runs.append(torch.stack([sample(logits, s, g) for _ in range(20)]))  # [20, B]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert torch.equal(sample(logits, Sampling()), logits.argmax(-1))
