"""When does speculation pay? MoESD's cost model, fed with measured step times, and --gamma auto.

A round of speculative decoding costs the draft's G steps, one target forward of G+1 tokens and
the acceptance bookkeeping; it yields 1..G+1 tokens. Plain decoding yields one token per target
step. With each proposal kept with probability alpha, independently (Leviathan et al. 2023, §3.1):

    E[tokens per round] = (1 - alpha^(G+1)) / (1 - alpha)
    speed-up(B, G)      = E[tokens per round] * T_T(B, 1) / T_round(B, G)
    T_round(B, G)       = T_D(B, 2) + (G - 1) * T_D(B, 1) + T_T(B, G+1) + T_accept(B, G)

which is MoESD's form (Huang et al. 2025, arXiv 2505.19645: acceptance, draft step time, target
time at 1 and G+1 tokens; its "target efficiency" is T_T(B,1) / T_T(B,G+1)). The first draft step
feeds 2 tokens (speculative.py). For an MoE target T_T(B, G+1) / T_T(B, 1) is the crux: at batch 1
G+1 tokens touch up to (G+1)x the experts' bytes, so the verify costs several decode steps; from
medium batches on every expert is read anyway and the verify is almost free.

A batch runs until its slowest sequence has its N tokens, so the predicted run takes the expected
maximum over B sequences of their rounds (a small Monte Carlo, `expected_rounds`), not N / E[tokens].

Every input is measured on this machine with this engine (`measure_step_times`: graphed steps when
graphs are on, medians of CUDA-event timings), and T_round is timed whole, so the bookkeeping is
T_round minus its forwards. `--gamma auto` (`choose_gamma`) takes the G with the best predicted
speed-up, and 0 (speculation off) unless that beats plain decoding by AUTO_MARGIN: a misprediction
of a few % then cannot make a run slower than plain by more than a few % (Cascade, arXiv 2506.20675,
caps slowdowns at 5% the same way, with measured utilities).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

AUTO_GAMMAS = tuple(range(1, 9))
AUTO_MARGIN = 0.05          # speculation must be predicted >= 5% faster than plain to be switched on
PILOT_GAMMA, PILOT_TOKENS = 4, 32


@dataclass
class StepTimes:
    """Measured step times (ms) at one batch size B: the cost model's inputs."""
    batch: int
    target_ms: float                                    # T_T(B, 1): one plain decode step (with sampling)
    draft_ms: float                                     # T_D(B, 1)
    draft2_ms: float                                    # T_D(B, 2): a round's first draft step
    verify_ms: dict = field(default_factory=dict)       # G -> T_T(B, G+1)
    round_ms: dict = field(default_factory=dict)        # G -> one whole round, timed as such
    eager_round_ms: dict = field(default_factory=dict)  # G -> the same round eagerly between per-step graphs
    #                                                     (only measured when rounds are graphed whole)

    def accept_ms(self, G: int) -> float:
        """The round's bookkeeping (acceptance, rollback, output): the round minus its forwards, each a median of
        its own timing. A residual, so it can come out negative: a round graphed whole skips the launch gaps its
        forwards pay when timed apart, and on a CPU the medians' noise is larger than the bookkeeping itself. The
        cost model uses round_ms, not this."""
        return self.round_ms[G] - (self.draft2_ms + (G - 1) * self.draft_ms + self.verify_ms[G])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accept_ms"] = {G: self.accept_ms(G) for G in self.round_ms}
        d["target_efficiency"] = {G: self.target_ms / v for G, v in self.verify_ms.items()}
        return d


def expected_tokens(alpha: float, G: int) -> float:
    """Mean tokens one round emits when each of G proposals is kept with probability alpha."""
    return G + 1.0 if alpha >= 1 else (1 - alpha ** (G + 1)) / (1 - alpha)


