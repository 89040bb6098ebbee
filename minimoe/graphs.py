"""CUDA graphs for the decode step: launch the whole step with one call.

At decode sizes an MoE layer is ~10-20 small kernels, and a 16-48 layer model launches hundreds per
token; at a few microseconds each, launch overhead alone can exceed the time the GPU needs to stream
the weights. A CUDA graph records the step's kernels once and replays them with a single launch.
That needs a step with static shapes and addresses and no host syncs: the static KV cache with
device-side lengths (kv_cache.py), the masked or length-aware decode attention, a sync-free expert
path (grouped or fused; the loop path syncs per expert and cannot be captured) and on-device
sampling. Inputs are copied into a static tensor before each replay; the output tensor is the
graph's own and is copied out. The decode graph writes its sampled tokens into its own input tensor,
so a loop that passes them straight back (`Generator.decode(tok, own=False)`, the bench's timed loop)
replays with neither copy: the two were ~4.5-4.8 µs a bs-1 step on the H200 (Qwen3-30B-A3B, OLMoE;
scripts/graph_boundary_probe.py, docs/results/2026-12-04-s36).

Why plain `torch.cuda.CUDAGraph` rather than `torch.compile(mode="reduce-overhead")`: capture takes
milliseconds instead of a compile of minutes, the captured kernels are exactly the eager ones
(Triton kernels included) so eager stays the oracle, and nothing is fused behind our back, which
keeps every ablation honest. One decode graph per generator, i.e. per batch size bucket, and
optionally one prefill graph per prompt length (PrefillGraph).
"""
from __future__ import annotations

import torch

# After each prefill graph replay with PDL on, launch one empty PDL kernel from the host (kernels/pdl.py pdl_mark):
# without it the decode graph that follows ran 1.3-1.9% slower a bs-1 step (thirty-seventh session). A probe knob:
# "after" the output's clone (the default: it restores the fast step), "before" it (measured: it does not), "" (none).
# Off for a whole-bench A/B: python scripts/bench_knob.py "minimoe.graphs.PDL_MARK=''" -- <bench.py arguments>.
PDL_MARK = "after"


