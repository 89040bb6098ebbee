"""Which part of a Generator's own prefill graph puts its graphed bs-1 decode step in the slow state?

    python scripts/prefill_state_probe.py --model olmoe [--variants none,used,...] [--repeat 2] [--json OUT]

The thirty-sixth session found the bs-1 step in two states (docs/results.md): slow whenever its Generator also holds a
prefill graph (bench.py's case), fast with the decode graph alone; the thirty-seventh's call 1 found the states merge
with PDL off, and a prefill graph held by another Generator (its own cache) beside the decode graph does not slow it.
Here each round builds a new Generator and its decode graph, sets up one variant, then times 3 blocks of `--steps`
steps of decode(own=False), each from a fresh prefill (CUDA events; the prefill's own time is recorded too). Variants
alternate within one process, so the states compare in one run:

    none          decode graph only, eager prefill (the fast control)
    used          + its prefill graph, replayed for every prefill (bench.py; the slow control)
    unused        + its prefill graph captured and held, the prefill run eagerly
    dropped       + its prefill graph captured, then dropped before timing; eager prefill
    shared-cache  + a prefill graph captured on a second Generator that shares this one's KV cache (and nothing else),
                  replayed for every prefill
    nopdl         + its prefill graph captured with PDL off (the decode graph keeps PDL), replayed for every prefill
    other-replay  + a prefill graph of another Generator (its own cache) replayed before every eager prefill
    add-replay    + a graph of one tiny add replayed before every eager prefill
    used-side     + its prefill graph, replayed on a side stream (the current stream waits for it)
    used-then-eager  its prefill graph replayed, then the cache reset and the prompt prefilled eagerly
    eager-then-used  an eager prefill, then the cache reset and the prompt prefilled by its prefill graph
    used-sleep    + its prefill graph replayed, then a synchronize and 100 ms of host sleep (an eager prefill leaves
                  the GPU idle for 30-100 ms: is the fast state a rested GPU?)
    used+other-eager   + its prefill graph replayed, then another Generator's (own cache) prefill run eagerly
    used+other-step    + its prefill graph replayed, then one eager decode step of another Generator (own cache)
    none+other-graphed an eager prefill, then another Generator's prefill graph replayed (own cache)
    used-nomark / used-markbefore   used with graphs.PDL_MARK "" / "before" for the round (used: the default)
    used+add / used+norm / used+norm-pdl   + its prefill graph replayed, then one host-launched kernel: a torch add
                  on 1,024 floats, or the Triton RMSNorm of one row (without / with a PDL launch)
    used-carve100 / none-carve100 / used-carve0   used / none with every loaded Triton kernel's preferred shared
                  memory carveout (CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT) set to 100 or 0% for the round
                  (decode graph captured after it), then set back to the default (-1)
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

import minimoe.graphs as graph_knobs
from minimoe.generate import Generator
from minimoe.graphs import PrefillGraph, enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings

VARIANTS = ("none", "used", "unused", "dropped", "shared-cache", "nopdl", "other-replay", "add-replay", "used-side",
            "used-then-eager", "eager-then-used", "used-sleep", "used+other-eager", "used+other-step",
            "none+other-graphed", "used+add", "used+norm", "used+norm-pdl", "used-nomark", "used-markbefore", "used-carve100", "none-carve100",
            "used-carve0")


def set_carveout(value: int) -> int:
    """Set CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT (9) on every loaded Triton kernel; -> how many."""
    import ctypes
    from triton.compiler.compiler import CompiledKernel
    cuda = ctypes.CDLL("libcuda.so.1")
    n = 0
    for o in gc.get_objects():
        if isinstance(o, CompiledKernel) and getattr(o, "function", None):
            rc = cuda.cuFuncSetAttribute(ctypes.c_void_p(o.function), 9, ctypes.c_int(value))
            if rc != 0:
                raise RuntimeError(f"cuFuncSetAttribute: CUresult {rc}")
            n += 1
    return n


def setup(variant: str, model, settings, batch: int, S: int, max_len: int):
    """-> (the Generator to time, what must stay alive, a callable run before each prefill or None, a callable
    that prefills the prompt and returns the first tokens or None for gen.prefill)."""
    if variant in ("used-nomark", "used-markbefore"):
        graph_knobs.PDL_MARK = "" if variant == "used-nomark" else "before"
        variant = "used"
    if "-carve" in variant:
        print(f"  carveout {variant.split('-carve')[1]}% on {set_carveout(int(variant.split('-carve')[1]))} kernels")
        variant = variant.split("-carve")[0]
    gen = Generator(model, batch, max_len)
    enable_graphs(gen)
    held, before, prefill = None, None, None
    if variant in ("used", "unused", "dropped", "used-side", "used-then-eager", "eager-then-used", "used-sleep",
                   "used+other-eager", "used+other-step", "used+add", "used+norm", "used+norm-pdl"):
        gen.prefill_graphs[S] = PrefillGraph(gen, S)
        if variant == "unused":
            held = gen.prefill_graphs.pop(S)
        elif variant == "dropped":
            gen.prefill_graphs = {}
            gc.collect()
            torch.cuda.synchronize()
    elif variant == "shared-cache":
        other = Generator(model, batch, max_len)
        other.cache = gen.cache
        gen.prefill_graphs[S] = PrefillGraph(other, S)
        held = other
    elif variant == "nopdl":
        was, settings.pdl = settings.pdl, "off"
        try:
            gen.prefill_graphs[S] = PrefillGraph(gen, S)
        finally:
            settings.pdl = was
    elif variant == "other-replay":
        other = Generator(model, batch, max_len)
        pg = PrefillGraph(other, S)
        ids = torch.zeros(batch, S, dtype=torch.long, device="cuda")
        n = torch.full((batch,), S, dtype=torch.int32, device="cuda")
        held = (other, pg)

        def before():
            other.reset()                  # the prefill graph fills an empty cache
            pg.run(ids, n)
    elif variant == "add-replay":
        x = torch.zeros(1024, device="cuda")
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            x.add_(1)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            x.add_(1)
        held = (x, g)
        before = g.replay
    if variant == "used-side":
        side = torch.cuda.Stream()

        def prefill(prompt):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                tok = gen.prefill(prompt)
            torch.cuda.current_stream().wait_stream(side)
            return tok
    elif variant in ("used-then-eager", "eager-then-used"):
        graphs = gen.prefill_graphs

        def prefill(prompt):
            first, second = (graphs, {}) if variant == "used-then-eager" else ({}, graphs)
            gen.prefill_graphs = first
            gen.prefill(prompt)
            gen.reset()
            gen.prefill_graphs = second
            return gen.prefill(prompt)
    elif variant in ("used+other-eager", "used+other-step", "none+other-graphed"):
        other = Generator(model, batch, max_len)
        if variant == "none+other-graphed":
            other.prefill_graphs[S] = PrefillGraph(other, S)
        held = other
        o_ids = torch.randint(0, model.cfg.vocab_size, (batch, S), generator=torch.Generator().manual_seed(1))

        def prefill(prompt):
            tok = gen.prefill(prompt)
            other.reset()
            o_tok = other.prefill(o_ids)
            if variant == "used+other-step":
                other.decode(o_tok)
            return tok
        if variant == "used+other-step":
            o_ids = o_ids[:, :1]                   # a one-token eager prefill, then one eager step
    elif variant in ("used+add", "used+norm", "used+norm-pdl"):
        from minimoe.ops import OPS
        x = torch.randn(1, model.cfg.hidden_size, device="cuda", dtype=model.embed.weight.dtype)
        w = torch.ones(model.cfg.hidden_size, device="cuda", dtype=x.dtype)
        pdl = variant.endswith("-pdl")

        def prefill(prompt):
            tok = gen.prefill(prompt)
            if variant == "used+add":
                x.add_(0)
            else:
                OPS["triton"].rms_norm(x, w, 1e-6, pdl=pdl)
            return tok
    elif variant == "used-sleep":
        def prefill(prompt):
            tok = gen.prefill(prompt)
            torch.cuda.synchronize()
            time.sleep(0.1)
            return tok
    gen.reset()
    return gen, held, before, prefill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeat", type=int, default=2, help="passes over the variants (the second in reverse order)")
    p.add_argument("--own", action="store_true",
                   help="time generate()'s loop, decode(own=True): a copy in and a clone out around every replay "
                        "(default: bench.py's decode(own=False))")
    p.add_argument("--json")
    a = p.parse_args()
    names = a.variants.split(",")
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"prefill_state_probe: unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        raise SystemExit("prefill_state_probe: needs a CUDA GPU")
    s = RunSettings(experts="fused", device="cuda", pdl="on").resolve()
    model, cfg, _ = build_model(a.model, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    prompt = torch.randint(0, cfg.vocab_size, (a.batch, a.input_len), generator=torch.Generator().manual_seed(0))
    order = [v for k in range(a.repeat) for v in (names if k % 2 == 0 else names[::-1])]
    rows, ref_tokens = [], None
    mark_default = graph_knobs.PDL_MARK
    for r, v in enumerate(order):
        gen, held, before, prefill = setup(v, model, s, a.batch, a.input_len, a.input_len + a.steps + 64)
        blocks, prefill_ms = [], []
        for _ in range(3):
            gen.reset()
            if before is not None:
                before()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            e0.record()
            tok = gen.prefill(prompt) if prefill is None else prefill(prompt)
            e1.record()
            for _ in range(4):
                tok = gen.decode(tok, own=a.own)
            torch.cuda.synchronize()
            prefill_ms.append(e0.elapsed_time(e1))
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(a.steps):
                tok = gen.decode(tok, own=a.own)
            t1.record()
            t1.synchronize()
            blocks.append(t0.elapsed_time(t1) * 1e3 / a.steps)
        last = tok.cpu()
        ref_tokens = last if ref_tokens is None else ref_tokens
        row = {"round": r, "variant": v, "us_per_step": statistics.median(blocks), "blocks": blocks,
               "prefill_ms": statistics.median(prefill_ms), "same_last_token": bool(torch.equal(last, ref_tokens))}
        rows.append(row)
        print(f"round {r:2d} {v:13s} {row['us_per_step']:8.1f} us/step ({', '.join(f'{b:.1f}' for b in blocks)})  "
              f"prefill {row['prefill_ms']:6.2f} ms  same last token {row['same_last_token']}", flush=True)
        del gen, held, before, prefill
        gc.collect()
        if "-carve" in v:
            set_carveout(-1)
        graph_knobs.PDL_MARK = mark_default
    print(f"# {a.model} bs {a.batch}, median per variant (us/step | prefill ms):")
    base = statistics.median([x["us_per_step"] for x in rows if x["variant"] == names[0]])
    for v in names:
        t = statistics.median([x["us_per_step"] for x in rows if x["variant"] == v])
        pm = statistics.median([x["prefill_ms"] for x in rows if x["variant"] == v])
        print(f"#   {v:13s} {t:8.1f} ({100 * (t / base - 1):+.2f}% vs {names[0]})  prefill {pm:6.2f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "batch": a.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
