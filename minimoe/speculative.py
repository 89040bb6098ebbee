"""Speculative decoding with a draft model: a small model guesses, the target checks G guesses at once.

A decode step of a large model is bound by reading its weights, not by arithmetic, so scoring G+1
tokens in one forward costs little more than scoring one. A small draft model proposes G tokens,
the target scores them all in one `append`, and every proposal up to the first disagreement is kept,
plus one token of the target's own: 1..G+1 tokens per target forward (Leviathan, Kalman, Matias
2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318). For an MoE target the verify is dearer
than for a dense one (G+1 tokens touch more experts than one), which spec_cost.py models.

One round, for every sequence of the batch at once:
    draft     d_0..d_{G-1}: G forwards of the draft. The first is a 2-token append that also feeds
              the token the draft lags behind by after a round whose proposals were all kept
    verify    target.append([tok, d_0, ..., d_{G-1}]) -> p_0..p_G, one forward of G+1 tokens
    accept    a = how many leading proposals are kept (0..G, each sequence its own); emit
              d_0..d_{a-1} and one more token: the target's correction at a, or a bonus from p_G
    rollback  both caches lower each sequence's device-side length to what it kept (kv_cache.py);
              rejected entries stay in memory, are never read, and the next round overwrites them

Acceptance rules (greedy, rejection sampling, synthetic): spec_accept.py. The per-sequence state and the
whole-round graphs: spec_state.py.

Batched and ragged: lengths live on the device, nothing is padded or repacked, and a finished
sequence is frozen (its lengths stop moving) while the others go on. The host syncs only to decide
whether to stop, after as many rounds as the slowest sequence needs at the very least
(ceil(tokens left / (G+1))): a handful of syncs per run (one per round when stop ids are given, as
plain decoding syncs per step then).

Graphs. A round is ~100 small launches of bookkeeping (argmax, gathers, comparisons, rollbacks, the
output scatter) around G+1 forwards, and at batch 1, or with a small target, those launches cost as
much as the forwards. So with graphs on, a greedy round (plain or synthetic acceptance) is captured
WHOLE as one CUDA graph (graphs.RoundGraph): the draft's G forwards, the verify, the acceptance and
the bookkeeping, replayed with one launch per round on a static SpecState that the generation binds
to (`bind`). Its forwards are the static-shape steps (host_len None) that the per-step graphs
capture too, so a graphed round computes what an eager round with those steps computes. Rejection
sampling keeps per-step graphs (the draft's 1- and 2-token steps and the verify of G+1 tokens,
graphs.AppendGraph) with eager acceptance: its draws come from a torch.Generator. The synthetic
proposals draw their coins up front (SpecState.coin / other, one per reference position), so
a round needs no random numbers.
"""
from __future__ import annotations

import contextlib

import torch

from .generate import Generator, stop_tensor
from .graphs import AppendGraph, enable_graphs
from .instrument import ExpertLoad, profiling
from .ops import nonfinite_rows
from .sampling import Sampling, argmax, draw, probs
from .settings import MAX_GAMMA
from .spec_accept import accept_greedy, accept_reference, accept_sampled
from .spec_state import SpecState, WholeRounds


# ---- the generator -----------------------------------------------------------------------------------------

