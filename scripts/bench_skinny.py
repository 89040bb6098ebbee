"""Dense linears at batch 3-64: cuBLAS (F.linear) against kernels/skinny_gemm.py, its default and a tile sweep.

    python scripts/bench_skinny.py --out DIR [--tokens 4 16 64]     # one H200: ~2 minutes
    python scripts/bench_skinny.py --out DIR --formats fp8 int4     # quantized weights: skinny_gemm_quant against the
                                                                    # path before it (W8A8 _scaled_mm, dequantize + cuBLAS)
    python scripts/bench_skinny.py --smoke --out DIR                # tiny shapes on the CPU (interpreter)

Shapes are the dense layers of the engine's models at decode (attention projections, shared experts, routers;
LM heads are left to cuBLAS). Each call is captured COPIES-fold in one CUDA graph over distinct weight copies
(so no call finds its weight in the 50 MB L2) and timed by replay (bench/roofline.graph_us, median). Every
skinny config is checked against F.linear in float64 first (rel. err < 1e-2 for 16-bit weights, 1e-5 fp32).
Floors: weight bytes over the measured bandwidth. Prints a table per (shape, T) and the best config of each,
and writes DIR/bench_skinny.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from minimoe import qweights as Q  # noqa: E402
from minimoe import quant as QF  # noqa: E402
from minimoe.bench.roofline import graph_us, measure_ceilings  # noqa: E402
from minimoe.kernels import skinny_gemm as S  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BF16 = torch.bfloat16 if DEV.type == "cuda" else torch.float32
# name: (N, K, weight dtype, bias)
SHAPES = {
    "olmoe.qkv": (6144, 2048, BF16, False), "olmoe.o": (2048, 2048, BF16, False),
    "olmoe.router": (64, 2048, BF16, False),
    "qwen3.qkv": (5120, 2048, BF16, False), "qwen3.o": (2048, 4096, BF16, False), "qwen3.router": (128, 2048, BF16, False),
    "mixtral.qkv": (6144, 4096, BF16, False), "mixtral.o": (4096, 4096, BF16, False),
    "dsv2.q": (3072, 2048, BF16, False), "dsv2.kv_a": (576, 2048, BF16, False), "dsv2.o": (2048, 2048, BF16, False),
    "dsv2.shared_up": (5632, 2048, BF16, False), "dsv2.shared_down": (2048, 2816, BF16, False),
    "dsv2.router": (64, 2048, torch.float32, False),
    "qwen15.qkv": (6144, 2048, BF16, True), "qwen15.shared_up": (11264, 2048, BF16, False),
    "qwen15.shared_down": (2048, 5632, BF16, False),
}
SWEEP = [  # (BLOCK_N, BLOCK_K, SPLIT or 0 = default, warps, stages)
    (64, 128, 0, 4, 3), (64, 128, 0, 4, 4), (32, 128, 0, 4, 3), (64, 256, 0, 4, 3), (128, 128, 0, 4, 3),
    (128, 128, 0, 8, 3), (64, 64, 0, 4, 4), (32, 256, 0, 4, 3), (64, 128, 1, 4, 3), (16, 256, 0, 4, 3),
]


def sweep_cfg(t, T, N, K, dtype) -> dict:
    bn, bk, split, warps, stages = t
    if dtype == torch.float32:
        bk = min(bk, 64)
    cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
    if split == 0:
        n_blocks, n_k = -(-N // bn), -(-K // bk)
        split = max(1, min(n_k, round(S.TARGET_PROGRAMS / n_blocks), 16))
    cfg["SPLIT"] = split
    return cfg


def measure(entry, call, ws, ref, tol, timer) -> int:
    """Check call(ws[0]) against ref (float64), then time call over every weight copy; fills entry, returns 1 on FAIL."""
    try:
        entry["err"] = ((call(ws[0]).double() - ref).norm() / ref.norm()).item()
        entry["status"] = "PASS" if entry["err"] <= tol else "FAIL"
        if entry["status"] == "PASS":
            entry["us"] = timer([lambda w=w: call(w) for w in ws])
    except Exception as e:                     # out of shared memory, a refused compile
        entry.update(status="ERROR", error=f"{type(e).__name__}: {e}"[:200])
    return int(entry["status"] == "FAIL")


def finish(row, head, base_name, base, floor) -> dict:
    """The row's best and default configs, printed beside the baseline and the floor."""
    ok = [c for c in row["configs"] if c["status"] == "PASS"]
    best = min(ok, key=lambda c: c["us"]) if ok else None
    dflt = row["configs"][0]
    row["best"], row["default_us"] = best, dflt.get("us")
    d_us = dflt.get("us", float("nan"))
    print(f"{head} floor {floor:6.1f} us | {base_name} {base:6.1f} ({100 * floor / base:3.0f}%) | "
          f"skinny default {d_us:6.1f} ({100 * floor / d_us:3.0f}%) {base / d_us:4.2f}x | best "
          f"{best['us'] if best else float('nan'):6.1f} {base / best['us'] if best else 0:4.2f}x "
          f"{best['config'] if best else dflt.get('error')}", flush=True)
    return row


