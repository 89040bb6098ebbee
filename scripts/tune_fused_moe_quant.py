"""Tune the tensor-core (aligned) path of the quantized fused MoE, kernels/fused_moe_quant.py (issue 12).

    python scripts/tune_fused_moe_quant.py --out DIR                       # fp8, olmoe + qwen3 + mixtral, ~5 min
    python scripts/tune_fused_moe_quant.py --out DIR --write               # also write minimoe/kernels/configs/
    python scripts/tune_fused_moe_quant.py --smoke --out DIR               # tiny shapes on the CPU (interpreter)

Formats: fp8 and int8 (per-row scales), int4 (groups of 128: every candidate's BLOCK_K becomes the group).
Until this script the quantized aligned path ran the bf16 heuristic with BLOCK_K = 128 (now fused_moe_quant.untuned_config):
tiles sized for two-byte B operands, not for fp8's one-byte codes, whose K step could be twice as long for the same
bytes. For each preset (E, D, I, K) and token bucket T (4 and up: fp8 leaves the GEMVs at 3 tokens), the whole
fused_moe_quant call (alignment, activation quantization, GEMM1, GEMM2, combine) is timed in one CUDA graph over
bench/layer's ROTATE routings (median of replays), first over GEMM1 tiles with the default GEMM2, then over GEMM2
overrides under the winner. Every candidate is checked before it may be timed: against the W8A8 loop oracle
(quant_gpu.w8a8_reference, activations fake-quantized per token like the kernels; rel. err < 2e-2). The default
config is always a candidate, so a written table is never slower than the heuristic on the run that wrote it.
Per winner the floor (stored bytes of the touched experts over the measured bandwidth) and a kernel breakdown
(torch.profiler, eager launches) are printed. Tables are written as vLLM names its quantized ones
(`dtype=fp8_w8a8`, `int8_w8a16`, `int4_w4a16`); fused_moe_quant.tuned_config reads them, nearest bucket in log T,
within 2x of the buckets. Existing tables are ignored while tuning (fused_moe_quant.USE_TUNED off), so every
candidate runs with exactly the tiles it names (GEMM2 included).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quant_gpu  # noqa: E402
from minimoe.bench import layer  # noqa: E402
from minimoe.bench.roofline import measure_ceilings  # noqa: E402
from minimoe.kernels import fused_moe_quant as FQ  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.quant import quantize_experts  # noqa: E402

PRESETS = {"olmoe": "olmoe", "qwen3": "qwen3-30b-a3b", "mixtral": "mixtral-8x7b"}   # name -> bench/layer shape
BUCKETS = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]


def _cfg(bm, bn, bk, warps, stages, group=1):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps,
            "num_stages": stages, "variant": "aligned"}


# fp8 B tiles are one byte an element: BLOCK_K 256 moves what bf16's 128 did. Regimes as tune_fused_moe.py.
SPACE = {
    "decode": [_cfg(16, 64, 128, 4, 4), _cfg(16, 64, 256, 4, 4), _cfg(16, 128, 128, 4, 4), _cfg(16, 128, 256, 4, 3),
               _cfg(16, 128, 256, 8, 3), _cfg(16, 64, 256, 4, 6), _cfg(16, 128, 128, 8, 5), _cfg(16, 32, 256, 4, 5),
               _cfg(16, 64, 512, 4, 3), _cfg(16, 256, 128, 8, 3)],
    "mid": [_cfg(16, 64, 256, 4, 4), _cfg(16, 128, 256, 4, 3), _cfg(32, 64, 256, 4, 4), _cfg(32, 128, 128, 4, 4),
            _cfg(32, 128, 256, 4, 3), _cfg(32, 128, 256, 8, 3), _cfg(64, 64, 128, 4, 4), _cfg(64, 128, 128, 4, 4),
            _cfg(64, 128, 128, 8, 4), _cfg(64, 128, 256, 8, 3)],
    "prefill": [_cfg(64, 128, 128, 4, 4), _cfg(64, 128, 128, 8, 4, 16), _cfg(64, 256, 128, 8, 3, 16),
                _cfg(128, 128, 128, 8, 4, 16), _cfg(128, 128, 128, 8, 3), _cfg(128, 256, 128, 8, 3, 16),
                _cfg(128, 128, 64, 8, 5, 16), _cfg(128, 64, 128, 4, 4, 16), _cfg(128, 128, 256, 8, 2, 16)],
}
DOWN_SPACE = {   # GEMM2 overrides (BLOCK_N, BLOCK_K, num_warps, num_stages)
    "decode": [(64, 256, 4, 4), (128, 256, 4, 3), (128, 128, 4, 4), (32, 256, 4, 5), (64, 512, 4, 3), (128, 256, 8, 3)],
    "mid": [(64, 256, 4, 4), (128, 128, 4, 4), (128, 256, 4, 3), (128, 256, 8, 3), (256, 128, 8, 3)],
    "prefill": [(128, 128, 8, 4), (256, 128, 8, 3), (256, 64, 8, 4), (128, 256, 8, 3)],
}


def regime(T, K, E) -> str:
    tpe = T * K / E
    return "decode" if tpe < 12 else "mid" if tpe < 48 else "prefill"


def with_down(base, t) -> dict:
    n, k, w, s = t
    return dict(base, down={"BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s})


def default_of(qex, T, K) -> dict:
    """What fused_moe_quant runs for this T without a tuned table (the baseline candidate)."""
    E, two_i, D = qex.w13.stack_shape
    return dict(FQ.untuned_config(qex.w13, qex.w2, E, two_i // 2, D, K, T), variant="aligned")


def _compile_worker(job):
    """A fresh process launches each candidate once on a small layer, so Triton writes its disk cache
    (tile constexprs set the compile; the shapes are runtime arguments)."""
    fmt, cfgs = job
    from minimoe.experts import Experts
    E, D, I, K, T = 8, 2048, 1024, 2, 64
    qex = quantize_experts(Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", dtype=torch.bfloat16) * 0.02,
                                                torch.randn(E, D, I, device="cuda", dtype=torch.bfloat16) * 0.02), fmt)
    x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16)
    w, ids = layer.routings(T, E, K, 1, "cuda")[0]
    for cfg in cfgs:
        try:
            FQ.fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=cfg)
        except Exception:
            pass     # the timing loop reports it
    torch.cuda.synchronize()
    return len(cfgs)


def precompile(fmt, workers):
    cands = {json.dumps(c, sort_keys=True): c for reg in SPACE for c in SPACE[reg]}
    for reg in SPACE:
        for c in {c["BLOCK_M"]: c for c in SPACE[reg]}.values():
            for t in DOWN_SPACE[reg]:
                d = with_down(c, t)
                cands[json.dumps(d, sort_keys=True)] = d
    cands = list(cands.values())
    if fmt == "int4":                      # every step one scale group of 128
        cands = list({json.dumps(c, sort_keys=True): c for c in
                      (dict(c, BLOCK_K=128, **({"down": dict(c["down"], BLOCK_K=128)} if "down" in c else {}))
                       for c in cands)}.values())
    t0 = time.time()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        n = sum(pool.map(_compile_worker, [(fmt, cands[i::workers]) for i in range(workers)]))
    print(f"# precompiled {len(cands)} candidates ({n} launches) in {time.time() - t0:.0f} s", flush=True)


def breakdown(fn) -> list[tuple[str, float]]:
    """Per-kernel µs of one fn() call (ROTATE layer calls), eager launches under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    per = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] = per.get(ev.name, 0.0) + ev.device_time / (3 * layer.ROTATE)
    return sorted(per.items(), key=lambda kv: -kv[1])


