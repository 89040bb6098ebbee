"""What the decode loop costs between graphed steps: the input copy, the output clone and the graph boundary.

    python scripts/graph_boundary_probe.py --models qwen3 olmoe --batches 1 64 [--steps 64] [--rounds 3] [--json OUT]

For each model and batch (random weights, real shapes, `--fused`, defaults otherwise) the same captured step is timed
four ways, interleaved round by round, CUDA events around `--steps` steps back to back (µs a step, median of rounds):

    loop      Generator.decode(tok): copy the token in, replay, clone the token out (bench.py's loop before the
              thirty-sixth session)
    live      Generator.decode(tok, own=False): the graph's own token buffer passed straight back (bench.py's loop)
    replay    graph.replay() alone: the step's kernels and the boundary between two graphs, nothing else
    unroll2   one graph holding two steps, the second fed by the first's token (a boundary every 2 steps)
    unroll4   the same with four steps

loop - live is what own=False saves, loop - replay the copy and clone; replay - unroll2 is about half a graph boundary. Only timing: replay feeds the
prefill's token every step, the unrolled graphs restart from it every replay (the same kernels and bytes at batch 1,
where a token reads top-k experts whatever it is; at bs 64 the tokens decide how many experts a step touches, so
there only loop and live compare like with like).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from minimoe.generate import Generator
from minimoe.graphs import _capture, enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def unrolled(gen, n: int, first: torch.Tensor):
    """One graph of n decode steps, each fed the last one's token; every replay starts from `first`."""
    tokens = first.clone()
    saved = gen.cache.lengths.clone()

    def run():
        t = tokens
        for _ in range(n):
            t = gen.eager_step(t, None)
        return t
    graph, _ = _capture(run, lambda: gen.cache.lengths.copy_(saved), 2)
    return graph


def time_it(fn, steps_per_call: int, steps: int) -> float:
    calls = steps // steps_per_call
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / (calls * steps_per_call)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("graph_boundary_probe: needs a CUDA GPU")
    rows = []
    for name in a.models:
        s = RunSettings(experts="fused", device="cuda").resolve()
        model, cfg, _ = build_model(name, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
        for B in a.batches:
            prompt = torch.randint(0, cfg.vocab_size, (B, a.input_len), generator=torch.Generator().manual_seed(0))
            times = {k: [] for k in ("loop", "live", "replay", "unroll2", "unroll4")}
            for _ in range(a.rounds):
                # each variant gets a fresh cache filled by the same prefill, so every one walks the same lengths
                for variant in times:
                    gen = Generator(model, B, a.input_len + 4 * a.steps + 64)
                    enable_graphs(gen)
                    tok = gen.prefill(prompt)
                    if variant in ("loop", "live"):
                        state = {"tok": tok}

                        def fn(g=gen, st=state, own=variant == "loop"):
                            st["tok"] = g.decode(st["tok"], own=own)
                        us = time_it(fn, 1, a.steps)
                    elif variant == "replay":
                        gen.graphs.tokens.copy_(tok)
                        us = time_it(gen.graphs.graph.replay, 1, a.steps)
                    else:
                        n = int(variant[-1])
                        us = time_it(unrolled(gen, n, tok).replay, n, a.steps)
                    times[variant].append(us)
                    del gen
            base = statistics.median(times["loop"])
            for variant, t in times.items():
                med = statistics.median(t)
                rows.append({"model": name, "batch": B, "variant": variant, "us_per_step": med,
                             "vs_loop_us": med - base, "rounds": t})
                print(f"{name:18s} bs {B:3d} {variant:8s} {med:9.1f} us/step  {med - base:+7.2f} us  "
                      f"rounds {', '.join(f'{x:.1f}' for x in t)}", flush=True)
        del model
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
