"""generate()'s own loop against the timed loop bench.py runs: what a user pays per token beyond the decode step.

    python scripts/generate_loop_probe.py --models olmoe qwen3 --batches 1 64 [--new 128] [--rounds 3] [--json F]

For each model and batch one model is built (random weights, real shapes, the default run settings: fused experts,
graphed prefill and decode), then, round by round, interleaved, one Generator each:
    bench      prefill + decode(own=False) fed back: bench.py's loop, no token kept (the floor of the others)
    gen        Generator.generate(prompts, N): the tokens kept in a device buffer, no host sync
    gen-stop   the same with a stop id that the free run never emits: a check every STOP_CHECK_EVERY steps
    old        the loop generate() ran before the thirty-eighth session: decode(own=True) (a copy in, a clone out
               around every replay), tokens stacked at the end
    old-stop   that loop with the same stop id: torch.where / isin on every step and a host sync every step
    gen-mark   gen's loop with kernels/pdl.py's empty PDL kernel after each step's token copy
    gen-tcopy  gen's loop with the token copy as a one-program Triton kernel launched with PDL
    gen-graph  a decode graph of its own that records the tokens itself (a device column, one more PDL kernel in
               the graph): nothing launched from the host between replays
Times are CUDA events around the whole call (prefill included), medians of rounds; ms a call and µs a new token.
Every variant must give the bench loop's tokens (exit 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from minimoe.generate import Generator, stop_tensor
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def _bench(gen, prompts, n, stop):
    tok = gen.prefill(prompts)
    out = [tok.clone()]
    for _ in range(n - 1):
        tok = gen.decode(tok, own=False)
    out.append(tok)       # only the last is kept (bench.py keeps none); checked against the others' last column
    return out


def _old(gen, prompts, n, stop_ids):
    """generate() as it was (at 4bcea1f), kept here as the baseline."""
    stop = stop_tensor(stop_ids, n, gen.device)
    gen.reset()
    tok = gen.prefill(prompts)
    out = [tok]
    done = torch.isin(tok, stop) if stop.numel() else None
    pad = int(stop[0]) if stop.numel() else 0
    for _ in range(n - 1):
        if done is not None and bool(done.all()):
            break
        tok = gen.decode(tok)
        if done is not None:
            tok = torch.where(done, pad, tok)
            done = done | torch.isin(tok, stop)
        out.append(tok)
    return torch.stack(out, dim=1)


try:
    import triton
    import triton.language as tl

    from minimoe.kernels.pdl import launch_args, wait_then_release

    @triton.jit
    def _record_kernel(src_ptr, dst_ptr, B, stride_b, col, BLOCK: tl.constexpr, PDL: tl.constexpr):
        wait_then_release(PDL)
        r = tl.arange(0, BLOCK)
        tl.store(dst_ptr + r * stride_b + col, tl.load(src_ptr + r, mask=r < B), mask=r < B)
    @triton.jit
    def _record_at_kernel(src_ptr, dst_ptr, B, stride_b, col_ptr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        """dst[:, col] = src, col += 1: col read and bumped on the device (a graph replays it as is)."""
        wait_then_release(PDL)
        r = tl.arange(0, BLOCK)
        col = tl.load(col_ptr)
        tl.store(dst_ptr + r * stride_b + col, tl.load(src_ptr + r, mask=r < B), mask=r < B)
        tl.debug_barrier()
        tl.store(col_ptr, col + 1)
except ImportError:
    triton = None


def _gen_in_graph(gen, prompts, n):
    """A decode graph of its own that also records the step's tokens into a [B, n] buffer at a device column
    (one more PDL kernel inside the graph): the host launches nothing between replays."""
    from minimoe.graphs import _capture
    B = gen.batch
    if getattr(gen, "_rec", None) is None:
        tokens = torch.zeros(B, dtype=torch.long, device=gen.device)
        hist = torch.zeros(B, n, dtype=torch.long, device=gen.device)
        col = torch.zeros(1, dtype=torch.long, device=gen.device)
        saved = gen.cache.lengths.clone()

        def step():
            gen.eager_step(tokens, None, out=tokens)
            _record_at_kernel[(1,)](tokens, hist, B, hist.stride(0), col, BLOCK=triton.next_power_of_2(B),
                                    num_warps=1, **launch_args(True))

        def restore():
            gen.cache.lengths.copy_(saved)
            col.zero_()
        graph, _ = _capture(step, restore, 2)
        gen._rec = (graph, tokens, hist, col)
    graph, tokens, hist, col = gen._rec
    gen.reset()
    tok = gen.prefill(prompts)
    hist[:, 0] = tok
    tokens.copy_(tok)
    col.fill_(1)
    for _ in range(1, n):
        gen._room(1)
        graph.replay()
        gen.host_len += 1
    return hist.clone()


def _gen_recording(gen, prompts, n, record):
    """generate()'s new loop (no stop ids) with the per-step record done by `record`: "mark" = the torch copy then
    kernels/pdl.py's empty PDL kernel; "triton" = the copy as a Triton kernel launched with PDL."""
    from minimoe.kernels.pdl import pdl_mark
    gen.reset()
    tok = gen.prefill(prompts)
    new = torch.empty(tok.shape[0], n, dtype=tok.dtype, device=tok.device)
    new[:, 0] = tok
    B = tok.shape[0]
    for i in range(1, n):
        tok = gen.decode(tok, own=False)
        if record == "mark":
            new[:, i] = tok
            pdl_mark()
        else:
            _record_kernel[(1,)](tok, new, B, new.stride(0), i, BLOCK=triton.next_power_of_2(B), num_warps=1,
                                 **launch_args(True))
    return new