def run_quant(fmt, shapes, tokens, sweep, bw, gen, timer, copies_for) -> tuple[list, int]:
    """fp8 / int8 / int4 dense layers: the path before (QuantWeight.linear with SKINNY_QUANT off: quantize x +
    _scaled_mm for fp8, dequantize + cuBLAS for the integers) against skinny_gemm_quant (default, sweep)."""
    rows, bad = [], 0
    for name, (N, K, wdt, has_bias) in shapes.items():
        if name.endswith("router"):
            continue                                   # routers stay in full precision
        ws = [QF.FORMATS[fmt].stack(torch.randn(N, K, device=DEV, generator=gen).to(wdt) / K ** 0.5, cls=Q.QuantWeight)
              for _ in range(copies_for(N * K * (0.5 if fmt == "int4" else 1)))]
        for w in ws:
            w.use_kernels = DEV.type == "cuda"
        nbytes = ws[0].nbytes
        bias = torch.randn(N, device=DEV, generator=gen).to(wdt) if has_bias else None
        for T in tokens:
            x = torch.randn(T, K, device=DEV, generator=gen).to(wdt)
            ref = x.double() @ ws[0].dequantize(torch.float32).double().T + (0 if bias is None else bias.double())
            floor = nbytes / bw / 1e3
            Q.SKINNY_QUANT = False
            try:
                base = timer([lambda w=w: w.linear(x, bias) for w in ws])
            finally:
                Q.SKINNY_QUANT = True
            row = {"shape": name, "format": fmt, "N": N, "K": K, "T": T, "floor_us": floor, "before_us": base,
                   "configs": []}
            for cfg in [None] + [sweep_cfg(t, T, N, K, wdt) for t in sweep]:
                if cfg is not None and ws[0].group:
                    cfg = dict(cfg, BLOCK_K=ws[0].group)
                entry = {"config": cfg or S.default_config(T, N, K, wdt, bits=ws[0].bits, group=ws[0].group),
                         "default": cfg is None}
                bad += measure(entry, lambda w, cfg=cfg: S.skinny_gemm_quant(x, w, bias, config=cfg), ws, ref, 1e-2, timer)
                row["configs"].append(entry)
            rows.append(finish(row, f"{name:20s} {fmt:4s} T={T:<3d}", "before", base, floor))
    return rows, bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--tokens", nargs="+", type=int, default=[4, 16, 64])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--formats", nargs="+", default=["none"], choices=["none", "fp8", "fp8-block", "int8", "int4"],
                   help="none: bf16 weights against cuBLAS; a format: its quantized dense layers")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if DEV.type != "cuda" and not args.smoke:
        print("error: this needs a CUDA GPU (or --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    shapes = {n: SHAPES[n] for n in args.shapes}
    tokens, sweep = args.tokens, SWEEP
    if args.smoke:
        shapes = {"tiny": (40, 256, BF16, True), "tiny.small": (24, 128, BF16, False)}
        tokens, sweep = [3], SWEEP[:2]
    timer = (lambda calls: graph_us(calls, 10)) if DEV.type == "cuda" else (lambda calls: ([c() for c in calls], 1.0)[1])
    bw = measure_ceilings(DEV)["bandwidth_GBps"] if DEV.type == "cuda" else 1.0
    print(f"# skinny GEMM vs cuBLAS | {torch.cuda.get_device_name() if DEV.type == 'cuda' else 'cpu (smoke)'} | "
          f"floor at {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device=DEV).manual_seed(0)
    rows, t0, bad = [], time.time(), 0
    copies_for = (lambda nbytes: 1) if args.smoke else (lambda nbytes: max(2, min(32, -(-150_000_000 // int(nbytes)))))
    for fmt in args.formats:
        if fmt != "none":
            qrows, qbad = run_quant(fmt, shapes, tokens, sweep, bw, gen, timer, copies_for)
            rows, bad = rows + qrows, bad + qbad
    for name, (N, K, wdt, has_bias) in (shapes.items() if "none" in args.formats else []):
        nbytes = N * K * wdt.itemsize
        copies = 1 if args.smoke else max(2, min(32, -(-150_000_000 // nbytes)))
        ws = [torch.randn(N, K, device=DEV, generator=gen).to(wdt) / K ** 0.5 for _ in range(copies)]
        bias = torch.randn(N, device=DEV, generator=gen).to(wdt) if has_bias else None
        xdt = BF16 if wdt == torch.float32 and DEV.type == "cuda" else wdt
        for T in tokens:
            x = torch.randn(T, K, device=DEV, generator=gen).to(xdt)
            ref = torch.nn.functional.linear(x.double(), ws[0].double(), None if bias is None else bias.double())
            floor = nbytes / bw / 1e3
            base = timer([lambda w=w: torch.nn.functional.linear(x.to(wdt), w, bias) for w in ws])
            row = {"shape": name, "N": N, "K": K, "T": T, "dtype": str(wdt), "floor_us": floor, "cublas_us": base,
                   "configs": []}
            cands = [None] + [sweep_cfg(t, T, N, K, wdt) for t in sweep]
            for cfg in cands:
                entry = {"config": cfg or S.default_config(T, N, K, wdt), "default": cfg is None}
                tol = 1e-5 if (wdt == torch.float32 and xdt == torch.float32) else 1e-2
                bad += measure(entry, lambda w, cfg=cfg: S.skinny_gemm(x, w, bias, config=cfg), ws, ref, tol, timer)
                row["configs"].append(entry)
            rows.append(finish(row, f"{name:20s} T={T:<3d}", "cuBLAS", base, floor))
    print(f"# {len(rows)} rows, {bad} FAIL, {time.time() - t0:.0f} s")
    with open(os.path.join(args.out, "bench_skinny.json"), "w") as f:
        json.dump({"bandwidth_GBps": bw, "rows": rows}, f, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
