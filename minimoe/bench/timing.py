"""Timing one generation run the way MoE-Inference-Bench does, with CUDA events.

One run = prefill a batch of B random prompts of length `in`, then `out` decode steps (EOS ignored).
Per run we record, with device events (host clock on a CPU):
    TTFT   prefill + first token sampled                       (the paper's "time to first token")
    ITL    every decode step separately -> median and p90      (the paper's inter-token latency)
    E2E    first event to last                                 (the paper's end-to-end latency)
and derive output tok/s = B*out/E2E, the paper's throughput = B*(in+out)/E2E, prefill tok/s = B*in/TTFT.
Warm-up runs come first; the reported run is the one with the median E2E.

Rooflines sit beside every figure: the bytes a decode step must read (weights + experts the router
touched, counted from its output + KV) over the measured bandwidth, and prefill FLOPs over the
measured matmul peak. A measurement above 100% of its ceiling is flagged as a bug, never reported
as a result.
"""
from __future__ import annotations

import contextlib
import itertools
import statistics
import time

import torch

from ..gate import SkipCount, counting_skips
from ..generate import Generator
from ..instrument import ExpertLoad, Profiler, profiling
from .roofline import count_params, decode_bytes, expected_touched, prefill_flops


class Clock:
    """Marks on the device timeline (CUDA events) or the host clock (CPU), read once at the end."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def timed_generation(gen: Generator, prompts, out_len: int) -> dict:
    """One run of prompts ([B, S] tensor or B token lists) -> intervals[0] = TTFT, the rest = decode
    steps (ms), and the rows of non-finite logits the generator counted on the device. The loop hands each
    step's tokens straight back (`decode(own=False)`): no copy in or clone out between graph replays, as a
    serving loop that keeps its tokens on the device; last_tokens is a copy."""
    gen.reset()
    clock = Clock(gen.device)
    clock.mark()
    tok = gen.prefill(prompts)
    clock.mark()
    for _ in range(out_len - 1):
        tok = gen.decode(tok, own=False)            # the graph's own token buffer, passed straight back
        clock.mark()
    ms = clock.intervals_ms()                       # one sync, after the last step
    return {"ttft_ms": ms[0], "itl_ms": ms[1:], "e2e_ms": sum(ms), "last_tokens": tok.clone(),
            "nonfinite_rows": int(gen.nonfinite)}


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(run: dict, batch: int, in_len: float, out_len: int) -> dict:
    """in_len: prompt tokens per sequence (the mean, for a ragged batch)."""
    e2e_s = run["e2e_ms"] / 1e3
    itl = run["itl_ms"]
    return {"ttft_ms": run["ttft_ms"], "itl_median_ms": statistics.median(itl) if itl else None,
            "itl_p90_ms": _p(itl, 0.9), "e2e_s": e2e_s,
            "output_tok_s": batch * out_len / e2e_s, "throughput_tok_s": batch * (in_len + out_len) / e2e_s,
            "prefill_tok_s": batch * in_len / (run["ttft_ms"] / 1e3)}


def touched_experts(gen: Generator, prompts, longest: int | None = None, batch: int | None = None,
                    skips: SkipCount | None = None) -> float:
    """Experts hit per MoE layer in one decode step, counted from the router's output (eager step). longest /
    batch: the whole batch's (under EP `prompts` are this rank's rows, and every rank must take the same branch:
    the step runs collectives). A prompt that fills the model's positions leaves no room for that step (a run of
    one output token, i.e. no decode step): then the expectation under uniform routing, `roofline.expected_touched`.
    skips: also counts the slots --skip-threshold drops in that step (gate.SkipCount; nothing without the step)."""
    cfg = gen.model.cfg
    if not cfg.is_moe:
        return 0.0
    longest = max(len(p) for p in prompts) if longest is None else longest      # default: one process's own
    if longest + 1 > gen.cache.max_len:
        return expected_touched(cfg.n_experts, cfg.top_k, gen.batch if batch is None else batch)
    gen.reset()
    tok = gen.prefill(prompts)
    load = ExpertLoad.of(cfg, gen.device)
    with profiling(None, load), counting_skips(skips) if skips is not None else contextlib.nullcontext(), \
            torch.inference_mode():
        gen.eager_step(tok, gen.host_len)
    moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    return float((load.counts[moe] > 0).sum(1).double().mean())


def roofline(cfg, batch, in_len, out_len, touched, ceilings, metrics, wbytes, top_k=None) -> dict:
    pc = count_params(cfg)
    ctx = in_len + out_len / 2                                         # mean context over decode
    step_bytes = decode_bytes(cfg, pc, batch, ctx, touched, wbytes, wbytes)
    bw = ceilings["bandwidth_GBps"] * 1e9
    step_floor_ms = step_bytes["total"] / bw * 1e3
    flops = prefill_flops(cfg, pc, batch, in_len, top_k)
    prefill_floor_ms = flops / (ceilings["matmul_TFLOPs"] * 1e12) * 1e3
    e2e_floor_s = (prefill_floor_ms + (out_len - 1) * step_floor_ms) / 1e3
    r = {"decode_step_bytes": step_bytes, "experts_touched_per_layer": touched,
         "decode_step_floor_ms": step_floor_ms, "prefill_flops": flops, "prefill_floor_ms": prefill_floor_ms,
         "output_tok_s_floor": batch * out_len / e2e_floor_s,
         "decode_pct_of_floor": 100 * step_floor_ms / metrics["itl_median_ms"] if metrics["itl_median_ms"] else None,
         "prefill_pct_of_peak": 100 * prefill_floor_ms / metrics["ttft_ms"],
         "e2e_pct_of_floor": 100 * e2e_floor_s / metrics["e2e_s"]}
    r["flags"] = [f"{k} = {r[k]:.0f}% > 100%: measurement bug" for k in
                  ("decode_pct_of_floor", "prefill_pct_of_peak", "e2e_pct_of_floor") if (r[k] or 0) > 100]
    return r


def profile_decode(gen: Generator, prompts, steps: int) -> dict:
    """Eager decode steps with every region timed: per-step region ms and the step's own time."""
    gen.reset()
    tok = gen.prefill(prompts)
    saved, gen.graphs = gen.graphs, None          # regions need eager launches
    prof = Profiler(gen.device)
    clock = Clock(gen.device)
    try:
        with profiling(prof), torch.inference_mode():
            tok = gen.decode(tok)                     # one untimed step: warm caches
            prof.reset()
            clock.mark()
            for _ in range(steps):
                tok = gen.decode(tok)
            clock.mark()
        step_ms = clock.intervals_ms()[0] / steps
        regions = {n: {"ms_per_step": v["ms"] / steps, "calls_per_step": v["calls"] / steps, "pct": v["pct"]}
                   for n, v in prof.totals().items()}
    finally:
        gen.graphs = saved
    covered = sum(v["ms_per_step"] for v in regions.values())
    return {"step_ms": step_ms, "regions": regions, "covered_ms": covered,
            "coverage_pct": 100 * covered / step_ms, "notes": dict(prof.notes)}


def plot_throughput(path: str, results: list[dict], title: str | None = None) -> None:
    """An image (format from the extension): output tok/s against batch size, one line per (in, out) length; title:
    what ran where (bench.py: model, device, dtype, expert path), so a saved image explains itself."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for (n_in, n_out), rs in itertools.groupby(sorted(results, key=lambda r: (r["input_len"], r["output_len"],
                                                                                 r["batch"])),
                                              key=lambda r: (r["input_len"], r["output_len"])):
        rs = list(rs)
        ax.plot([r["batch"] for r in rs], [r["metrics"]["output_tok_s"] for r in rs], marker="o",
                label=f"{n_in}/{n_out}")
    batches = sorted({r["batch"] for r in results})
    if len(batches) > 1 and batches[-1] / batches[0] >= 8:      # the paper's 1 ... 128: one step a doubling
        ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])            # only the batch sizes that ran
    ax.set_xlabel("batch size")
    ax.set_ylabel("output tok/s")
    ax.legend(title="in/out")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