def probe(name, batches, a):
    s = RunSettings(experts="fused", device="cuda").resolve()
    model, cfg, _ = build_model(name, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    rows = []
    for B in batches:
        prompts = torch.randint(0, cfg.vocab_size, (B, a.input_len), device="cuda")
        gen = Generator(model, B, a.input_len + a.new + 1)
        enable_graphs(gen, prefill_lengths=[a.input_len])
        free = gen.generate(prompts, a.new)
        unused = next(t for t in range(cfg.vocab_size - 1, -1, -1) if not bool((free == t).any()))
        variants = {
            "bench": lambda g: _bench(g, prompts, a.new, ()),
            "gen": lambda g: g.generate(prompts, a.new),
            "gen-stop": lambda g: g.generate(prompts, a.new, stop_ids={unused}),
            "old": lambda g: _old(g, prompts, a.new, ()),
            "old-stop": lambda g: _old(g, prompts, a.new, {unused}),
            "gen-mark": lambda g: _gen_recording(g, prompts, a.new, "mark"),
            "gen-tcopy": lambda g: _gen_recording(g, prompts, a.new, "triton"),
            "gen-graph": lambda g: _gen_in_graph(g, prompts, a.new),
        }
        times = {v: [] for v in variants}
        same = {v: True for v in variants}
        for _ in range(a.rounds):
            for v, fn in variants.items():
                g = Generator(model, B, a.input_len + a.new + 1)
                enable_graphs(g, prefill_lengths=[a.input_len])
                fn(g)                                                     # warm-up call
                g.reset()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(g)
                end.record()
                torch.cuda.synchronize()
                times[v].append(start.elapsed_time(end))
                last = out[-1] if v == "bench" else out[:, -1]
                same[v] &= bool(torch.equal(last, free[:, -1]))
                del g
        base = statistics.median(times["bench"])
        for v, t in times.items():
            med = statistics.median(t)
            rows.append({"model": name, "batch": B, "variant": v, "ms": med, "us_per_token": 1e3 * med / a.new,
                         "vs_bench_pct": 100 * (med / base - 1), "rounds": t, "same_tokens": same[v]})
        del gen
    del model
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["olmoe"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--new", type=int, default=128, help="new tokens a call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("generate_loop_probe: times CUDA graphs on a GPU; none is visible", file=sys.stderr)
        return 2
    rows = []
    for m in a.models:
        rows += probe(m, a.batches, a)
    print(f"# {a.input_len} in / {a.new} new, {a.rounds} rounds, variants interleaved; ms a call (prefill included)")
    print(f"{'model':10s} {'bs':>3s} {'variant':9s} {'ms':>8s} {'us/tok':>8s} {'vs bench':>8s} same  rounds")
    for r in rows:
        print(f"{r['model']:10s} {r['batch']:3d} {r['variant']:9s} {r['ms']:8.2f} {r['us_per_token']:8.1f} "
              f"{r['vs_bench_pct']:+7.2f}% {'yes' if r['same_tokens'] else 'NO':4s} "
              + " ".join(f"{x:.2f}" for x in r["rounds"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
