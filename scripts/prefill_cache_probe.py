"""Does the graphed prefill leave a different KV cache from the eager one, and is that what slows the decode step?

    python scripts/prefill_cache_probe.py --model olmoe [--json OUT]

The thirty-seventh session's calls 2-3 (scripts/prefill_state_probe.py) found the bs-1 step slow exactly when the
last prefill into its cache was the graphed one (an eager prefill after it heals the step, one before it does not;
a rested GPU, a side stream, another graph's replay change nothing). Here one Generator holds both prefills and:

1. compares, tensor by tensor, the cache (K, V or the MLA latent; lengths; the arrival counters; the router fold's
   accumulators) and the first tokens after an eager and after a graphed prefill of one prompt: elements that differ,
   the largest difference, and which positions differ;
2. times the graphed decode step (3 blocks of `--steps` steps, CUDA events) after: an eager prefill; a graphed one;
   a graphed one whose K / V (or latent) is then overwritten with the eager prefill's; an eager one overwritten with
   the graphed prefill's; the same swaps of only the positions the prompt filled, and of only those past it.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def snapshot(gen) -> dict[str, torch.Tensor]:
    c = gen.cache
    names = ["latent"] if c.mla else ["k", "v"]
    return {n: getattr(c, n).clone() for n in names + ["lengths", "counters", "route_acc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("prefill_cache_probe: needs a CUDA GPU")
    s = RunSettings(experts="fused", device="cuda", pdl="on").resolve()
    model, cfg, _ = build_model(a.model, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    S = a.input_len
    prompt = torch.randint(0, cfg.vocab_size, (1, S), generator=torch.Generator().manual_seed(0))
    gen = Generator(model, 1, S + a.steps + 64)
    enable_graphs(gen, prefill_lengths=[S])
    graphs = gen.prefill_graphs

    def prefill(graphed: bool):
        gen.reset()
        gen.prefill_graphs = graphs if graphed else {}
        tok = gen.prefill(prompt)
        gen.prefill_graphs = graphs
        return tok

    def tokens_after(graphed: bool) -> torch.Tensor:
        tok = prefill(graphed)
        seq = [tok.clone()]
        for _ in range(a.steps):
            tok = gen.decode(tok, own=True)
            seq.append(tok)
        return torch.stack(seq).cpu()

    # 1. the caches and the tokens
    prefill(False)
    eager = snapshot(gen)
    prefill(True)
    graph = snapshot(gen)
    diff = {}
    for n in eager:
        x, y = eager[n], graph[n]
        ne = (x != y) if not x.is_floating_point() else ~((x == y) | (x.isnan() & y.isnan()))
        row = {"numel": x.numel(), "differ": int(ne.sum())}
        if x.is_floating_point() and row["differ"]:
            row["max_abs"] = float((x.float() - y.float()).abs().max())
        if n in ("k", "v", "latent") and row["differ"]:
            pos = ne.flatten(3).any(-1) if n != "latent" else ne.any(-1)      # [L, B, P]
            ps = pos.any(0).any(0).nonzero().flatten()
            row["positions"] = [int(ps.min()), int(ps.max()), int(ps.numel())]
            row["layers"] = int(pos.any(-1).any(-1).sum())
        diff[n] = row
        print(f"cache {n:9s} {row}", flush=True)
    te, tg = tokens_after(False), tokens_after(True)
    same = bool(torch.equal(te, tg))
    print(f"tokens after eager / graphed prefill equal over {a.steps + 1}: {same} "
          f"(distinct {int(te.unique().numel())} / {int(tg.unique().numel())})", flush=True)

    # 2. timing after each prefill, with the K / V swapped
    kv = ["latent"] if gen.cache.mla else ["k", "v"]
    P = gen.cache.max_len

    def swap(src: dict, part: str):
        for n in kv:
            dst = getattr(gen.cache, n)
            if part == "all":
                dst.copy_(src[n])
            elif part == "prompt":
                dst[:, :, :S].copy_(src[n][:, :, :S])
            else:
                dst[:, :, S:P].copy_(src[n][:, :, S:P])

    variants = {"eager": (False, None, None), "graphed": (True, None, None),
                "graphed+eager-kv": (True, eager, "all"), "eager+graphed-kv": (False, graph, "all"),
                "graphed+eager-kv-prompt": (True, eager, "prompt"), "graphed+eager-kv-past": (True, eager, "past"),
                "eager+graphed-kv-past": (False, graph, "past")}
    names = list(variants)
    order = [v for k in range(a.repeat) for v in (names if k % 2 == 0 else names[::-1])]
    rows = []
    for v in order:
        graphed, src, part = variants[v]
        blocks = []
        for _ in range(3):
            tok = prefill(graphed)
            if src is not None:
                swap(src, part)
            for _ in range(4):
                tok = gen.decode(tok, own=False)
            torch.cuda.synchronize()
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(a.steps):
                tok = gen.decode(tok, own=False)
            t1.record()
            t1.synchronize()
            blocks.append(t0.elapsed_time(t1) * 1e3 / a.steps)
        rows.append({"variant": v, "us_per_step": statistics.median(blocks), "blocks": blocks})
        print(f"{v:24s} {statistics.median(blocks):8.1f} us/step ({', '.join(f'{b:.1f}' for b in blocks)})", flush=True)
    base = statistics.median([r["us_per_step"] for r in rows if r["variant"] == "eager"])
    print(f"# {a.model} bs 1, median per variant:")
    for v in names:
        t = statistics.median([r["us_per_step"] for r in rows if r["variant"] == v])
        print(f"#   {v:24s} {t:8.1f} ({100 * (t / base - 1):+.2f}% vs eager)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "cache_diff": diff, "tokens_equal": same, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