class SpeculativeGenerator(WholeRounds):
    """Draft + target decoding. The two Generators (`draft`, `target`) keep their own static caches;
    `gamma` (G) may be changed between generations (one verify graph per G)."""

    def __init__(self, target, draft, batch: int, max_len: int, gamma: int, sampling: Sampling | None = None,
                 draft_accept: float | None = None, seed: int = 0):
        if draft.cfg.vocab_size != target.cfg.vocab_size:
            raise ValueError(f"the draft's vocabulary ({draft.cfg.vocab_size}) differs from the target's "
                             f"({target.cfg.vocab_size}): they must share one tokenizer")
        self.target = Generator(target, batch, max_len, sampling)
        self.draft = Generator(draft, batch, max_len, self.target.sampling)
        self.sampling = self.target.sampling
        if draft_accept is not None and not (self.sampling.greedy and 0.0 <= draft_accept <= 1.0):
            raise ValueError("--draft-accept needs greedy decoding and a rate in [0, 1]")
        self.draft_accept, self.gamma = draft_accept, gamma
        self.generator = None                                    # torch.Generator for sampling (optional)
        self.rng = torch.Generator(self.target.device).manual_seed(seed)   # synthetic proposals only
        self.draft_graphs, self.verify_graphs = {}, {}           # S -> graphs.AppendGraph
        self.round_graphs = {}                                   # (G, SpecState.key()) -> graphs.RoundGraph
        self.graph_rounds = True                                 # with graphs on: whole greedy rounds as one graph
        self._static = False                                     # forwards are the static-shape steps (capture)
        self.rounds_graphed = False                              # whether the last generate() replayed round graphs
        self.count_experts = False                               # measurement: distinct experts per verify
        self.verify_touched = []
        self._rows = torch.arange(batch, device=self.target.device)
        self._cols = torch.arange(MAX_GAMMA + 1, device=self.target.device)
        self.clock = None                                        # optional: .mark() after each phase
        self._reset_stats()

    @property
    def batch(self) -> int:
        return self.target.batch

    @staticmethod
    def positions(longest_prompt: int, n_new: int, gamma: int) -> int:
        """Cache positions a run needs: the verify writes G entries past plain decoding's last one."""
        return longest_prompt + n_new + gamma

    def _reset_stats(self) -> None:
        if not hasattr(self, "counts"):      # zeroed in place after that: round graphs add into this tensor
            self.counts = torch.zeros(4, dtype=torch.long, device=self.target.device)
        # ^ [sequence-rounds, kept proposals, rounds with a rejection, diverged positions], live sequences only
        self.counts.zero_()
        self.n_rounds = 0                                  # rounds of the batch (= target forwards after the prefill)
        self.emitted = None                                # [B] tokens each sequence emitted

    # ---- graphs and the forwards -----------------------------------------------------------------
    def enable_graphs(self, gammas=(), prefill_lengths=()) -> None:
        """Capture both models' decode (and prefill) graphs, the draft's 1- and 2-token steps, and the
        target's verify for each G in gammas (others are captured when first used)."""
        enable_graphs(self.target, prefill_lengths)
        enable_graphs(self.draft, prefill_lengths)
        self.draft_graphs = {S: AppendGraph(self.draft, S) for S in (1, 2)}
        for G in gammas:
            self.verify_graphs[G + 1] = AppendGraph(self.target, G + 1)

    @property
    def graphed(self) -> bool:
        return bool(self.draft_graphs)

    @contextlib.contextmanager
    def eager(self):
        """Run eagerly inside (forward hooks and expert counters see eager steps only), graphs kept."""
        saved = (self.draft_graphs, self.verify_graphs, self.round_graphs,
                 [(g.graphs, g.prefill_graphs) for g in (self.target, self.draft)])
        self.draft_graphs, self.verify_graphs, self.round_graphs = {}, {}, {}
        for g in (self.target, self.draft):
            g.graphs, g.prefill_graphs = None, {}
        try:
            yield self
        finally:
            self.draft_graphs, self.verify_graphs, self.round_graphs, gens = saved
            for g, (dg, pg) in zip((self.target, self.draft), gens):
                g.graphs, g.prefill_graphs = dg, pg

    def _forward(self, gen: Generator, graphs: dict, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] appended at gen's lengths -> logits [B, S, V]: the graph for S, or an eager step.
        gen.host_len stays an upper bound of the lengths, capped by the cache (rolled-back lengths are
        lower, and the room check in generate() keeps every write inside the cache)."""
        S = tokens.shape[1]
        if self._static:          # inside a whole-round graph: the static-shape step, no host bookkeeping
            return gen.forward_step(tokens, None)
        bound = min(gen.host_len, gen.cache.max_len - S)
        if self.graphed and S not in graphs and graphs is self.verify_graphs:
            graphs[S] = AppendGraph(gen, S)                   # a G not captured up front
        graph = graphs.get(S)
        logits = graph.run(tokens) if graph is not None else gen.forward_step(tokens, bound)
        gen.host_len = bound + S
        return logits

    def draft_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(self.draft, self.draft_graphs, tokens)

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, G+1] -> target logits [B, G+1, V]. With count_experts (eager only), also records the
        distinct experts per MoE layer this verify touched (a host sync: measurement runs only)."""
        if not self.count_experts:
            return self._forward(self.target, self.verify_graphs, tokens)
        cfg = self.target.model.cfg
        load = ExpertLoad.of(cfg, self.target.device)
        with profiling(None, load):
            logits = self._forward(self.target, self.verify_graphs, tokens)
        moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        self.verify_touched.append(float((load.counts[moe] > 0).sum(1).double().mean()))
        return logits

    def _mark(self) -> None:
        if self.clock is not None and not self._static:     # no host marks inside a captured round
            self.clock.mark()

    @property
    def marks_per_round(self) -> int:
        """Clock marks the last generate() made per round: draft, verify, accept (eager rounds), or one."""
        return 1 if self.rounds_graphed else 3

    # ---- one round -------------------------------------------------------------------------------
    def _propose(self, st: SpecState, lens: torch.Tensor):
        """G proposals [B, G] (and, when sampling, the distributions q [B, G, V] they were drawn from)."""
        first = torch.stack([torch.where(st.lag.bool(), st.catch, st.tok), st.tok], 1)    # [B, 2]
        logits = self.draft_forward(first)[self._rows, st.lag]                          # [B, V]
        self.draft.rollback(lens + 1)          # the draft holds every emitted token; the padding is dropped
        tokens, dists = [], []
        for i in range(self.gamma):
            if i:
                logits = self.draft_forward(tokens[-1][:, None])[:, 0]                 # [B, V]
            tok, q = self._propose_one(logits, st, i)
            tokens.append(tok)
            dists.append(q)
        return torch.stack(tokens, 1), (None if dists[0] is None else torch.stack(dists, 1))

    def _propose_one(self, logits: torch.Tensor, st: SpecState, i: int):
        if not self.sampling.greedy:
            q = probs(logits, self.sampling)                                           # [B, V]
            return draw(q, self.generator), q
        tok = argmax(logits)
        if st.reference is None:
            return tok, None
        # synthetic: the draft's real choice is replaced by the reference's token w.p. A, else by another one;
        # the coin of a position is drawn once (start()): a position is only decided once, so that is i.i.d.
        ref = st.reference
        pos = (st.n_out + i).clamp(max=ref.shape[1] - 1)[:, None]                     # [B, 1]
        want = ref.gather(1, pos)[:, 0]                                                # [B]
        hit = st.coin.gather(1, pos)[:, 0] < self.draft_accept
        other = (want + st.other.gather(1, pos)[:, 0]) % logits.shape[-1]
        return torch.where(hit, want, other), None

    def _accept(self, drafts, q, logits, st: SpecState, live):
        B, S, V = logits.shape
        self.target.nonfinite += nonfinite_rows(logits)
        if st.reference is None:
            if self.sampling.greedy:
                return accept_greedy(drafts, logits)
            return accept_sampled(drafts, q, logits, self.sampling, self.generator)
        ref, cols = st.reference, st.n_out[:, None] + self._cols[:S]                    # [B, G+1]
        window = ref.gather(1, cols.clamp(max=ref.shape[1] - 1))                        # [B, G+1]
        a, extra = accept_reference(drafts, window)
        own = argmax(logits.reshape(B * S, V)).view(B, S)                               # the target's choice
        seen = (self._cols[:S] <= a[:, None]) & live[:, None] & (cols < ref.shape[1])
        self.counts[3] += ((own != window) & seen).sum()
        return a, extra

    def round(self, st: SpecState) -> None:
        """One draft-verify-accept round over the whole batch; updates st and both caches (no host sync)."""
        G, live = self.gamma, ~st.done
        lens = self.target.cache.lengths.long()                    # [B] every emitted token but st.tok
        drafts, q = self._propose(st, lens)                        # [B, G]
        self._mark()
        logits = self.verify(torch.cat([st.tok[:, None], drafts], 1))                   # [B, G+1, V]
        self._mark()
        a, extra = self._accept(drafts, q, logits, st, live)
        # [B] tokens emitted this round: a + 1, never past N (a finished sequence's lengths stay in the cache)
        step = torch.where(live, torch.minimum(a + 1, st.n_new - st.n_out), 0)
        # every field of st is updated in place: a captured round (graphs.RoundGraph) replays onto st itself
        st.lag.copy_(torch.where(live, (step == G + 1).long(), st.lag))
        self.target.rollback(lens + step)
        self.draft.rollback(lens + step - st.lag)                  # a fully kept round: d_{G-1} is not in it
        emitted = torch.cat([drafts, extra[:, None]], 1).scatter(1, a[:, None], extra[:, None])   # [B, G+1]
        keep = self._cols[:G + 1] < step[:, None]                  # [B, G+1]
        slots = torch.where(keep, st.n_out[:, None] + self._cols[:G + 1], st.out.shape[1] - 1)
        st.out.scatter_(1, slots, emitted)
        st.n_out += step
        st.tok.copy_(torch.where(live, extra, st.tok))
        st.catch.copy_(torch.where(live, drafts[:, -1], st.catch))
        st.done.copy_(st.done | (st.n_out >= st.n_new) | (torch.isin(emitted, st.stop) & keep).any(1))
        self.counts[:3] += torch.stack([live.sum(), (a * live).sum(), ((a < G) & live).sum()])
        self._mark()

    # ---- a whole generation ----------------------------------------------------------------------
    def start(self, prompts, n_new: int, stop_ids=(), reference: torch.Tensor | None = None) -> SpecState:
        """Prefill both models (prompts: a [B, S] tensor or B token lists) -> the state of round 1."""
        longest = prompts.shape[1] if isinstance(prompts, torch.Tensor) else max(map(len, prompts))
        need = self.positions(longest, n_new, self.gamma)
        if need > self.target.cache.max_len:
            raise ValueError(f"speculation with G={self.gamma} needs {need} cache positions for these prompts and "
                             f"{n_new} new tokens; the caches hold {self.target.cache.max_len}")
        if not 1 <= self.gamma <= MAX_GAMMA:
            raise ValueError(f"gamma must be in 1..{MAX_GAMMA}, got {self.gamma}")
        if (reference is None) != (self.draft_accept is None):
            raise ValueError("synthetic acceptance (--draft-accept) needs the plain greedy run's tokens as "
                             "`reference`, and only it does")
        if reference is not None and (reference.shape[0] != self.batch or reference.shape[1] < n_new):
            raise ValueError(f"reference must be [{self.batch}, >= {n_new}], got {list(reference.shape)}")
        dev = self.target.device
        self._reset_stats()
        self.verify_touched = []
        for g in (self.target, self.draft):
            g.reset()
        stop = stop_tensor(stop_ids, n_new, dev)
        tok = self.target.prefill(prompts)
        self.draft.prefill(prompts)
        self._mark()
        out = torch.full((self.batch, n_new + 1), int(stop[0]) if stop.numel() else 0, device=dev)
        out[:, 0] = tok
        n_out = torch.ones(self.batch, dtype=torch.long, device=dev)
        coin = other = None
        if reference is not None:
            reference = reference.to(dev)
            V = self.target.model.cfg.vocab_size
            coin = torch.rand(reference.shape, device=dev, generator=self.rng)
            other = torch.randint(1, V, reference.shape, device=dev, generator=self.rng)
        return SpecState(tok, tok.clone(), torch.zeros_like(n_out), n_out, (n_out >= n_new) | torch.isin(tok, stop),
                         out, n_new, stop, reference, coin, other)

    def _sync(self, st: SpecState) -> int:
        """Host sync: the most tokens a live sequence still needs (0 = stop); tighten both host bounds."""
        left, lt, ld = torch.stack([torch.where(st.done, 0, st.n_new - st.n_out).max(),
                                    self.target.cache.lengths.max().long(),
                                    self.draft.cache.lengths.max().long()]).tolist()
        self.target.host_len, self.draft.host_len = lt, ld
        return left

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens: int, stop_ids=(), reference: torch.Tensor | None = None):
        """Prompts -> [B, max_new_tokens] new tokens, like Generator.generate: each sequence stops on its
        own at a stop id, keeps it, then only the first stop id follows. reference [B, >= N] int64:
        the plain greedy run's tokens, for (and only for) synthetic acceptance."""
        st = self.bind(self.start(prompts, max_new_tokens, stop_ids, reference))
        self.rounds_graphed = st.graph is not None
        free = 0
        while True:
            if free == 0:
                left = self._sync(st)
                if left <= 0:
                    break
                # each round emits >= 1 token per live sequence: no need to look again before this many
                free = 1 if st.stop.numel() else -(-left // (self.gamma + 1))
            self.play(st)
            self.n_rounds += 1
            free -= 1
        new = st.out[:, :max_new_tokens].clone()           # a bound state is the round graph's, reused
        if st.stop.numel():
            hit = torch.isin(new, st.stop).long()
            new = new.masked_fill(hit.cumsum(1) - hit > 0, int(st.stop[0]))   # after the first stop id
        self.emitted = st.n_out.clone()
        return new

    def stats(self) -> dict:
        """Acceptance over the last generate() (one host sync). alpha: the per-proposal acceptance that
        the i.i.d. model of spec_cost.py assumes, estimated as kept / (kept + rejections)."""
        rounds, kept, rejected, diverged = self.counts.tolist()
        G, B = self.gamma, self.batch
        emitted = int(self.emitted.sum()) if self.emitted is not None else 0
        out = {"gamma": G, "rounds": self.n_rounds, "sequence_rounds": rounds,
               "acceptance_rate": kept / max(1, rounds * G),
               "alpha": kept / max(1, kept + rejected),
               "mean_accepted_len": (kept + rounds) / max(1, rounds),
               "tokens_per_target_forward": emitted / (B * (1 + self.n_rounds)),
               "synthetic": self.draft_accept is not None, "nonfinite": int(self.target.nonfinite)}
        if self.draft_accept is not None:
            out.update(draft_accept=self.draft_accept, diverged=diverged)
        if self.verify_touched:
            out["experts_touched_per_verify"] = sum(self.verify_touched) / len(self.verify_touched)
        return out