def expected_rounds(alpha: float, G: int, batch: int, n_tokens: int, trials: int = 256, seed: int = 0) -> float:
    """Mean rounds until all `batch` sequences have n_tokens more tokens (Monte Carlo, i.i.d. acceptance):
    a sequence's round emits 1 + min(K, G), K geometric with P(K >= k) = alpha^k."""
    if n_tokens <= 0:
        return 0.0
    u = torch.rand(trials, batch, n_tokens, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if alpha >= 1 or alpha <= 0:
        kept = torch.full_like(u, G if alpha >= 1 else 0)
    else:
        kept = (u.log() / math.log(alpha)).floor().clamp(max=G)                  # [trials, B, rounds]
    rounds = ((kept + 1).cumsum(-1) < n_tokens).sum(-1) + 1                     # [trials, B]
    return float(rounds.max(-1).values.double().mean())


def predict(times: StepTimes, alpha: float, G: int, n_tokens: int | None = None) -> dict:
    """Predicted decode-phase speed-up of G over plain decoding. n_tokens: tokens after the first (the
    prefill's), to count the batch's slowest sequence; None: the per-token rate of a long run."""
    per_round = expected_tokens(alpha, G)
    t_round = times.round_ms[G]
    if n_tokens:
        rounds = expected_rounds(alpha, G, times.batch, n_tokens)
        speedup = n_tokens * times.target_ms / (rounds * t_round)
    else:
        rounds, speedup = None, per_round * times.target_ms / t_round
    return {"gamma": G, "alpha": alpha, "speedup": speedup, "tokens_per_round": per_round, "rounds": rounds,
            "round_ms": t_round, "draft_share": (times.draft2_ms + (G - 1) * times.draft_ms) / t_round,
            "target_efficiency": times.target_ms / times.verify_ms[G]}


def choose_gamma(times: StepTimes, alpha: float, n_tokens: int | None = None, margin: float = AUTO_MARGIN):
    """--gamma auto: (G, predictions for every measured G). G = 0 (off) unless the best predicted
    speed-up is at least 1 + margin."""
    preds = [predict(times, alpha, G, n_tokens) for G in sorted(times.round_ms)]
    best = max(preds, key=lambda p: p["speedup"])
    return (best["gamma"] if best["speedup"] >= 1 + margin else 0), preds


# ---- measuring the inputs ----------------------------------------------------------------------------------

def _median_ms(fn, restore, iters: int, device: torch.device) -> float:
    """Median ms of fn() over iters calls after 2 warm-ups; restore() after each call, untimed."""
    times = []
    for i in range(iters + 2):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ms = a.elapsed_time(b)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        restore()
        if i >= 2:
            times.append(ms)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def measure_step_times(spec, prompts, n_new: int, gammas=AUTO_GAMMAS, iters: int = 10) -> StepTimes:
    """Time the cost model's inputs for a speculative.SpeculativeGenerator at its batch, after
    prefilling `prompts` (the context of a real run); graphed when spec's graphs are on. The verify
    alone is timed on random tokens (distinct tokens route to distinct experts, as drafts do); the
    whole round on the draft's own proposals (random reference tokens under --draft-accept)."""
    device, G0, B = spec.target.device, spec.gamma, spec.batch
    V = spec.target.model.cfg.vocab_size
    rand = torch.Generator(device).manual_seed(0)
    spec.gamma = max(gammas)
    ref = None if spec.draft_accept is None else torch.randint(V, (B, n_new), device=device, generator=rand)
    st = spec.start(prompts, n_new, reference=ref)
    saved = (spec.target.cache.lengths.clone(), spec.draft.cache.lengths.clone(), spec.target.host_len,
             spec.draft.host_len)
    work = [spec.bind(st.clone()), st.clone()]

    def restore():
        spec.target.cache.lengths.copy_(saved[0])
        spec.draft.cache.lengths.copy_(saved[1])
        spec.target.host_len, spec.draft.host_len = saved[2], saved[3]
        work[0] = spec.bind(st.clone())      # the round graph's state when rounds are graphed (untimed load)
        work[1] = st.clone()                 # an unbound state: an eager round
    tok = st.tok
    t = StepTimes(B, target_ms=_median_ms(lambda: spec.target.decode(tok), restore, iters, device),
                  draft_ms=_median_ms(lambda: spec.draft_forward(tok[:, None]), restore, iters, device),
                  draft2_ms=_median_ms(lambda: spec.draft_forward(torch.stack([tok, tok], 1)), restore, iters, device))
    for G in gammas:
        spec.gamma = G
        tokens = torch.randint(V, (B, G + 1), device=device, generator=rand)
        t.verify_ms[G] = _median_ms(lambda: spec.verify(tokens), restore, iters, device)
        restore()                                 # binds the round graph for this G
        t.round_ms[G] = _median_ms(lambda: spec.play(work[0]), restore, iters, device)
        if work[0].graph is not None:             # the A/B: the same round, eager between per-step graphs
            t.eager_round_ms[G] = _median_ms(lambda: spec.round(work[1]), restore, iters, device)
    spec.gamma = G0
    return t


def pilot_alpha(spec, prompts, n_new: int) -> float:
    """Measured acceptance: a short speculative run of the real prompts at PILOT_GAMMA."""
    G0 = spec.gamma
    spec.gamma = PILOT_GAMMA
    spec.generate(prompts, max(2, min(n_new, PILOT_TOKENS)))
    alpha = spec.stats()["alpha"]
    spec.gamma = G0
    return alpha


def auto_gamma(spec, prompts, n_new: int, alpha: float | None = None, gammas=AUTO_GAMMAS):
    """--gamma auto for this batch: measure step times, take alpha as given (--draft-accept) or from a
    pilot run, pick G. -> (G, {"alpha", "alpha_source", "step_times", "predictions"})."""
    times = measure_step_times(spec, prompts, n_new, gammas, iters=10 if spec.target.device.type == "cuda" else 3)
    source = "given (--draft-accept)" if alpha is not None else f"measured (pilot run, G={PILOT_GAMMA})"
    if alpha is None:
        alpha = pilot_alpha(spec, prompts, n_new)
    G, preds = choose_gamma(times, alpha, n_new - 1)
    return G, {"alpha": alpha, "alpha_source": source, "step_times": times.to_dict(), "predictions": preds,
               "chosen_gamma": G, "margin": AUTO_MARGIN}
