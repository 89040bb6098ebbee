"""Kernel-by-kernel profile of one graphed decode step (and one prefill), on the GPU.

    python scripts/profile_step.py --model olmoe --bs 1 [--input-len 128] [--steps 20]

The CUDA-event regions of `bench.py --profile` need eager launches, so they show where an eager
step goes; this shows the graph that is actually timed. It replays the captured decode step under
torch.profiler and prints, per kernel name: launches per step, GPU µs per step, and the share of
the step. `--aten` adds one eager prefill profiled by ATen op and input shapes (which op launched a kernel).
"gaps" = the step's wall time (CUDA events) minus the summed kernel time: the cost of
launch latency and dependencies between small kernels that no single kernel owns.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from minimoe import settings as run_settings
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model


def kernel_table(prof, steps: int) -> list[dict]:
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            by_name[e.name][0] += 1
            by_name[e.name][1] += e.device_time    # µs
    rows = [{"kernel": n[:90], "per_step": c / steps, "us_per_step": t / steps} for n, (c, t) in by_name.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def layer_template(prof, steps: int) -> list[dict]:
    """The kernels of one layer in launch order, averaged over every layer and step: name, µs, and the
    idle µs before it (its start minus the previous kernel's end). The layer is the shortest period
    that repeats the step's kernel names over its middle third; [] when none is found."""
    evs = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                  and e.device_time > 0), key=lambda e: e.time_range.start)
    if not evs or len(evs) % steps:
        return []
    n = len(evs) // steps
    names = [e.name for e in evs[:n]]
    lo, hi = n // 3, 2 * n // 3
    period = next((q for q in range(2, n // 3 + 1)
                   if all(names[i] == names[i + q] for i in range(lo, hi - q))), None)
    if period is None:
        return []
    start = lo - lo % period
    while start >= period and names[start - period:start] == names[start:start + period]:
        start -= period                                # the first whole layer of the step
    while start >= 1 and names[start - 1] == names[start - 1 + period]:
        start -= 1
    sums = [[0.0, 0.0, 0] for _ in range(period)]
    for k in range(steps):
        step = evs[k * n:(k + 1) * n]
        i = start
        while i + period <= n and [e.name for e in step[i:i + period]] == names[start:start + period]:
            for j in range(period):
                e = step[i + j]
                sums[j][0] += e.device_time
                if i + j > 0:
                    sums[j][1] += max(0.0, e.time_range.start - step[i + j - 1].time_range.end)
                sums[j][2] += 1
            i += period
    return [{"kernel": names[start + j][:70], "us": t / max(c, 1), "gap_before_us": g / max(c, 1), "count": c}
            for j, (t, g, c) in enumerate(sums)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="olmoe", help="a model card name (models/aliases.json), random weights")
    p.add_argument("--bs", type=int, default=1, help="decode batch (prompts)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens each (the profiled prefill's length)")
    p.add_argument("--steps", type=int, default=20, help="graphed decode steps profiled (and averaged)")
    p.add_argument("--json", help="write the tables here as JSON")
    p.add_argument("--aten", action="store_true",
                   help="also profile one eager prefill by ATen op and input shapes (which op launched a kernel)")
    run_settings.add_args(p, run_settings.RunSettings(experts="fused", device="cuda"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step: profiles CUDA graphs on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    settings = run_settings.from_args(a).resolve()
    dev = settings.torch_device
    model, cfg, _ = build_model(a.model, "dummy", dtype=settings.torch_dtype, device=dev, settings=settings)
    gen = Generator(model, a.bs, a.input_len + a.steps * 3 + 8)
    prompts = torch.randint(0, cfg.vocab_size, (a.bs, a.input_len), device=dev)
    enable_graphs(gen, prefill_lengths=[] if settings.eager_prefill else [a.input_len])
    out = {"model": a.model, "bs": a.bs, "settings": vars(settings)}
    for name in ("prefill", "decode"):
        gen.reset()
        tok = gen.prefill(prompts)
        for _ in range(a.steps):                       # warm
            tok = gen.decode(tok)
        torch.cuda.synchronize()
        n = 1 if name == "prefill" else a.steps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if name == "prefill":
            gen.reset()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start.record()
            for _ in range(n):
                tok = gen.prefill(prompts) if name == "prefill" else gen.decode(tok)
            end.record()
            torch.cuda.synchronize()
        wall = start.elapsed_time(end) * 1e3 / n
        rows = kernel_table(prof, n)
        busy = sum(r["us_per_step"] for r in rows)
        launches = sum(r["per_step"] for r in rows)
        print(f"\n## {a.model} bs{a.bs} {name}: {wall:.1f} us per step (events), kernels {busy:.1f} us, "
              f"{launches:.0f} launches, gaps {wall - busy:.1f} us ({100 * (wall - busy) / wall:.0f}%)")
        print(f"{'kernel':90s} {'/step':>6s} {'us/step':>9s} {'us each':>8s} {'%':>5s}")
        for r in rows[:40]:
            print(f"{r['kernel']:90s} {r['per_step']:6.1f} {r['us_per_step']:9.1f} "
                  f"{r['us_per_step'] / r['per_step']:8.2f} {100 * r['us_per_step'] / wall:5.1f}")
        out[name] = {"wall_us": wall, "kernel_us": busy, "launches": launches, "kernels": rows}
        if name == "decode":
            tpl = layer_template(prof, n)
            out[name]["layer"] = tpl
            if tpl:
                print(f"\n# one layer in launch order (mean over {tpl[0]['count']} layers x steps): "
                      f"{sum(r['us'] for r in tpl):.1f} us kernels + {sum(r['gap_before_us'] for r in tpl):.1f} us idle")
                print(f"{'kernel':70s} {'us':>7s} {'idle before':>12s}")
                for r in tpl:
                    print(f"{r['kernel']:70s} {r['us']:7.2f} {r['gap_before_us']:12.2f}")
    if a.aten:
        gen.reset()
        graphs, gen.prefill_graphs = gen.prefill_graphs, {}          # the eager prefill, its ATen ops visible
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            gen.prefill(prompts)
            torch.cuda.synchronize()
        gen.prefill_graphs = graphs
        print(f"\n## {a.model} bs{a.bs} eager prefill by ATen op and input shapes (device time)")
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="device_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=80))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
