"""MLA's absorbed projections at batch 1, inside the graphed decode step: torch.bmm (cuBLAS) against
kernels/head_gemv.py with several tiles, one model, variants interleaved, CUDA events, medians.

    python scripts/mla_absorb_probe.py [--model deepseek-v2-lite] [--steps 40] [--rounds 3]

Each variant swaps the ops table's `head_gemv` (and the kernel's `tiles` rule), captures a fresh decode
graph and times `steps` graphed steps per round; the table gives the median µs per step and the change
against bmm. (A sweep of the kernel alone would miss what the third session and the eighth taught: a tile
that wins alone can lose in the step.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

import torch

from minimoe import ops
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.kernels import head_gemv as hg
from minimoe.loader import build_model
from minimoe.settings import RunSettings

REAL_TILES = hg.tiles


def _tiles(n_contig: tuple[int, int] | None = None, k_contig: tuple[int, int] | None = None):
    def rule(N, K, k_contiguous):
        pick = k_contig if k_contiguous else n_contig
        return pick if pick is not None else REAL_TILES(N, K, k_contiguous)
    return rule


def _mixed(x, w, out, *, pdl: bool = False):
    """bmm for the q absorption (W's n axis contiguous), the kernel for the v un-absorption."""
    if w.stride(2) == 1:
        return hg.head_gemv(x, w, out, pdl=pdl)
    return ops.head_gemv_torch(x, w, out)


VARIANTS = {   # name: (head_gemv op, tiles rule)
    "bmm": (ops.head_gemv_torch, REAL_TILES),
    "kernel": (hg.head_gemv, REAL_TILES),
    "kernel n128x32": (hg.head_gemv, _tiles(n_contig=(128, 32))),
    "kernel n64x64": (hg.head_gemv, _tiles(n_contig=(64, 64))),
    "kernel k16x256": (hg.head_gemv, _tiles(k_contig=(16, 256))),
    "bmm q + kernel v": (_mixed, REAL_TILES),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="deepseek-v2-lite")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--json")
    a = p.parse_args(argv)
    s = RunSettings(experts="fused", device="cuda").resolve()
    model, cfg, _ = build_model(a.model, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    prompt = torch.randint(0, cfg.vocab_size, (1, a.input_len), device="cuda")
    triton_ops = ops.OPS["triton"]
    times = {v: [] for v in a.variants}
    try:
        for _ in range(a.rounds):
            for v in a.variants:
                op, rule = VARIANTS[v]
                ops.OPS["triton"] = dataclasses.replace(triton_ops, head_gemv=op)
                ops._bound.cache_clear()
                hg.tiles = rule
                gen = Generator(model, 1, a.input_len + a.steps + 16)
                enable_graphs(gen, prefill_lengths=[a.input_len])
                tok = gen.prefill(prompt)
                for _ in range(8):
                    tok = gen.decode(tok)
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(a.steps):
                    tok = gen.decode(tok)
                end.record()
                torch.cuda.synchronize()
                times[v].append(start.elapsed_time(end) * 1e3 / a.steps)
                del gen
    finally:
        ops.OPS["triton"] = triton_ops
        ops._bound.cache_clear()
        hg.tiles = REAL_TILES
    base = statistics.median(times["bmm"]) if "bmm" in times else None
    print(f"# {a.model} bs 1, graphed decode step, {a.rounds} rounds x {a.steps} steps, {s.describe()}")
    print(f"{'variant':20s} {'us/step':>9s} {'vs bmm':>8s}  rounds")
    rows = []
    for v, t in times.items():
        med = statistics.median(t)
        rel = f"{100 * (med / base - 1):+.1f}%" if base else "-"
        print(f"{v:20s} {med:9.1f} {rel:>8s}  " + " ".join(f"{x:.1f}" for x in t))
        rows.append({"variant": v, "us_per_step": med, "rounds": t})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
