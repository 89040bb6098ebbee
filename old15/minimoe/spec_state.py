"""The state of a speculative generation between rounds, and a round captured whole as one CUDA graph.

speculative.py runs rounds on a SpecState: per-sequence device tensors that a round updates in place (the
newest token, the draft's lag, the output and its length, done flags) and its fixed inputs (stop ids, the
synthetic-acceptance reference and its coins). Because a round touches nothing else on the host, the whole
round (G draft forwards, the verify of G+1 tokens, acceptance, rollback, output) can be captured as one
CUDA graph (graphs.RoundGraph) on a static SpecState: `bind` returns that static state loaded with a fresh
generation's values (capturing the graph for (G, the synthetic rate, the shapes) on first use), and `play`
replays it. Rejection sampling keeps eager rounds: its draws come from a torch.Generator.

Shape legend: B sequences, N tokens asked for, R reference positions, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .graphs import RoundGraph


@dataclass
class SpecState:
    """One generation's per-sequence device state between rounds, and its fixed inputs."""
    tok: torch.Tensor            # [B] the newest emitted token, in neither cache yet
    catch: torch.Tensor          # [B] the token the draft lags behind by when lag = 1
    lag: torch.Tensor            # [B] int64 0/1: the draft cache is one entry behind the target's
    n_out: torch.Tensor          # [B] int64 tokens emitted so far
    done: torch.Tensor           # [B] bool: all its tokens (or a stop id); frozen from then on
    out: torch.Tensor            # [B, N + 1] emitted tokens; the last column takes the masked-off writes
    n_new: int                   # N, tokens asked for
    stop: torch.Tensor           # [n_stop] stop ids
    reference: torch.Tensor | None   # [B, >= N] the plain greedy run's tokens (synthetic acceptance)
    coin: torch.Tensor | None = None      # [B, R] float32 U(0, 1) per reference position: keep the reference's?
    other: torch.Tensor | None = None     # [B, R] int64 in 1..V-1: the miss is (reference + other) mod V
    graph: RoundGraph | None = None       # the whole-round graph this state is the static input of

    MOVING = ("tok", "catch", "lag", "n_out", "done", "out")           # what a round updates (in place)
    FIXED = ("stop", "reference", "coin", "other")                     # read-only inputs

    def clone(self) -> "SpecState":
        """A copy of the moving fields (the fixed inputs shared), bound to no graph."""
        return dataclasses.replace(self, graph=None, **{f: getattr(self, f).clone() for f in self.MOVING})

    def tensors(self) -> list:
        return [t for t in (getattr(self, f) for f in self.MOVING + self.FIXED) if t is not None]

    def key(self) -> tuple:
        """What a whole-round graph bakes in besides the generator's G: N and every tensor's shape."""
        return (self.n_new,) + tuple(None if t is None else tuple(t.shape)
                                     for t in (getattr(self, f) for f in self.MOVING + self.FIXED))


class WholeRounds:
    """Mixin of speculative.SpeculativeGenerator: whole-round graphs (needs its graphed, graph_rounds,
    sampling, count_experts, gamma, draft_accept, round_graphs, counts, target, draft, _static, round, _mark)."""

    def bind(self, st: SpecState) -> SpecState:
        """The state to play rounds on: with graphs on and greedy acceptance, the static state of the
        round graph for (G, st's shapes), captured on first use, loaded with st's values; else st."""
        if not (self.graphed and self.graph_rounds and self.sampling.greedy and not self.count_experts
                and RoundGraph.supported(self.target.device)):
            return st
        key = (self.gamma, self.draft_accept) + st.key()          # both are baked into the captured round
        graph = self.round_graphs.get(key)
        if graph is None:
            graph = self.round_graphs[key] = self._capture_round(st)
        self._load(graph, st)
        return graph.state

    def _capture_round(self, template: SpecState) -> RoundGraph:
        state = dataclasses.replace(template, graph=None, **{f: getattr(template, f).clone()
                                                             for f in SpecState.MOVING + SpecState.FIXED
                                                             if getattr(template, f) is not None})
        touched = [self.target.cache.lengths, self.draft.cache.lengths, self.counts, self.target.nonfinite,
                   *state.tensors()]

        def run():
            self._static = True
            try:
                self.round(state)
            finally:
                self._static = False
        graph = RoundGraph(run, touched)
        graph.state, state.graph = state, graph
        return graph

    @staticmethod
    def _load(graph: RoundGraph, st: SpecState) -> None:
        for dst, src in zip(graph.state.tensors(), st.tensors()):
            dst.copy_(src)

    def play(self, st: SpecState) -> None:
        """One round: a replay of st's round graph when st is bound to one, else round(st) eagerly."""
        if st.graph is None:
            self.round(st)
            return
        st.graph.replay()
        for gen in (self.target, self.draft):            # host bounds: a round appends at most G+1 entries
            gen.host_len = min(gen.host_len + self.gamma + 1, gen.cache.max_len)
        self._mark()

