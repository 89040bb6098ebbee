"""Does asking the L2 for the o projection's weight ahead of decode attention shorten the graphed step?

    python scripts/l2_prefetch_probe.py [--models olmoe mixtral] [--batches 1] [--steps 40] [--rounds 3] [--json OUT]

For each model and batch: one model (random weights, real shapes), variants interleaved round by round, each a
fresh decode graph: `off` and `on` (--l2-prefetch; issued by the q/k/v stream GEMV's programs as they finish,
kernels/l2_prefetch.py; the twelfth session's first call tried the split attention as the issuer, `git show
7476bb1`, slower everywhere). Times `steps` graphed steps per
round with CUDA events (median of rounds, µs per step) and checks that every variant generates the same greedy
tokens as `off` (a prefetch is a hint: the bits must not change). The o weight's bytes and their time at the
measured stream ceiling are printed beside it, so the saving can be set against what was prefetched.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings

VARIANTS = {"off": "off", "on": "on"}


def _o_bytes(model) -> int:
    """The o projections' weight bytes a step reads (what the prefetch asks for), summed over layers."""
    total = 0
    for name, mod in model.named_modules():
        if name.endswith(".wo") and isinstance(getattr(mod, "weight", None), torch.Tensor):
            total += mod.weight.nbytes
    return total


def probe(model_name: str, batches: list[int], a) -> list[dict]:
    s = RunSettings(experts="fused", device="cuda").resolve()
    model, cfg, _ = build_model(model_name, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    o_bytes = _o_bytes(model)
    rows = []
    for B in batches:
        prompt = torch.randint(0, cfg.vocab_size, (B, a.input_len), device="cuda")
        times = {v: [] for v in a.variants}
        tokens = {}
        try:
            for _ in range(a.rounds):
                for v in a.variants:
                    s.l2_prefetch = VARIANTS[v]
                    gen = Generator(model, B, a.input_len + a.steps + 16)
                    enable_graphs(gen, prefill_lengths=[a.input_len])
                    tok = gen.prefill(prompt)
                    seq = [tok]
                    for _ in range(6):
                        tok = gen.decode(tok)
                        seq.append(tok)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(a.steps):
                        tok = gen.decode(tok)
                        seq.append(tok)
                    end.record()
                    torch.cuda.synchronize()
                    times[v].append(start.elapsed_time(end) * 1e3 / a.steps)
                    tokens.setdefault(v, torch.stack(seq).cpu())
                    del gen
        finally:
            s.l2_prefetch = "off"
        base = statistics.median(times["off"])
        for v, t in times.items():
            same = bool(torch.equal(tokens[v], tokens["off"]))
            rows.append({"model": model_name, "batch": B, "variant": v, "us_per_step": statistics.median(t),
                         "vs_off_pct": 100 * (statistics.median(t) / base - 1), "rounds": t,
                         "same_tokens": same, "o_bytes_per_step": o_bytes})
    del model
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["olmoe", "mixtral"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--json")
    a = p.parse_args(argv)
    if "off" not in a.variants:
        a.variants = ["off"] + a.variants
    rows = []
    for m in a.models:
        rows += probe(m, a.batches, a)
    print(f"# graphed decode step, {a.input_len} in, {a.rounds} rounds x {a.steps} steps, variants interleaved")
    print(f"{'model':18s} {'bs':>3s} {'variant':8s} {'us/step':>9s} {'vs off':>8s} {'o MB/step':>10s} same  rounds")
    for r in rows:
        print(f"{r['model']:18s} {r['batch']:3d} {r['variant']:8s} {r['us_per_step']:9.1f} {r['vs_off_pct']:+7.2f}% "
              f"{r['o_bytes_per_step'] / 1e6:10.1f} {'yes' if r['same_tokens'] else 'NO':4s} "
              + " ".join(f"{x:.1f}" for x in r["rounds"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