def tune(name, fmt, buckets, bandwidth, gen, timer, rows, tol):
    FQ.USE_TUNED = False          # a candidate must not inherit an existing table's keys (its GEMM2 override)
    FQ.PREFILL_DEQUANT = False    # and every candidate runs the in-kernel tiles it names (at run time, int4 / int8
                                  # tiles of moe_dequant.DEQUANT_MIN_M rows, int8 only from DEQUANT_MIN_ROWS routed
                                  # rows an expert, go to the dequantize + bf16 path instead)
    shape = PRESETS[name]
    dense, K = quant_gpu.layer_weights(shape, gen)
    E, D = dense.n_local, dense.w13.shape[2]
    qex = quantize_experts(dense, fmt)
    del dense
    table, timings = {}, {}
    for T in buckets:
        reg = regime(T, K, E)
        x = torch.randn(T, D, device=quant_gpu.DEVICE, generator=gen).to(quant_gpu.DTYPE)
        routes = layer.routings(T, E, K, layer.ROTATE, quant_gpu.DEVICE)
        touched = statistics.mean(float(torch.unique(ids).numel()) for _, ids in routes)
        floor_us = touched * (qex.w13.nbytes + qex.w2.nbytes) / E / bandwidth / 1e3
        w0, ids0 = routes[0]
        ref = quant_gpu.w8a8_reference(x, qex, ids0, w0) if fmt.startswith("fp8") else None
        if ref is None:
            from minimoe.experts import EXPERT_PATHS
            ref = EXPERT_PATHS["loop"](x, qex, ids0, w0)

        def attempt(cfg, stage):
            row = {"preset": name, "format": fmt, "T": T, "stage": stage, "config": cfg, "floor_us": floor_us}
            try:
                err = quant_gpu.rel(FQ.fused_moe_quant(x, qex.w13, qex.w2, ids0, w0, config=cfg), ref)
                row.update(err=err, status="PASS" if err < tol else "FAIL")
                if row["status"] == "PASS":
                    row["us"] = timer(lambda: [FQ.fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=cfg)
                                               for w, ids in routes], quant_gpu.DEVICE) * 1e3
            except Exception as e:     # out of shared memory, a refused compile
                row.update(status="ERROR", error=f"{type(e).__name__}: {e}"[:200])
            rows.append(row)
            print(line(row), flush=True)
            return row

        base = default_of(qex, T, K)
        group = qex.w13.group                                   # int4: every K step is one scale group
        space = SPACE[reg] if not group else list({json.dumps(c, sort_keys=True): c for c in
                                                   (dict(c, BLOCK_K=group) for c in SPACE[reg])}.values())
        downs = DOWN_SPACE[reg] if not group else sorted({(n, group, w, s) for n, _, w, s in DOWN_SPACE[reg]})
        default = attempt(base, "default")
        if default["status"] != "PASS":
            raise RuntimeError(f"{name} {fmt} T={T}: the default config fails its check: {default}")
        best = default
        for cfg in space[: 2 if SMOKE else None]:
            r = attempt(cfg, "gemm1")
            best = r if r.get("us", float("inf")) < best["us"] else best
        for t in downs[: 1 if SMOKE else None]:
            r = attempt(with_down({k: v for k, v in best["config"].items() if k != "down"}, t), "down")
            best = r if r.get("us", float("inf")) < best["us"] else best
        cfg = {k: v for k, v in best["config"].items() if k != "variant"}
        table[str(T)], timings[str(T)] = cfg, round(best["us"], 1)
        gain = default["us"] / best["us"]
        print(f"# best {name} {fmt} T={T}: {best['us']:.1f} us (default {default['us']:.1f}, {gain:.2f}x), floor "
              f"{floor_us:.1f} us ({100 * floor_us / best['us']:.0f}% of bandwidth): {cfg}", flush=True)
        rows.append({"preset": name, "format": fmt, "T": T, "stage": "best", "config": cfg, "us": best["us"],
                     "default_us": default["us"], "floor_us": floor_us, "status": "PASS", "err": best["err"]})
        if not SMOKE and T in (8, 64, 512):
            for kname, us in breakdown(lambda: [FQ.fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=best["config"])
                                                for w, ids in routes])[:8]:
                print(f"#   {kname[:70]:70s} {us:7.1f} us", flush=True)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return table, timings, (E, shape, K)