def _capture(run, restore, warmup: int):
    """Warm `run` up on a side stream (allocations, Triton autotuning), then record it as a graph.
    `restore` undoes each run's side effects on the cache so the capture leaves no trace."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(warmup):
            run()
            restore()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = run()
    restore()
    torch.cuda.synchronize()
    return graph, out


class DecodeGraph:
    def __init__(self, gen, warmup: int = 2):
        """Capture `gen.eager_step(tokens, host_len=None)` for the generator's batch, the sampled tokens
        written back into `tokens`: the static input [B] is the output too."""
        self.tokens = torch.zeros(gen.batch, dtype=torch.long, device=gen.device)   # static input and output [B]
        saved = gen.cache.lengths.clone()
        self.graph, _ = _capture(lambda: gen.eager_step(self.tokens, None, out=self.tokens),
                                 lambda: gen.cache.lengths.copy_(saved), warmup)
        self.pdl = gen.model.settings is not None and gen.model.settings.pdl == "on"

    def record(self, dst: torch.Tensor) -> None:
        """dst [B] (a view: a column of generate()'s token buffer) <- the latest step's tokens; then, with PDL on and
        PDL_MARK set, one empty PDL kernel (kernels/pdl.py pdl_mark), as after a prefill. Without it the next replays
        ran in the slow state: generate() at 128 new tokens +1.94% against bench.py's loop (OLMoE bs 1), +0.74%
        (bs 64), +1.32% (Qwen3-30B-A3B bs 1); with it +0.47 / +0.11 / +0.07% (H200, thirty-eighth session,
        scripts/generate_loop_probe.py). The copy itself as a Triton PDL kernel did not help (+1.83 / +0.76 / +1.29%)."""
        _check_mark()
        dst.copy_(self.tokens)
        if self.pdl and PDL_MARK:
            _pdl_mark()

    def step(self, tokens: torch.Tensor, own: bool = True) -> torch.Tensor:
        """tokens [B] -> the next tokens [B]: a clone (own) or the graph's buffer itself, valid until the next
        step. tokens may be that buffer (no copy in)."""
        if tokens is not self.tokens:
            self.tokens.copy_(tokens)
        self.graph.replay()
        return self.tokens.clone() if own else self.tokens


class PrefillGraph:
    """The prefill of a fresh batch (every sequence empty) of prompts padded to one length S.

    A prefill is one forward of B·S tokens; at small B·S its ~15 kernels per layer are short and the
    host cannot launch them as fast as the GPU runs them (measured on the H200: OLMoE bs 1, 128
    tokens: 13.7 ms eager for 3.2 ms of kernels). vLLM V1 graphs such steps too (its capture sizes
    reach 512 tokens). The graph is exact-shape: one per prompt length asked for, captured before
    timing; any other padded length runs eagerly. Ragged prompts replay it too: the real lengths
    n_valid [B] are a static input like the ids."""

    def __init__(self, gen, S: int, warmup: int = 2):
        _check_mark()                                      # a bad knob fails before the capture, not after it
        self.ids = torch.zeros(gen.batch, S, dtype=torch.long, device=gen.device)            # static [B, S]
        self.n_valid = torch.full((gen.batch,), S, dtype=torch.int32, device=gen.device)     # static [B]
        self.graph, self.out = _capture(lambda: gen.eager_prefill(self.ids, self.n_valid), gen.cache.reset, warmup)
        self.pdl = gen.model.settings is not None and gen.model.settings.pdl == "on"

    def run(self, ids: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
        """ids [B, S], n_valid [B] -> the first tokens [B] (a copy). With PDL on, one empty PDL kernel follows the
        copy (kernels/pdl.py pdl_mark): after a graphed prefill the decode graph otherwise runs in a slower state
        until the host next launches a PDL kernel (Qwen3-30B-A3B bs 1: 2,478 against 2,444 µs a step, H200,
        scripts/prefill_state_probe.py; the caches are bit-identical, so the state is not in memory)."""
        _check_mark()
        self.ids.copy_(ids)
        self.n_valid.copy_(n_valid)
        self.graph.replay()
        mark = PDL_MARK if self.pdl else ""
        if mark == "before":
            _pdl_mark()
        out = self.out.clone()
        if mark == "after":
            _pdl_mark()
        return out


def _check_mark() -> None:
    """Raises ValueError for a PDL_MARK other than 'after', 'before' or ''."""
    if PDL_MARK not in ("", "before", "after"):
        raise ValueError(f"graphs.PDL_MARK must be 'after', 'before' or '', not {PDL_MARK!r}")


def _pdl_mark() -> None:
    from .kernels.pdl import pdl_mark                  # sm90+ with Triton: PDL is on only there
    pdl_mark()


class AppendGraph:
    """`gen.forward_step(tokens [B, S], None)` -> logits [B, S, V] for one S (speculative verification
    of gamma+1 tokens): the static-shape multi-token step, masked SDPA over the whole cache."""

    def __init__(self, gen, S: int, warmup: int = 2):
        self.tokens = torch.zeros(gen.batch, S, dtype=torch.long, device=gen.device)         # static [B, S]
        saved = gen.cache.lengths.clone()
        self.graph, self.out = _capture(lambda: gen.forward_step(self.tokens, None),
                                        lambda: gen.cache.lengths.copy_(saved), warmup)

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.out


class RoundGraph:
    """Any sync-free device work `run()` (a whole speculative round: G draft forwards, the verify, the
    acceptance and the bookkeeping, speculative.py) as one graph. `touched`: every tensor run() changes
    in place that the capture must leave as it found it (cache lengths, the round's state, counters);
    the K/V it writes past the lengths is never read. `state`: the static inputs, set by the owner."""

    def __init__(self, run, touched, warmup: int = 2):
        saved = [t.clone() for t in touched]

        def restore():
            for t, s in zip(touched, saved):
                t.copy_(s)
        self.graph, _ = _capture(run, restore, warmup)
        self.state = None

    @staticmethod
    def supported(device: torch.device) -> bool:
        return device.type == "cuda"

    def replay(self) -> None:
        self.graph.replay()


def graph_safe(expert_path: str) -> bool:
    """Expert paths that make no host sync (the loop path syncs once per expert)."""
    return expert_path in ("grouped", "fused")


def enable_graphs(gen, prefill_lengths=()) -> None:
    """Capture the decode step of `gen` (a Generator on a CUDA device), and its fresh prefill for
    each prompt length in `prefill_lengths`, and use them from now on."""
    if gen.device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA GPU")
    experts = gen.model.settings.experts if gen.model.settings is not None else "loop"
    if not graph_safe(experts) and gen.model.cfg.is_moe:
        raise ValueError(f"CUDA graphs need a sync-free expert path (grouped or fused), not {experts!r}")
    gen.reset()
    gen.graphs = DecodeGraph(gen)
    for S in prefill_lengths:
        gen.prefill_graphs[S] = PrefillGraph(gen, S)
