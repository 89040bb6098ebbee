"""Tune fused_moe launch configs on the GPU; write the JSON files minimoe/kernels/moe_configs reads.

For each preset (E, D, I, K) and token bucket T, the whole fused_moe call is timed by CUDA-graph
replay (median of CUDA-event timings), over a small search space picked by tokens per expert
(tpe = T·K/E): decode tiles for tpe < 12, mid, prefill tiles for tpe >= 48. Every candidate's output
is checked against a torch loop over experts before it may win. Then GEMM2 alone ("down") is
retuned with the winner's BLOCK_M. Each captured call gets its own routing, so repeated calls do
not find the same experts already in L2.

Compiles dominate the run time, so shapes are runtime arguments of the kernels (one compile serves
every preset and bucket) and the candidate kernels are compiled first in parallel worker processes,
which fill Triton's on-disk cache for the timing loop.

    python scripts/tune_fused_moe.py                          # all presets, all buckets
    python scripts/tune_fused_moe.py --presets olmoe --buckets 1 64 4096 --dry-run
    python scripts/tune_fused_moe.py --presets dsv2lite --buckets 2048 8192 --tma --merge   # add two buckets
"""

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe, plan  # noqa: E402

PRESETS = {  # name: (E, D, I, K)
    "olmoe": (64, 2048, 1024, 8), "qwen3": (128, 2048, 768, 8), "mixtral": (8, 4096, 14336, 2),
    "qwen15": (60, 2048, 1408, 4), "dsv2lite": (64, 2048, 1408, 6),
    # the layers one rank runs under --tp 2: every expert split on its FFN width (tensor_parallel.py)
    "mixtral-tp2": (8, 4096, 7168, 2), "qwen3-tp2": (128, 2048, 384, 8), "olmoe-tp2": (64, 2048, 512, 8),
}
BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
HBM_BYTES_PER_S = 4.25e12  # measured H200 copy bandwidth and bf16 tensor-core rate: the ceilings
PEAK_FLOP_PER_S = 787e12   # each result is printed against (and flagged if it beats one)


def _cfg(bm, bn, bk, warps, stages, group=1):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group,
            "num_warps": warps, "num_stages": stages}


# About ten configs per regime: shapes the vLLM H100/H200 tables keep choosing (peers.md §1.4).
SPACE = {
    "decode": [_cfg(16, 64, 128, 4, 4), _cfg(16, 64, 128, 4, 5), _cfg(16, 32, 128, 4, 5),
               _cfg(16, 128, 128, 4, 3), _cfg(16, 64, 256, 4, 3), _cfg(16, 128, 64, 4, 4),
               _cfg(16, 32, 256, 4, 4), _cfg(16, 64, 64, 4, 5), _cfg(16, 64, 128, 8, 4),
               _cfg(16, 128, 128, 8, 3)],
    "mid": [_cfg(16, 64, 128, 4, 4), _cfg(16, 128, 128, 4, 3), _cfg(32, 64, 128, 4, 4),
            _cfg(32, 128, 64, 4, 4), _cfg(32, 128, 128, 4, 3), _cfg(32, 128, 64, 8, 4),
            _cfg(64, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4), _cfg(64, 128, 64, 8, 4),
            _cfg(64, 64, 128, 4, 3)],
    "prefill": [_cfg(64, 128, 64, 4, 4), _cfg(64, 128, 64, 8, 4, 16), _cfg(64, 64, 64, 4, 5, 16),
                _cfg(128, 64, 64, 4, 4, 16), _cfg(128, 64, 64, 8, 4, 16),
                _cfg(128, 128, 64, 8, 3, 16), _cfg(128, 128, 64, 8, 4, 16),
                _cfg(128, 128, 64, 8, 4), _cfg(128, 128, 32, 8, 5, 16),
                _cfg(128, 64, 128, 8, 3, 16)],
}
DOWN_SPACE = {  # GEMM2 overrides: (BLOCK_N, BLOCK_K, num_warps, num_stages)
    "decode": [(64, 128, 4, 5), (128, 128, 4, 4), (32, 128, 4, 5), (64, 256, 4, 4)],
    "mid": [(64, 128, 4, 4), (128, 64, 4, 4), (128, 128, 4, 3), (256, 64, 8, 3)],
    "prefill": [(128, 64, 8, 4), (256, 64, 8, 4), (256, 64, 8, 3), (128, 128, 8, 3)],
}


