"""Can a dense decode GEMV hide its start-up behind the small kernel before it? (PDL + an L2 prefetch)

    python scripts/pdl_prefetch_probe.py [--json OUT]

At batch 1 every weight-streaming kernel pays ~2.5-3 µs beyond its bytes (docs/perf_notes.md, eighth
session): the launch, the first loads' latency, the ramp to full bandwidth. A dense layer's weights do
not depend on the kernel before it, so with Programmatic Dependent Launch the GEMV can be launched while
its predecessor (here the RMSNorm that makes its input, ~2 µs at batch 1) still runs, ask the L2 for the
first bytes of each of its weight rows (`cp.async.bulk.prefetch.L2`), and only then wait. The earlier PDL
experiment (PDL on every kernel, no prefetch) was slower: early programs parked on SMs that a many-wave
kernel still needed; here the predecessor is one program.

One CUDA graph holds REPS pairs [rms_norm -> dense_gemv] with distinct weights (no L2 reuse between pairs);
µs per pair (median of replays) for: no PDL; PDL without prefetch; PDL with the first B bytes of every row
prefetched. Every variant's output is checked against x_norm @ Wᵀ in fp32 first.
(docs/results/2026-12-01-s9/call4 came from this script at faa5028, whose own replay loop this commit replaced
with roofline.graph_us: the same capture, warm-up and median.)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from minimoe.bench.roofline import graph_us
from minimoe.kernels.dense_gemv import dense_gemv
from minimoe.kernels.rmsnorm import rms_norm

SHAPES = {  # label: (N, K) of x [1, K] @ W[N, K]ᵀ
    "mixtral qkv": (6144, 4096), "mixtral o": (4096, 4096),
    "olmoe qkv": (6144, 2048), "olmoe o": (2048, 2048),
    "qwen3 qkv": (5120, 2048), "qwen3 o": (2048, 4096),
}
REPS = 24


def chain(x, norm_w, weights, pdl: bool, prefetch: int) -> torch.Tensor:
    out = None
    for w in weights:
        h, _ = rms_norm(x, norm_w, 1e-6, pdl=pdl)
        out = dense_gemv(h, w, pdl=pdl, prefetch_bytes=prefetch if pdl else 0)
    return out


def time_variant(x, norm_w, weights, pdl, prefetch) -> tuple[float, torch.Tensor]:
    """(µs per pair: the whole chain in one CUDA graph, median of replays, roofline.graph_us; the chain's output
    from an eager run, which launches the same kernels with the same PDL attributes)."""
    out = chain(x, norm_w, weights, pdl, prefetch).clone()
    return graph_us([lambda: chain(x, norm_w, weights, pdl, prefetch)], replays=22) / len(weights), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--prefetch", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    a = p.parse_args(argv)
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9):
        print("error: this needs an sm90+ GPU (PDL, cp.async.bulk.prefetch)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows, bad = [], 0
    print(f"# {torch.cuda.get_device_name()} | {REPS} x [rms_norm -> dense_gemv] per graph, µs per pair")
    print(f"{'shape':12s} {'MB':>6s} {'no PDL':>8s} {'PDL':>8s} "
          + " ".join(f"{'pf ' + str(b):>8s}" for b in a.prefetch))
    for label, (N, K) in SHAPES.items():
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16, generator=gen)
        norm_w = torch.rand(K, device=dev, dtype=torch.bfloat16, generator=gen) + 0.5
        weights = [torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(REPS)]
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * norm_w.float()
        ref = h.to(torch.bfloat16).float() @ weights[-1].float().T
        row = {"shape": label, "N": N, "K": K, "MB": N * K * 2 / 1e6}
        for name, pdl, pf in [("off", False, 0), ("pdl", True, 0)] + [(f"pf{b}", True, b) for b in a.prefetch]:
            us, out = time_variant(x, norm_w, weights, pdl, pf)
            err = float((out.float() - ref).abs().max() / ref.abs().max())
            bad += err > 2e-2
            row[name] = us
            row[name + "_err"] = err
        rows.append(row)
        print(f"{label:12s} {row['MB']:6.1f} {row['off']:8.2f} {row['pdl']:8.2f} "
              + " ".join(f"{row['pf' + str(b)]:8.2f}" for b in a.prefetch)
              + ("" if max(v for k, v in row.items() if k.endswith("_err")) < 2e-2 else "  ERR"), flush=True)
        del weights
    print(f"# {bad} outputs off the fp32 reference")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
