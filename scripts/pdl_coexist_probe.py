"""Does a second CUDA graph alive beside a PDL chain's graph slow its replays? (No model: tiny kernels only.)

    python scripts/pdl_coexist_probe.py [--kernels 400] [--replays 30] [--json OUT]

The thirty-sixth session found minimoe's bs-1 decode graph 1.1-1.8% slower whenever its Generator also held a prefill
graph, with the same kernels, clocks and buffers (docs/results.md). If that is a property of CUDA graphs with
programmatic dependent launch, a chain of tiny dependent kernels (scripts/pdl_probe.py's `_add_one`, alternating 1 and
132 programs as a decode step alternates small and wide kernels) shows it too. For PDL off and on, the chain's graph A
is timed (median µs a replay over `--replays`, CUDA events): alone; with a second graph B (the same chain on another
buffer) captured and held; after B is dropped; and a fresh A' captured while B is alive. The sum of the buffer is
checked after every timing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pdl_probe import _add_one  # noqa: E402


def chain(x: torch.Tensor, n: int, pdl: bool) -> None:
    """n dependent launches on x, alternating one program and 132 (the H200's SM count)."""
    for i in range(n):
        programs = 1 if i % 2 == 0 else 132
        block = max(16, 1 << (x.numel() // programs - 1).bit_length())
        _add_one[(-(-x.numel() // block),)](x, x.numel(), BLOCK=block, PDL=pdl, launch_pdl=pdl)


def capture(x: torch.Tensor, n: int, pdl: bool) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain(x, n, pdl)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain(x, n, pdl)
    torch.cuda.synchronize()
    return g


def time_us(g: torch.cuda.CUDAGraph, x: torch.Tensor, n: int, replays: int) -> float:
    x.zero_()
    g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    if int(x[0].item()) != n * (replays + 1):
        raise SystemExit(f"pdl_coexist_probe: wrong sum {int(x[0].item())}, expected {n * (replays + 1)}")
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", type=int, default=400)
    p.add_argument("--replays", type=int, default=30)
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("pdl_coexist_probe: needs a CUDA GPU")
    rows = []
    for pdl in (False, True):
        x = torch.zeros(132 * 32, device="cuda")               # 1 program: 8,192-wide tile; 132: 32 each
        y = torch.zeros_like(x)
        ga = capture(x, a.kernels, pdl)
        alone = time_us(ga, x, a.kernels, a.replays)
        gb = capture(y, a.kernels, pdl)
        beside = time_us(ga, x, a.kernels, a.replays)
        ga2 = capture(x, a.kernels, pdl)                    # captured while B is alive
        fresh_beside = time_us(ga2, x, a.kernels, a.replays)
        del gb, ga2
        torch.cuda.synchronize()
        dropped = time_us(ga, x, a.kernels, a.replays)
        row = {"pdl": pdl, "alone_us": alone, "beside_us": beside, "fresh_beside_us": fresh_beside,
               "after_drop_us": dropped}
        rows.append(row)
        print(f"PDL {'on ' if pdl else 'off'}: A alone {alone:8.1f} µs, B held {beside:8.1f} ({100 * (beside / alone - 1):+.2f}%), "
              f"A' captured beside B {fresh_beside:8.1f} ({100 * (fresh_beside / alone - 1):+.2f}%), "
              f"B dropped {dropped:8.1f} ({100 * (dropped / alone - 1):+.2f}%)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