def line(r) -> str:
    c = r["config"]
    d = c.get("down", {})
    tile = (f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} {c['num_warps']}w{c['num_stages']}s g{c['GROUP_M']}"
            + (f" | down {d.get('BLOCK_N', c['BLOCK_N'])}x{d.get('BLOCK_K', c['BLOCK_K'])} {d.get('num_warps', c['num_warps'])}w"
               f"{d.get('num_stages', c['num_stages'])}s" if d else ""))
    head = f"{r['preset']:8s} {r['format']} T={r['T']:<5d} {r['stage']:7s} {tile:42s}"
    if r["status"] != "PASS":
        return f"{head} {r['status']} {r.get('error') or r.get('err')}"
    return f"{head} {r['us']:9.1f} us  floor {r['floor_us']:7.1f} ({100 * r['floor_us'] / r['us']:3.0f}%)  err {r['err']:.1e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--formats", nargs="+", default=["fp8"], choices=["fp8", "int8", "int4"])
    p.add_argument("--buckets", nargs="+", type=int, default=BUCKETS)
    p.add_argument("--bandwidth", type=float, help="GB/s for the floors (default: measured)")
    p.add_argument("--workers", type=int, default=12, help="parallel compile processes (0: none)")
    p.add_argument("--tol", type=float, default=2e-2)
    p.add_argument("--write", action="store_true", help="write the tables into minimoe/kernels/configs/")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if quant_gpu.DEVICE.type != "cuda" and not args.smoke:
        print("error: tuning needs a CUDA GPU (or --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    buckets = args.buckets
    if args.smoke:
        buckets, layer.ROTATE = [4, 16], 1
        PRESETS.update({n: "tiny" for n in PRESETS})
        layer.SHAPES = {**layer.SHAPES, "tiny": quant_gpu.TINY["tiny"]}
        args.presets = args.presets[:1]
    timer = layer.time_graph if quant_gpu.DEVICE.type == "cuda" else (lambda fn, dev: (fn(), 1.0)[1])
    ceil = {"bandwidth_GBps": args.bandwidth} if args.bandwidth else measure_ceilings(quant_gpu.DEVICE)
    print(f"# quantized aligned tiles | {quant_gpu.device_name()} | floor at {ceil['bandwidth_GBps']:.0f} GB/s | "
          f"{layer.ROTATE} routings a graph", flush=True)
    gen = torch.Generator(device=quant_gpu.DEVICE).manual_seed(0)
    rows, t0, written = [], time.time(), []
    for fmt in args.formats:
        if not args.smoke and args.workers > 0:
            precompile(fmt, args.workers)
        for name in args.presets:
            table, timings, (E, shape, K) = tune(name, fmt, buckets, ceil["bandwidth_GBps"], gen, timer, rows,
                                                 args.tol)
            _, D, I, _ = layer.SHAPES[shape]
            fname = moe_configs.config_file_name(E, I, D, K, FQ.TUNED_DTYPE[fmt])
            meta = {"triton_version": __import__("triton").__version__, "torch_version": torch.__version__,
                    "device": moe_configs.device_name(), "date": time.strftime("%Y-%m-%d"), "us_per_call": timings,
                    "script": "scripts/tune_fused_moe_quant.py"}
            body = json.dumps({"meta": meta, "configs": table}, indent=1) + "\n"
            with open(os.path.join(args.out, fname), "w") as f:
                f.write(body)
            if args.write and not args.smoke:
                (moe_configs.CONFIG_DIR / fname).write_text(body)
                written.append(fname)
    bad = [r for r in rows if r["status"] == "FAIL"]
    print(f"# {len(rows)} rows, {len(bad)} FAIL, {sum(r['status'] == 'ERROR' for r in rows)} ERROR, "
          f"{time.time() - t0:.0f} s; written: {written or 'none'}")
    with open(os.path.join(args.out, "tune_quant.json"), "w") as f:
        json.dump({"device": quant_gpu.device_name(), "ceilings": ceil, "rows": rows}, f, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
