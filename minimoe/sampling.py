"""Sampling: turn one row of logits into the next token, on the device, with no host sync.

Greedy decoding is an argmax. Sampling reshapes the distribution first, in the order transformers'
`GenerationMixin._get_logits_processor` applies its warpers, each on the output of the one before:

    temperature  logits / T                                     (TemperatureLogitsWarper)
    top-k        keep the k largest logits, ties with the k-th kept      (TopKLogitsWarper)
    top-p        keep the nucleus: the smallest set of most likely tokens whose probability
                 mass reaches p (Holtzman et al. 2019, arXiv:1904.09751)  (TopPLogitsWarper)
    min-p        keep tokens at least min_p times as likely as the top one
                 (Nguyen et al. 2024, arXiv:2407.01082)                   (MinPLogitsWarper)

Every filter reduces to a per-row logit cut [B, 1] and a `masked_fill(logits < cut, -inf)`; the
most likely token always survives (transformers' `min_tokens_to_keep` = 1).

Boundaries are decided as exact. Logits arrive rounded to float32, so a mass meant to be exactly
0.8 arrives as 0.79999997 or 0.80000003: the cuts are computed in float64 and allow a slack just
above that rounding (TOP_P_SLACK, MIN_P_SLACK). Example: p = [0.3, 0.1, 0.1, 0.5], top_p = 0.8
keeps {3, 0}, whose mass is exactly 0.8, and no 0.1 token.

Ties at a cut are kept whole: a filter is a function of the logit values, never of token indices,
so equally likely tokens are treated alike. For top-k and min-p this is what transformers does.
For top-p transformers keeps whichever tied tokens its sort puts last (with PyTorch's CPU
sort, the highest indices: p = [0.5, 0.2, 0.2, 0.1], top_p = 0.6 keeps {0, 2}); here both 0.2
tokens are kept, {0, 1, 2}. transformers also decides boundaries in raw float32: over random
distributions w / sum(w) (integer w) cut exactly at a boundary, its top-p kept one token too many
in 22% of cases and its min-p dropped the boundary token in 38%. Away from ties and exact
boundaries the two agree to 1e-6 (tests/test_sampling.py).

The draw uses the exponential race: if E_i ~ Exp(1), argmax_i p_i / E_i ~ Categorical(p), with no
`torch.multinomial` (which syncs with the host) and no need for p to be normalised (gpt-fast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# A boundary this close counts as reached, so that an exact boundary does not hang on rounding.
# Top-p, in probability mass: float32 logits of size < 8 move a float64 prefix sum by < 3e-8.
# Min-p, in logit (= relative probability): two such logits are each off by up to half an ulp(8),
# 4.8e-7. Larger than needed is not free: a cut that truly falls inside the slack is moved.
TOP_P_SLACK = 1e-7
MIN_P_SLACK = 1e-6

ARGMAX_CHUNKS = 64


@dataclass
class Sampling:
    """How the next token is chosen; the default is greedy. `check()` raises ValueError for a field out of range and
    for a top-k / top-p / min-p filter at temperature 0 (greedy has no distribution to filter)."""
    temperature: float = 0.0       # 0 = greedy; otherwise logits are divided by it
    top_k: int = 0                 # 0 = off; keep the k most likely tokens (and ties with the k-th)
    top_p: float = 1.0             # 1 = off; keep the smallest set whose probability reaches top_p
    min_p: float = 0.0             # 0 = off; keep tokens with p >= min_p * max(p)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def check(self) -> None:
        """Raise ValueError naming the first bad field. Written as `not (ok)` so NaN fails too."""
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 is off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 is off), got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 is off), got {self.min_p}")
        if self.greedy and (self.top_k, self.top_p, self.min_p) != (0, 1.0, 0.0):
            raise ValueError("top_k / top_p / min_p filter a sampled distribution, but temperature 0 is greedy: "
                             "set temperature > 0 (1.0 samples the model's own distribution) or drop the filters")


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> [B] int64, the first index of each row's maximum, as torch.argmax.

    A plain argmax reduces each row in one thread block (13.7 µs for V = 50304 at B = 1 on the H200,
    ~1% of a decode step); cutting the row into ARGMAX_CHUNKS chunks first spreads it over the GPU.
    The first-index rule survives: `max` gives the first index within a chunk, `argmax` over the
    chunk maxima the first chunk holding the maximum."""
    B, V = logits.shape
    if V % ARGMAX_CHUNKS or V < 64 * ARGMAX_CHUNKS:
        return logits.argmax(-1)
    vals, idx = logits.view(B, ARGMAX_CHUNKS, V // ARGMAX_CHUNKS).max(-1)   # [B, C] per-chunk max
    best = vals.argmax(-1, keepdim=True)                                     # [B, 1] first chunk with it
    return (best * (V // ARGMAX_CHUNKS) + idx.gather(1, best)).squeeze(1)


def top_k_cut(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits [B, V] -> [B, 1], the k-th largest logit: every logit >= it is kept, ties with the
    k-th included, as transformers' TopKLogitsWarper."""
    return logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]


def top_p_cut(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits [B, V] -> [B, 1], the smallest logit of the nucleus (transformers' TopPLogitsWarper,
    but with exact boundaries and ties kept whole: see the module docstring).

    In descending order a token belongs to the nucleus while the mass strictly before it is short
    of top_p; the first token always does (mass 0 before it). In float32 the softmax alone moves
    the mass by up to 1.5e-7 and a 50k-term prefix sum by far more, hence float64."""
    ranked = logits.sort(dim=-1, descending=True).values                    # [B, V]
    p = ranked.double().softmax(-1)                                          # [B, V]
    before = p.cumsum(-1) - p                                                # [B, V] mass above each
    n = (before < top_p - TOP_P_SLACK).sum(-1, keepdim=True)                 # [B, 1] nucleus size
    return ranked.gather(-1, n.clamp_min(1) - 1)                             # [B, 1]


def min_p_cut(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """logits [B, V] -> [B, 1] float64, transformers' MinPLogitsWarper in logit form:
    p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p).
    Working on logits spares a softmax, and the slack is relative, so a tiny min_p stays tiny. The
    cut is float64 because rounding it to float32 would cost up to half an ulp, half the slack."""
    return logits.amax(-1, keepdim=True).double() + (math.log(min_p) - MIN_P_SLACK)


def probs(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """logits [B, V] (any float dtype; each row needs a finite entry) -> [B, V] float32, the
    distribution `sample` draws from: temperature, then top-k, top-p, min-p (see the module
    docstring), renormalised. Greedy gives the one-hot of `argmax`. A row with no finite logit
    gives NaNs, as in transformers; `s` is not checked here (call `s.check()` once, up front)."""
    logits = logits.float()
    if s.greedy:
        one_hot = torch.zeros_like(logits)                                   # [B, V]
        return one_hot.scatter_(-1, argmax(logits)[:, None], 1.0)
    x = logits / s.temperature                                               # [B, V]
    if s.top_k:
        x = x.masked_fill(x < top_k_cut(x, s.top_k), float("-inf"))
    if s.top_p < 1:
        x = x.masked_fill(x < top_p_cut(x, s.top_p), float("-inf"))
    if s.min_p > 0:
        x = x.masked_fill(x < min_p_cut(x, s.min_p), float("-inf"))
    return x.softmax(-1)


def draw(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """p [B, V] non-negative weights (rows need not sum to 1; each needs one positive entry) ->
    [B] int64, one categorical draw per row, on p's device with no host sync (gpt-fast's
    `multinomial_sample_one_no_sync`). A zero weight is never drawn: 0 / E = 0 loses to any
    positive p_i / E; an all-zero row gives token 0. Nothing is raised: checks would sync."""
    p = p.float()
    race = torch.empty_like(p).exponential_(generator=generator)             # [B, V] Exp(1)
    # exponential_ can return an exact 0 on the CPU (pytorch/pytorch#22557, #166243), and 0 / 0 is
    # a NaN that argmax would pick; the floor changes nothing else.
    race.clamp_min_(torch.finfo(torch.float32).tiny)
    return argmax(p / race)


def sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B] int64: argmax when greedy, else a draw from `probs`."""
    if s.greedy:
        return argmax(logits)
    return draw(probs(logits, s), generator)
