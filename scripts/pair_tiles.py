"""Tiles of the packed-pair decode kernels (kernels/fused_moe_quant_pair.py), each GEMM timed alone (issue 12).

    python scripts/pair_tiles.py --out DIR                 # one H200: about 4 minutes
    python scripts/pair_tiles.py --smoke --out DIR         # tiny shapes on the CPU (interpreter)

quant_decode_sweep.py times GEMM1 and GEMM2 together, so a good GEMM1 tile hides behind a bad GEMM2 one.
Here each kernel runs alone (GEMM1: x -> h; GEMM2: a fixed h -> out), ROTATE routings back to back in one
CUDA graph (bench/layer.time_graph, median of replays), against its own floor: the stored bytes (codes and
scales) of the experts it reads over the measured bandwidth. Every tile is checked first: the full layer
(the tile with the default of the other GEMM) against the loop oracle on the same codes (rel. err < 2e-2).
Prints a table per (shape, format, T, GEMM), the best tile of each, and writes DIR/pair_tiles.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
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
from minimoe.experts import EXPERT_PATHS  # noqa: E402
from minimoe.kernels import fused_moe_quant_pair as P  # noqa: E402
from minimoe.quant import quantize_experts  # noqa: E402

KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "x_packed", "wide", "split")
CHAINS = (None,)   # --chains: words an fp16 chain (pair_quads.py); None = the kernel's default for the format
# (BLOCK_N, BLOCK_K, warps, stages, x_packed, wide, split); DOWN tiles' x_packed is ignored (h is always packed),
# the dense rows try each DOWN tile with x plain and packed. The first session-6 sweep (call 3) tried 14 GEMM1 and
# 15 GEMM2 tiles, wide ones included; these are its winners and their neighbours, now with split-K GEMM2s.
UP = {4: [(32, 256, 4, 1, 1), (16, 256, 2, 2, 1), (4, 1024, 2, 1, 1, 1), (16, 128, 1, 1, 1), (8, 512, 2, 1, 1, 1)],
      8: [(16, 512, 4, 1, 0), (16, 256, 2, 1, 0), (16, 512, 4, 1, 1), (8, 1024, 4, 1, 0)]}
DOWN = {4: [(16, 1024, 4, 3), (16, 1024, 4, 3, 0, 0, 2), (16, 1024, 4, 3, 0, 0, 4), (16, 512, 2, 3, 0, 0, 2),
            (16, 512, 2, 3, 0, 0, 4), (16, 512, 2, 3, 0, 0, 8), (8, 512, 2, 3, 0, 0, 4), (32, 512, 4, 3, 0, 0, 2),
            (32, 512, 4, 3, 0, 0, 4), (16, 256, 1, 3, 0, 0, 8),
            # wide GEMM2 tiles (a scale a quad when chained: GEMM1's wide tile won with chains, session 16)
            (4, 1024, 2, 3, 0, 1), (4, 1024, 2, 3, 0, 1, 2), (4, 1024, 2, 3, 0, 1, 4), (8, 512, 2, 3, 0, 1, 2),
            (8, 512, 2, 3, 0, 1, 4), (8, 512, 2, 3, 0, 1, 8), (16, 512, 4, 3, 0, 1, 4), (4, 512, 1, 3, 0, 1, 8),
            # more words a thread a step (the loop's fixed cost a word: 26.7 instructions at 16 x 256, 23.3 at
            # 16 x 512, 21.6 at 32 x 256 in the sm90 compile, one warp)
            (16, 512, 1, 3, 0, 0, 8), (16, 512, 1, 2, 0, 0, 8), (32, 256, 1, 3, 0, 0, 8), (32, 256, 1, 3, 0, 0, 4),
            (16, 256, 1, 2, 0, 0, 8)],
        8: [(4, 1024, 2, 3), (4, 1024, 2, 3, 0, 0, 2), (4, 1024, 2, 3, 0, 0, 4), (8, 1024, 4, 3, 0, 0, 2),
            (8, 1024, 4, 3, 0, 0, 4), (4, 512, 1, 3, 0, 0, 2), (4, 512, 1, 3, 0, 0, 4), (16, 512, 4, 3, 0, 0, 4),
            (8, 512, 2, 3, 0, 0, 8)]}
UP[0], DOWN[0] = UP[8] + [(8, 512, 2, 1, 0), (4, 1024, 2, 1, 1, 1), (8, 256, 1, 1, 0)], DOWN[8]   # fp8 ("--bits 0")
FORMAT = {4: "int4", 8: "int8", 0: "fp8"}
SHAPES = ("mixtral-8x7b", "qwen3-30b-a3b", "olmoe")


def cfg_of(t) -> dict:
    d = dict(zip(KEYS, t))
    d["x_packed"], d["wide"] = bool(d.get("x_packed", False)), bool(d.get("wide", False))
    d["split"] = int(d.get("split", 1))
    return d


def with_chain(tile: dict, chain) -> dict:
    return tile if chain is None else dict(tile, chain=chain)


def run(shape, bits, tokens, bandwidth, gen, timer, rows):
    dense, K = quant_gpu.layer_weights(shape, gen)
    E, D = dense.n_local, dense.w13.shape[2]
    qex = quantize_experts(dense, FORMAT[bits])
    del dense
    up_tiles, down_tiles = (UP[bits], DOWN[bits]) if not SMOKE else (UP[bits][:2], DOWN[bits][:2])
    for T in tokens:
        x = torch.randn(T, D, device=quant_gpu.DEVICE, generator=gen).to(quant_gpu.DTYPE)
        routes = layer.routings(T, E, K, layer.ROTATE, quant_gpu.DEVICE)
        touched = statistics.mean(float(torch.unique(ids).numel()) for _, ids in routes)
        floors = {"gate_up": touched * qex.w13.nbytes / E / bandwidth / 1e3,
                  "down": touched * qex.w2.nbytes / E / bandwidth / 1e3}
        oracle = [EXPERT_PATHS["loop"](x, qex, ids, w) for w, ids in routes]
        hs = [P.gate_up_pair(x, qex.w13, qex.w2, ids, 0) for _, ids in routes]
        outs = [x.new_empty(x.shape) for _ in routes]
        for gemm, tiles in (("gate_up", up_tiles), ("down", down_tiles)):
            for t, chain in itertools.product(tiles, CHAINS):
                tile = with_chain(cfg_of(t), chain)
                cfg = {"pair": dict(tile)} if gemm == "gate_up" else {"pair": {"down": dict(tile)}}
                row = {"shape": shape, "format": FORMAT[bits], "T": T, "gemm": gemm, "tile": tile,
                       "floor_us": floors[gemm]}
                try:
                    err = max(quant_gpu.rel(P.fused_moe_quant_pair(x, qex.w13, qex.w2, ids, w, 0, cfg), ref)
                              for (w, ids), ref in zip(routes, oracle))
                    row.update(err=err, status="PASS" if err < 2e-2 else "FAIL")
                    if row["status"] == "PASS":
                        if gemm == "gate_up":
                            fn = lambda: [P.gate_up_pair(x, qex.w13, qex.w2, ids, 0, cfg) for _, ids in routes]  # noqa: E731
                        else:
                            fn = lambda: [P.down_pair(h, qex.w2, ids, w, 0, o, cfg)  # noqa: E731
                                          for h, o, (w, ids) in zip(hs, outs, routes)]
                        row["us"] = timer(fn, quant_gpu.DEVICE) * 1e3
                except Exception as e:
                    row.update(status="ERROR", error=f"{type(e).__name__}: {e}"[:300])
                rows.append(row)
                print(line(row), flush=True)
    del qex
    # a dense decode layer (quant_pair_2d: attention projections): D x D, x plain or packed by its own kernel
    from minimoe.qweights import quantize_fp8, quantize_int4, quantize_int8
    ws = [{4: quantize_int4, 8: quantize_int8, 0: quantize_fp8}[bits](torch.randn(D, D, device=quant_gpu.DEVICE, generator=gen).to(
        quant_gpu.DTYPE) * 0.02) for _ in range(layer.ROTATE)]       # distinct weights: no L2 reuse between calls
    w = ws[0]
    x = torch.randn(1, D, device=quant_gpu.DEVICE, generator=gen).to(quant_gpu.DTYPE)
    ref = x.float() @ w.dequantize()[0].float().T
    from minimoe.kernels.fused_moe_quant_gemv import quant_gemv_2d
    row = {"shape": shape, "format": FORMAT[bits], "T": 1, "gemm": "dense", "floor_us": w.nbytes / bandwidth / 1e3,
           "tile": cfg_of((0, 0, 0, 0)), "variant": "gemv (default before)"}
    row["err"] = quant_gpu.rel(quant_gemv_2d(x, w), ref)
    row["status"] = "PASS" if row["err"] < 2e-2 else "FAIL"
    row["us"] = timer(lambda: [quant_gemv_2d(x, wi) for wi in ws], quant_gpu.DEVICE) * 1e3
    rows.append(row)
    print(line(row) + "  <- fused_moe_quant_gemv.quant_gemv_2d", flush=True)
    for t in (DOWN[bits] if not SMOKE else DOWN[bits][:1]):
        for xp, chain in itertools.product((False, True), CHAINS):
            tile = with_chain(cfg_of(t), chain)
            tile["x_packed"] = xp
            row = {"shape": shape, "format": FORMAT[bits], "T": 1, "gemm": "dense", "tile": tile,
                   "floor_us": w.nbytes / bandwidth / 1e3}
            try:
                cfg = {"pair": {"down": dict(tile)}}
                err = quant_gpu.rel(P.quant_pair_2d(x, w, cfg), ref)
                row.update(err=err, status="PASS" if err < 2e-2 else "FAIL")
                if row["status"] == "PASS":
                    row["us"] = timer(lambda: [P.quant_pair_2d(x, wi, cfg) for wi in ws], quant_gpu.DEVICE) * 1e3
            except Exception as e:
                row.update(status="ERROR", error=f"{type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(line(row), flush=True)


def line(r) -> str:
    t = r["tile"]
    head = (f"{r['shape']:14s} {r['format']} T={r['T']:<2d} {r['gemm']:7s} "
            f"{t['BLOCK_N']:>3d}x{t['BLOCK_K']:<5d}{t['num_warps']}w{t['num_stages']}s{' xp' if t['x_packed'] else '   '}"
            f"{' wide' if t['wide'] else '     '}{' s%d' % t['split'] if t['split'] > 1 else '   '}"
            f"{' c%d' % t['chain'] if 'chain' in t else ''}")
    if r["status"] != "PASS":
        return f"{head} {r['status']} {r.get('error') or r.get('err')}"
    return (f"{head} {r['us']:8.1f} us  floor {r['floor_us']:6.1f} ({100 * r['floor_us'] / r['us']:3.0f}%)  "
            f"err {r['err']:.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(layer.SHAPES))
    p.add_argument("--bits", nargs="+", type=int, default=[4, 8], choices=[4, 8, 0], help="4, 8 or 0 (fp8)")
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 2])
    p.add_argument("--bandwidth", type=float)
    p.add_argument("--chains", nargs="+", type=int, choices=[1, 4],
                   help="time every tile with each chain (words an fp16 sum runs over; default: the format's own)")
    args = p.parse_args(argv)
    global CHAINS
    if args.chains:
        CHAINS = tuple(args.chains)
    os.makedirs(args.out, exist_ok=True)
    if quant_gpu.DEVICE.type != "cuda" and not args.smoke:
        print("error: this needs a CUDA GPU (or --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    shapes, tokens = args.shapes, args.tokens
    if args.smoke:
        shapes, tokens, layer.ROTATE = shapes[:1], [1], 1
        layer.SHAPES = {**layer.SHAPES, **{n: quant_gpu.TINY["tiny"] for n in layer.SHAPES}}
    timer = layer.time_graph if quant_gpu.DEVICE.type == "cuda" else (lambda fn, dev: (fn(), 1.0)[1])
    ceil = {"bandwidth_GBps": args.bandwidth} if args.bandwidth else measure_ceilings(quant_gpu.DEVICE)
    print(f"# pair tiles | {quant_gpu.device_name()} | floor at {ceil['bandwidth_GBps']:.0f} GB/s | "
          f"{layer.ROTATE} routings a graph", flush=True)
    gen = torch.Generator(device=quant_gpu.DEVICE).manual_seed(0)
    rows, t0 = [], time.time()
    for shape, bits in itertools.product(shapes, args.bits):
        run(shape, bits, tokens, ceil["bandwidth_GBps"], gen, timer, rows)
    best = {}
    for r in rows:
        if r["status"] == "PASS" and "variant" not in r:
            k = (r["shape"], r["format"], r["T"], r["gemm"], r["tile"].get("chain", 0))
            if k not in best or r["us"] < best[k]["us"]:
                best[k] = r
    print("\n# best tile per (shape, format, T, GEMM, chain)" + ("  (smoke: tiny shapes under the interpreter, times "
                                                            "are placeholders)" if SMOKE else ""))
    for k in sorted(best):
        print(line(best[k]))
    bad = [r for r in rows if r["status"] != "PASS"]
    print(f"# {len(rows)} rows, {len(bad)} not PASS, {time.time() - t0:.0f} s")
    with open(os.path.join(args.out, "pair_tiles.json"), "w") as f:
        json.dump({"device": quant_gpu.device_name(), "ceilings": ceil, "rows": rows}, f, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
