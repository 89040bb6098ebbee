"""Acceptance rules of speculative decoding: which of the draft's G proposals the target keeps.

Each rule takes one round's tensors (the proposals d [B, G], the target's logits for the G+1
positions [B, G+1, V]) and returns, per sequence, how many leading proposals are kept (a, 0..G) and
the one token the target adds after them: its correction at position a, or a bonus from p_G when all
G were kept. Pure functions of device tensors, with no host sync (speculative.py runs them).

The rules:
  * greedy: keep d_i while d_i == argmax p_i; the extra token is argmax p_a. The output is plain
    greedy decoding's, token for token (up to rounding between a (G+1)- and a 1-token forward).
  * sampling (temperature, top-k, top-p, min-p through `sampling.probs`): keep d_i with probability
    min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from max(0, p_a - q_a), renormalised;
    after G kept, a bonus from p_G. Each emitted token then has exactly the target's distribution,
    whatever the draft's q (Leviathan et al., Theorem 1; vLLM's rejection sampler does the same).
  * synthetic (--draft-accept A; speed studies on random weights; greedy only): the draft runs its
    real forwards, but each proposal is replaced by the token a plain greedy run of the same prompts
    chose there (the reference) with probability A, and by another token otherwise; a proposal is
    kept when it equals the reference and the extra token is the reference's. The output is the
    plain run's, the acceptance is A per token by construction, the cost is real. `diverged` counts
    positions where the target's own argmax differed from the reference (bf16 rounding on flat
    random-weight logits), so a reader sees how far the forcing was from free decoding.
"""
from __future__ import annotations

import torch

from .sampling import Sampling, argmax, draw, probs


def leading(ok: torch.Tensor) -> torch.Tensor:
    """ok [B, G] bool -> [B] int64, the number of leading True entries of each row."""
    return ok.long().cumprod(1).sum(1)


def accept_greedy(drafts: torch.Tensor, logits: torch.Tensor):
    """drafts [B, G] int64, target logits [B, G+1, V] -> (kept a [B] in 0..G, extra token [B])."""
    B, S, V = logits.shape
    best = argmax(logits.reshape(B * S, V)).view(B, S)                             # [B, G+1]
    a = leading(drafts == best[:, :-1])
    return a, best.gather(1, a[:, None])[:, 0]


def accept_sampled(drafts: torch.Tensor, q: torch.Tensor, logits: torch.Tensor, s: Sampling, generator=None):
    """Rejection sampling. drafts [B, G] drawn from q [B, G, V] (float32), target logits [B, G+1, V]
    -> (a [B], extra [B]): keep d_i with probability min(1, p_i/q_i); the extra token comes from
    max(0, p_a - q_a) (q_G = 0: from p_G once all G are kept)."""
    B, S, V = logits.shape
    G = S - 1
    p = probs(logits.reshape(B * S, V), s).view(B, S, V)                           # [B, G+1, V]
    pd = p[:, :G].gather(2, drafts[..., None])[..., 0]                            # [B, G]
    qd = q.gather(2, drafts[..., None])[..., 0]                                   # [B, G]
    u = torch.rand(pd.shape, device=pd.device, generator=generator)
    a = leading(u * qd < pd)                                  # u < p/q, without dividing by a zero q
    rows = torch.arange(B, device=p.device)
    q_a = q[rows, a.clamp(max=G - 1)] * (a < G)[:, None]                          # [B, V]
    residual = (p[rows, a] - q_a).clamp_min(0)                                    # [B, V]
    # p_a == q_a leaves no mass, but then a rejection had probability 0: draw from p_a if rounding got here
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[rows, a])
    return a, draw(residual, generator)


def accept_reference(drafts: torch.Tensor, window: torch.Tensor):
    """Synthetic acceptance. drafts [B, G], window [B, G+1] the reference's next G+1 tokens -> (a, extra)."""
    a = leading(drafts == window[:, :-1])
    return a, window.gather(1, a[:, None])[:, 0]
