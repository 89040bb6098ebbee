"""Greedy sampling's tail on the GPU: PyTorch (non-finite count + chunked argmax, ~12 kernels) against
kernels/greedy.py (two kernels), each captured in a CUDA graph as the decode step runs it.

    python scripts/bench_greedy.py [--vocab 32000 50304 102400 151936] [--bs 1 16 64] [--json out.json]

Every case first checks the kernel's tokens and count against the PyTorch path (and torch.argmax) on
fresh logits with a NaN row and an inf row planted; then `--iters` calls of each path are captured
back to back in one CUDA graph, replayed `--reps` times between CUDA events, and the median per call
is printed (minimoe.bench.roofline.graph_us). The floor beside
each row is the time to read the fp32 logits once at `--bandwidth` GB/s.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from minimoe.bench.roofline import graph_us
from minimoe.kernels.greedy import greedy_tail
from minimoe.ops import greedy_torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 50304, 102400, 151936])
    p.add_argument("--bs", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--bandwidth", type=float, default=4200.0, help="GB/s for the floor column")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_greedy.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    rows, wrong = [], 0
    print(f"{'V':>7s} {'B':>4s} {'torch us':>9s} {'kernel us':>10s} {'speedup':>8s} {'floor us':>9s} check")
    for V in a.vocab:
        for B in a.bs:
            logits = torch.randn(B, V, device=dev)
            if B >= 3:
                logits[1, V // 3] = float("nan")
                logits[2, V - 1] = float("inf")
            c1 = torch.zeros((), dtype=torch.int64, device=dev)
            c2 = torch.zeros((), dtype=torch.int64, device=dev)
            ok = (torch.equal(greedy_tail(logits, c1), greedy_torch(logits, c2))
                  and torch.equal(greedy_tail(logits, c1), logits.argmax(-1)) and int(c1) == 2 * int(c2))
            wrong += not ok
            t_torch = graph_us([lambda: greedy_torch(logits, c2)] * a.iters, a.reps)
            t_kern = graph_us([lambda: greedy_tail(logits, c1)] * a.iters, a.reps)
            floor = B * V * 4 / (a.bandwidth * 1e3)
            rows.append({"V": V, "B": B, "torch_us": t_torch, "kernel_us": t_kern, "floor_us": floor, "ok": ok})
            print(f"{V:7d} {B:4d} {t_torch:9.2f} {t_kern:10.2f} {t_torch / t_kern:7.2f}x {floor:9.2f} "
                  f"{'PASS' if ok else 'FAIL'}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print(f"{wrong} wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
