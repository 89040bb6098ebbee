"""Does a side-stream L2 prefetch make a batch-1 GEMV faster, and at what cost to what runs beside it?

    python scripts/l2_probe.py [--layers 16] [--reps 20] [--rounds 5] [--json OUT]

A synthetic decode chain, captured as one CUDA graph (PDL on): per layer, with distinct weights so nothing stays
in the L2 from the layer before,
    A1 (67 MB, GEMM1's bytes at OLMoE bs 1) -> A2 (33.5 MB, GEMM2's) -> B (25 MB, q/k/v) -> C (8.4 MB, o),
each a `dense_gemv` at T = 1. Variants add `kernels/l2_prefetch.py` launches on a side stream that waits for the
main stream at one point (e.g. "B@A2": B's weights, issued as A2 starts) and is joined at the end. Reported:
µs per layer (median of rounds, each the mean of `reps` replays), and the L2-hot time of B and C alone (each GEMV
run twice in a row; the second run's time) beside their cold time. Needs an sm90+ GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from minimoe.kernels.dense_gemv import dense_gemv
from minimoe.kernels.l2_prefetch import chunk_table, l2_prefetch

D = 2048
SHAPES = {"A1": 16384, "A2": 8192, "B": 6144, "C": 2048}      # rows of a [N, D] bf16 weight


def build(layers: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = [{k: torch.randn(n, D, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02 for k, n in SHAPES.items()}
         for _ in range(layers)]
    x = torch.randn(1, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return w, x


def chain(w, x, plan: dict, tables: dict, side: torch.cuda.Stream, evict_last: bool, order=("A1", "A2", "B", "C")):
    """plan: {at: target} — at the start of kernel `at` of each layer, prefetch that layer's `target` weights."""
    main = torch.cuda.current_stream()
    issued = False
    for i, lw in enumerate(w):
        for k in order:
            if k in plan:
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    l2_prefetch(*tables[(i, plan[k])], evict_last=evict_last)
                issued = True
            dense_gemv(x, lw[k], pdl=True)
    if issued:
        main.wait_stream(side)


def time_graph(fn, reps: int) -> tuple[torch.cuda.CUDAGraph, callable]:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def run() -> float:
        graph.replay()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) * 1e3 / reps
    return graph, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        print("l2_probe: needs an sm90+ CUDA GPU (cp.async.bulk.prefetch.L2)", file=sys.stderr)
        return 2
    w, x = build(a.layers)
    side = torch.cuda.Stream()
    variants = {"base": ({}, 16384, False),
                "B@A2": ({"A2": "B"}, 16384, False), "B@A2 4K": ({"A2": "B"}, 4096, False),
                "B@A2 64K": ({"A2": "B"}, 65536, False), "B@A2 last": ({"A2": "B"}, 16384, True),
                "B@A1": ({"A1": "B"}, 16384, False), "B@A1 last": ({"A1": "B"}, 16384, True),
                "C@B": ({"B": "C"}, 16384, False), "C@A2": ({"A2": "C"}, 16384, False),
                "B@A2+C@B": ({"A2": "B", "B": "C"}, 16384, False)}
    tables = {}
    for chunk in {c for _, c, _ in variants.values()}:
        for i, lw in enumerate(w):
            for k in SHAPES:
                tables[(chunk, i, k)] = chunk_table([lw[k]], chunk, "cuda")
    runs = {}
    for name, (plan, chunk, last) in variants.items():
        tab = {(i, k): tables[(chunk, i, k)] for i in range(a.layers) for k in SHAPES}
        runs[name] = time_graph(lambda plan=plan, tab=tab, last=last: chain(w, x, plan, tab, side, last), a.reps)[1]
    for k in ("B", "C"):    # each GEMV alone, cold and run twice (the second read L2-hot)
        runs[f"{k} cold"] = time_graph(lambda k=k: chain(w, x, {}, {}, side, False, order=(k,)), a.reps)[1]
        runs[f"{k} twice"] = time_graph(lambda k=k: chain(w, x, {}, {}, side, False, order=(k, k)), a.reps)[1]
    times = {n: [] for n in runs}
    for _ in range(a.rounds):
        for n, run in runs.items():
            times[n].append(run() / a.layers)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"# {torch.cuda.get_device_name()} L2 {torch.cuda.get_device_properties(0).L2_cache_size / 2**20:.0f} MiB; "
          f"{a.layers} layers x {a.rounds} rounds x {a.reps} replays; µs per layer (median)")
    print(f"{'variant':14s} {'us/layer':>9s} {'vs base':>8s}")
    for n in variants:
        print(f"{n:14s} {med[n]:9.2f} {100 * (med[n] / med['base'] - 1):+7.2f}%")
    for k in ("B", "C"):
        cold, twice = med[f"{k} cold"], med[f"{k} twice"]
        mb = SHAPES[k] * D * 2 / 1e6
        print(f"{k} ({mb:.1f} MB) alone: cold {cold:.2f} µs ({mb * 1e3 / cold:.0f} GB/s), "
              f"L2-hot {twice - cold:.2f} µs ({mb * 1e3 / (twice - cold):.0f} GB/s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"median_us_per_layer": med, "rounds": times}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