# With --tma: every candidate again with its weight tiles read through TMA descriptors (fused_moe `b_tma`), plus (at
# prefill) tiles whose deeper pipelines the freed registers and address math might afford.
TMA_EXTRA = [_cfg(128, 128, 64, 8, 4, 8), _cfg(64, 256, 64, 8, 3, 16), _cfg(128, 256, 64, 8, 2, 16),
             _cfg(128, 128, 128, 8, 2, 16)]
TMA_DOWN_EXTRA = [(256, 64, 8, 3), (128, 128, 8, 4)]


def space(reg, tma):
    """GEMM1 candidates for a regime; with tma each also as `b_tma` (and, at prefill, TMA_EXTRA)."""
    if not tma:
        return SPACE[reg]
    return SPACE[reg] + [dict(c, b_tma=True) for c in SPACE[reg] + (TMA_EXTRA if reg == "prefill" else [])]


def regime(T, K, E):
    tpe = T * K / E
    return "decode" if tpe < 12 else "mid" if tpe < 48 else "prefill"


def down_candidates(base, reg, tma=False):
    """GEMM2 overrides on the winner `base`; with tma each also with and without `b_tma` (plus TMA_DOWN_EXTRA at
    prefill)."""
    if not tma:
        return [dict(base, down={"BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s})
                for n, k, w, s in DOWN_SPACE[reg]]
    extra = TMA_DOWN_EXTRA if reg == "prefill" else []
    return [dict(base, down={"BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s, "b_tma": t})
            for n, k, w, s in DOWN_SPACE[reg] + extra for t in (False, True)]


def make_layer(E, D, I, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w13 = torch.randn(E, 2 * I, D, device="cuda", dtype=dtype, generator=g) / math.sqrt(D)
    w2 = torch.randn(E, D, I, device="cuda", dtype=dtype, generator=g) / math.sqrt(I)
    return w13, w2


def make_routings(T, E, D, K, dtype, n, seed):
    """n independent (x, topk_ids, topk_weights) sets, as a softmax router would give."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(T, D, device="cuda", dtype=dtype, generator=g)
        probs = torch.randn(T, E, device="cuda", generator=g).softmax(-1)
        weights, ids = probs.topk(K, dim=-1)
        out.append((x, ids.to(torch.int32), weights))
    return out


def reference(x, w13, w2, ids, weights):
    """Loop over experts in torch (the oracle for accepting a config)."""
    I = w13.shape[1] // 2
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    for e in range(w13.shape[0]):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        h = torch.nn.functional.silu(x[tok] @ w13[e, :I].T) * (x[tok] @ w13[e, I:].T)
        out.index_add_(0, tok, weights[tok, slot, None] * (h @ w2[e].T).float())
    return out


def time_call(fn_list):
    """Median µs per call: the calls are captured in one CUDA graph, replayed 5 times."""
    return graph_us(fn_list, 5)


def try_config(layer, routings, ref, cfg, tol):
    """µs per call for cfg, or None when it fails to compile/launch or gives a wrong answer."""
    w13, w2 = layer
    try:
        x, ids, weights = routings[0]
        out = fused_moe(x, w13, w2, ids, weights, config=cfg).float()
        err = ((out - ref).norm() / ref.norm()).item()
        if not err <= tol:
            print(f"    rejected (rel err {err:.1e}): {cfg}")
            return None
        calls = [lambda r=r: fused_moe(r[0], w13, w2, r[1], r[2], config=cfg) for r in routings]
        return time_call(calls)
    except Exception as exc:  # out of shared memory, register spills the compiler refuses, ...
        print(f"    failed ({type(exc).__name__}: {str(exc)[:80]}): {cfg}")
        return None


def n_calls_for(E, D, I, K, T):
    """Enough calls per graph that one replay is >= ~1 ms, at most 20 (weight-stream estimate)."""
    touched = min(E, T * K)
    est_us = touched * 3 * D * I * 2 / HBM_BYTES_PER_S * 1e6 + 2 * T * K * 3 * D * I / 4e8
    return max(1, min(20, int(1000 / max(est_us, 1.0))))


def tune_bucket(name, layer, T, dtype, tol, tma=False):
    E, D, I, K = PRESETS[name]
    routings = make_routings(T, E, D, K, dtype, n_calls_for(E, D, I, K, T), seed=T)
    x, ids, weights = routings[0]
    ref = reference(x, *layer, ids.long(), weights)
    reg = regime(T, K, E)
    scored = [(try_config(layer, routings, ref, c, tol), c) for c in space(reg, tma)]
    scored = [(t, c) for t, c in scored if t is not None]
    if not scored:
        raise RuntimeError(f"{name} T={T}: no config passed")
    best_t, best = min(scored, key=lambda tc: tc[0])
    if tma:
        for t, c in sorted(scored, key=lambda tc: tc[0])[:6]:
            print(f"    {t:9.1f} us  {c}")
    for cand in down_candidates(best, reg, tma):
        t = try_config(layer, routings, ref, cand, tol)
        if t is not None and t < best_t:
            best_t, best = t, cand
    return best, best_t, routings


def report(name, T, best_t, routings, dtype):
    E, D, I, K = PRESETS[name]
    elem = torch.finfo(dtype).bits // 8
    touched = statistics.mean(r[1].unique().numel() for r in routings)
    gbytes = touched * 3 * D * I * elem / 1e9
    tflops = 2 * T * K * 3 * D * I / best_t / 1e6
    bw = gbytes / best_t * 1e6
    beats = bw * 1e9 > HBM_BYTES_PER_S or tflops * 1e12 > PEAK_FLOP_PER_S
    flag = "  <-- above a measured ceiling: a bug, not a result" if beats else ""
    print(f"{name:9s} T={T:6d} {plan(T, K, E):8s} {best_t:9.1f} us  "
          f"{bw:7.0f} GB/s ({100 * bw * 1e9 / HBM_BYTES_PER_S:3.0f}% of 4250)  "
          f"{tflops:6.1f} TFLOP/s ({100 * tflops * 1e12 / PEAK_FLOP_PER_S:3.0f}% of 787){flag}")


def _compile_worker(job):
    """Runs in a fresh process: launch each candidate once so Triton writes it to its disk cache."""
    (E, D, I, K), dtype_str, cfgs = job
    dtype, T = getattr(torch, dtype_str), 64
    w13 = torch.randn(E, 2 * I, D, device="cuda", dtype=dtype)
    w2 = torch.randn(E, D, I, device="cuda", dtype=dtype)
    x = torch.randn(T, D, device="cuda", dtype=dtype)
    ids = torch.randn(T, E, device="cuda").topk(K, dim=-1).indices.to(torch.int32)
    weights = torch.rand(T, K, device="cuda")
    for cfg in cfgs:
        try:
            fused_moe(x, w13, w2, ids, weights, config=cfg)
        except Exception:
            pass  # the timing loop reports it
    torch.cuda.synchronize()
    return len(cfgs)


def compile_candidates(presets, buckets, tma=False):
    """Every distinct (variant, config) the timing loop may launch. Shapes are runtime arguments,
    so these compile once for all presets; GEMM2 overrides only per distinct (BLOCK_M, GROUP_M)."""
    cands = {}
    for name in presets:
        E, _, _, K = PRESETS[name]
        for T in buckets:
            reg, variant = regime(T, K, E), plan(T, K, E)
            sp = space(reg, tma)
            bases = {(c["BLOCK_M"], c["GROUP_M"]): c for c in sp}
            for cfg in sp + [d for c in bases.values() for d in down_candidates(c, reg, tma)]:
                full = dict(cfg, variant=variant)
                cands[json.dumps(full, sort_keys=True)] = full
    return list(cands.values())


def precompile(presets, buckets, dtype, n_workers, tma=False):
    """GEMM kernels on the first preset's shapes, sliced over workers; plus one light job per
    preset for its alignment kernel (the only kernel whose compile depends on E)."""
    dt = str(dtype).removeprefix("torch.")
    cands = compile_candidates(presets, buckets, tma)
    jobs = [(PRESETS[presets[0]], dt, cands[i::n_workers]) for i in range(n_workers)]
    for name in presets[1:]:
        per_bm = {c["BLOCK_M"]: c for c in cands if c["variant"] == "aligned"}
        jobs.append((PRESETS[name], dt, list(per_bm.values())))
    t0 = time.time()
    with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
        n = sum(pool.map(_compile_worker, jobs))
    print(f"precompiled {len(cands)} candidates ({n} launches) in {time.time() - t0:.0f} s "
          f"with {n_workers} workers")


def write_table(name, dtype, table, timings, out_dir, merge=False):
    """Write the preset's tuned table; merge: keep the file's other buckets (and their timings), replace these."""
    E, D, I, K = PRESETS[name]
    path = Path(out_dir) / moe_configs.config_file_name(E, I, D, K, dtype)
    today = time.strftime("%Y-%m-%d")
    tuned_on = {t: today for t in table}
    if merge and path.exists():
        old = json.loads(path.read_text())
        table = dict(old["configs"], **table)
        timings = dict(old["meta"].get("us_per_call", {}), **timings)
        old_dates = old["meta"].get("tuned_on") or {t: old["meta"].get("date", "?") for t in old["configs"]}
        tuned_on = dict(old_dates, **tuned_on)
        table = {t: table[t] for t in sorted(table, key=int)}
        timings = {t: timings[t] for t in sorted(timings, key=int)}
        tuned_on = {t: tuned_on[t] for t in sorted(tuned_on, key=int)}
    meta = {"triton_version": triton.__version__, "torch_version": torch.__version__,
            "device": moe_configs.device_name(), "date": today, "us_per_call": timings,
            "tuned_on": tuned_on}      # per bucket: a merge keeps the others' dates (versions: the latest run's)
    path.write_text(json.dumps({"meta": meta, "configs": table}, indent=1) + "\n")
    print(f"wrote {path}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--buckets", nargs="+", type=int, default=BUCKETS)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--out", default=str(moe_configs.CONFIG_DIR), help="folder for the JSON files")
    p.add_argument("--workers", type=int, default=12, help="parallel compile processes (0: none)")
    p.add_argument("--tol", type=float, default=2e-2, help="max relative error vs the reference")
    p.add_argument("--dry-run", action="store_true", help="print the plan, touch no GPU")
    p.add_argument("--tma", action="store_true",
                   help="also time every candidate with its weight tiles read through Hopper TMA descriptors "
                        "(b_tma), plus four deeper prefill tiles; the fastest wins, with or without TMA")
    p.add_argument("--merge", action="store_true",
                   help="keep the existing file's other buckets; replace only the ones tuned now")
    return p.parse_args()


def main():
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    n_cands = len(compile_candidates(args.presets, args.buckets, args.tma))
    n_timed = 0
    for p in args.presets:
        for T in args.buckets:
            reg = regime(T, PRESETS[p][3], PRESETS[p][0])
            n_timed += len(space(reg, args.tma)) + len(down_candidates(SPACE[reg][0], reg, args.tma))
    print(f"{len(args.presets)} presets x {len(args.buckets)} buckets: {n_cands} distinct "
          f"candidates to compile (x2 GEMM kernels), {n_timed} timed runs")
    if args.dry_run:
        for name in args.presets:
            E, D, I, K = PRESETS[name]
            print(name, [(T, plan(T, K, E), regime(T, K, E)) for T in args.buckets])
        return
    if not torch.cuda.is_available():
        print("tune_fused_moe: tuning times kernels on a CUDA GPU; none is visible (--dry-run needs none)",
              file=sys.stderr)
        return 2
    t0 = time.time()
    if args.workers > 0:
        precompile(args.presets, args.buckets, dtype, args.workers, args.tma)
    print("preset    tokens variant  time/call  useful weight bytes/s  useful FLOP/s")
    for name in args.presets:
        E, D, I, K = PRESETS[name]
        layer = make_layer(E, D, I, dtype)
        table, timings = {}, {}
        for T in args.buckets:
            best, best_t, routings = tune_bucket(name, layer, T, dtype, args.tol, args.tma)
            report(name, T, best_t, routings, dtype)
            table[str(T)], timings[str(T)] = best, round(best_t, 1)
        write_table(name, dtype, table, timings, args.out, args.merge)
        del layer
        torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
