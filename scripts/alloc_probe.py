"""Does the graphed decode step's time depend on where the generator's buffers land? Rounds of one model and batch.

    python scripts/alloc_probe.py --model qwen3 --batch 1 [--rounds 12] [--steps 60] [--json OUT]

The thirty-sixth session saw Qwen3-30B-A3B's bs-1 step in two states, ~2,443 and ~2,477 µs, from one round to the next
of scripts/graph_boundary_probe.py (each round builds a new Generator: KV cache, counters, a captured graph and its
memory pool). Here every round first holds a pad of a different size on the GPU (0 to 63 MB, seeded order), then builds
a Generator, captures its graph, prefills and times `--steps` steps of `decode(own=False)` three times from a fresh prefill (CUDA events, µs a step; the
median of the three is the round's),
and records the addresses of the generator's buffers (the KV cache, lengths, counters, the graph's token buffer) and
the allocator's totals, so a step time can be matched to a placement. Prints one row a round and a summary; the JSON
holds the rows.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics

import torch

from minimoe.generate import Generator
from minimoe.graphs import DecodeGraph, PrefillGraph, enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--prefill-graph", choices=["none", "all", "alternate", "captured-unused", "prefill-first"], default="none",
                   help="capture the prefill graph too (enable_graphs' prefill_lengths): in no round, every round, "
                        "or odd rounds; captured-unused: odd rounds capture it and then prefill eagerly all the same; "
                        "prefill-first: odd rounds capture it before the decode graph")
    p.add_argument("--small-pad", action="store_true",
                   help="pads of 0-15 x 512 bytes instead (the caching allocator's small pool, where the generator's "
                        "lengths, counters and token buffers live; MB pads land in the large pool)")
    p.add_argument("--record-tokens", action="store_true",
                   help="clone each step's tokens inside the timed loop (calls 5-7 did; call 3 did not)")
    p.add_argument("--pdl", choices=["auto", "on", "off"], default="auto", help="RunSettings.pdl (default auto)")
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("alloc_probe: needs a CUDA GPU")
    s = RunSettings(experts="fused", device="cuda", pdl=a.pdl).resolve()
    model, cfg, _ = build_model(a.model, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    prompt = torch.randint(0, cfg.vocab_size, (a.batch, a.input_len), generator=torch.Generator().manual_seed(0))
    pads = list(range(16))[:a.rounds] if a.small_pad else list(range(0, 64, 64 // a.rounds or 1))[:a.rounds]
    random.Random(0).shuffle(pads)
    rows = []
    for r, pad_mb in enumerate(pads):
        size = pad_mb * 512 if a.small_pad else pad_mb << 20
        pad = torch.empty(size, dtype=torch.uint8, device="cuda") if pad_mb else None
        gen = Generator(model, a.batch, a.input_len + a.steps + 64)   # the same max_len every round
        with_prefill = a.prefill_graph == "all" or (a.prefill_graph != "none" and r % 2 == 1)
        if a.prefill_graph == "prefill-first" and with_prefill:
            gen.reset()
            gen.prefill_graphs[a.input_len] = PrefillGraph(gen, a.input_len)
            gen.graphs = DecodeGraph(gen)
        else:
            enable_graphs(gen, prefill_lengths=[a.input_len] if with_prefill else [])
        if a.prefill_graph == "captured-unused":
            gen.prefill_graphs = {}
        tok = gen.prefill(prompt)
        for _ in range(4):
            tok = gen.decode(tok, own=False)
        blocks, seqs = [], []                # three blocks of steps: a placement effect repeats, a drift does not
        for _ in range(3):
            gen.reset()
            tok = gen.prefill(prompt)
            torch.cuda.synchronize()
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            seq = []
            for _ in range(a.steps):
                tok = gen.decode(tok, own=False)
                if a.record_tokens:
                    seq.append(tok.clone())
            t1.record()
            t1.synchronize()
            blocks.append(t0.elapsed_time(t1) * 1e3 / a.steps)
            seqs.append(torch.stack(seq).cpu() if seq else tok[None].cpu())
        us = statistics.median(blocks)
        c = gen.cache
        ptrs = {"k": c.k.data_ptr() if hasattr(c, "k") else c.latent.data_ptr(),
                "lengths": c.lengths.data_ptr(), "counters": c.counters.data_ptr(),
                "route_acc": c.route_acc.data_ptr(), "tokens": gen.graphs.tokens.data_ptr(),
                "cos_sin": model.cos_sin.data_ptr() if hasattr(model, "cos_sin") else 0}
        tokens = seqs[0]
        row = {"tokens_first": tokens[:8, 0].tolist(), "distinct_tokens": int(tokens.unique().numel()),
               "blocks_same_tokens": all(torch.equal(tokens, x) for x in seqs), "round": r, "prefill_graph": with_prefill, "pad_mb": pad_mb, "us_per_step": us, "blocks": blocks, "allocated_mb": torch.cuda.memory_allocated() >> 20,
               "reserved_mb": torch.cuda.memory_reserved() >> 20, "ptrs": ptrs}
        rows.append(row)
        print(f"round {r:2d} {'P' if with_prefill else '-'} pad {pad_mb:2d} MB  {us:8.1f} us/step ({', '.join(f'{b:.1f}' for b in blocks)})  "
              f"tokens {row['tokens_first']} distinct {row['distinct_tokens']}  alloc {row['allocated_mb']} MB  "
              + "  ".join(f"{k} {v % (1 << 30) >> 20:4d}M+{v % (1 << 20):7d}" for k, v in ptrs.items()), flush=True)
        del gen, pad, tok
    t = [r["us_per_step"] for r in rows]
    print(f"# {a.model} bs {a.batch}: median {statistics.median(t):.1f}, min {min(t):.1f}, max {max(t):.1f} us/step")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
