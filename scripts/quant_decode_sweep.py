"""Decode-sized MoE layers on quantized weights: each decode kernel and a few tiles, checked, then timed (issue 12).

    python scripts/quant_decode_sweep.py --out DIR                 # one H200: about 4 minutes
    python scripts/quant_decode_sweep.py --smoke --out DIR         # tiny shapes on the CPU (interpreter): its own test
    ... --shapes mixtral-8x7b --formats int4 --tokens 1            # a subset

For each shape (Mixtral-8x7B, Qwen3-30B-A3B, OLMoE-1B-7B), format (fp8, int8, int4) and T in {1, 2, 4, 8}:
  1. check every candidate (variant + tiles) against the loop oracle on the same codes (dequantize, then matmul),
     relative error < 2e-2 (bf16 rounding; 8e-2 for the aligned fp8 path, whose activations are fp8 too);
     a FAIL is reported and never timed;
  2. time it: ROTATE routings back to back in one CUDA graph (bench/layer.time_graph, median of replays), beside
     the bf16 fused kernel of the same shape timed in the same process; floor = the stored bytes (codes, scales,
     zero points) of the experts the routings touch, over the measured read bandwidth (or --bandwidth GB/s).
Candidates: today's default ("small", fused_moe_quant_small.py), the 2-D GEMVs ("gemv", fused_moe_quant_gemv.py)
in a handful of tiles, and the aligned tensor-core path with BLOCK_M = 16 in two tiles. Prints a table, the best
candidate per (shape, format, T) and a dict to paste; writes DIR/quant_decode_sweep.json. A time under the floor
is flagged as a measurement bug. Triton compiles dominate the run time: the tiles are few, on purpose.
"""
from __future__ import annotations

import argparse
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

import quant_gpu  # noqa: E402  (layer_weights, rel, cpu_timer, TINY: one definition of each)
from minimoe.bench import layer  # noqa: E402
from minimoe.bench.roofline import measure_ceilings  # noqa: E402
from minimoe.experts import EXPERT_PATHS  # noqa: E402
from minimoe.kernels.fused_moe_quant import fused_moe_quant  # noqa: E402
from minimoe.quant import quantize_experts  # noqa: E402

SHAPES = ("mixtral-8x7b", "qwen3-30b-a3b", "olmoe")
FORMATS = ("fp8", "int8", "int4")
TOKENS = (1, 2, 4, 8)
# gemv tiles: (GEMM1 BLOCK_N, BLOCK_K, warps, stages), (GEMM2 ...). GEMM1 tiles 2·BLOCK_N rows (gate and up);
# a thread's x loads serve rows / (rows a warp covers · warps) rows, so the narrow tiles use few warps
GEMV_TILES = {
    "int4": [((32, 512, 2, 1), (16, 512, 1, 3)), ((16, 256, 1, 1), (8, 256, 1, 3)), ((64, 512, 2, 1), (16, 1024, 2, 2)),
             ((32, 1024, 2, 2), (32, 256, 2, 3))],
    "int8": [((16, 512, 4, 1), (16, 256, 2, 3)), ((8, 1024, 4, 1), (8, 512, 4, 3)), ((32, 256, 4, 1), (16, 128, 1, 3)),
             ((16, 1024, 8, 2), (32, 512, 4, 2))],
    "fp8": [((8, 512, 4, 1), (8, 512, 4, 3)), ((4, 1024, 4, 1), (8, 256, 2, 3)), ((16, 256, 4, 1), (16, 512, 4, 2)),
            ((8, 1024, 8, 2), (4, 1024, 4, 3))],
}
# pair tiles (fused_moe_quant_pair.py, int4 / int8 only), as GEMV_TILES; the last adds "x_packed" (x packed into
# fp16 pairs by its own small kernel instead of inside GEMM1)
PAIR_TILES = {
    "int4": [((16, 256, 2, 1), (16, 256, 2, 3)), ((32, 512, 4, 1), (32, 256, 4, 3)), ((8, 256, 1, 1), (8, 256, 1, 3)),
             ((16, 1024, 4, 2), (16, 512, 2, 2)), ((64, 256, 4, 1), (32, 512, 2, 3)),
             ((16, 256, 2, 1, True), (16, 256, 2, 3))],
    "int8": [((16, 512, 4, 1), (16, 512, 4, 3)), ((8, 1024, 4, 1), (8, 512, 4, 3)), ((32, 256, 4, 1), (16, 256, 2, 3)),
             ((16, 256, 2, 2), (16, 1024, 4, 2)), ((32, 512, 8, 1), (32, 512, 4, 3)),
             ((16, 512, 4, 1, True), (16, 512, 4, 3))],
}
ALIGNED_TILES = [(64, 4, 4), (128, 4, 3)]          # BLOCK_N, warps, stages at BLOCK_M = 16


def _tiles(t: tuple) -> dict:
    return dict(zip(("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "x_packed"), t))


def candidate_configs(w13, T: int) -> list[dict]:
    """The configs timed for a weight format (w13: its stack), first today's default."""
    fmt = "fp8" if w13.bits == 0 else f"int{w13.bits}"
    group = w13.group
    out = [{"variant": "small"}]
    tiles = GEMV_TILES[fmt]
    if SMOKE:      # the interpreter: small steps, one tile of each kind
        tiles = [((8, max(64, group), 4, 1), (8, max(64, group), 4, 1))]
    for g1, g2 in tiles:
        g1, g2 = _tiles(g1), _tiles(g2)
        g1["BLOCK_K"], g2["BLOCK_K"] = max(g1["BLOCK_K"], group), max(g2["BLOCK_K"], group)
        out.append({"variant": "gemv", "gemv": dict(g1, down=g2)})
    pair = PAIR_TILES.get(fmt, []) if w13.codes == 0 else []
    if SMOKE:
        pair = [((8, max(64, group), 4, 1), (8, max(64, group), 4, 1)), ((8, max(64, group), 4, 1, True), (8, 64, 4, 1))][:len(pair)]
    for g1, g2 in pair:
        g1, g2 = _tiles(g1), _tiles(g2)
        g1["BLOCK_K"], g2["BLOCK_K"] = max(g1["BLOCK_K"], group), max(g2["BLOCK_K"], group)
        out.append({"variant": "pair", "pair": dict(g1, down=g2)})
    for bn, warps, stages in (ALIGNED_TILES[:1] if SMOKE else ALIGNED_TILES):
        out.append({"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": group or 128, "GROUP_M": 1,
                    "num_warps": warps, "num_stages": stages, "down": {"BLOCK_N": bn, "num_stages": stages}})
    return out


def label(cfg: dict) -> str:
    if cfg["variant"] in ("gemv", "pair"):
        a, b = cfg[cfg["variant"]], cfg[cfg["variant"]]["down"]
        return (cfg["variant"] + " {BLOCK_N}x{BLOCK_K}/{num_warps}w{num_stages}s".format(**a)
                + (" xp" if a.get("x_packed") else "") + " | {BLOCK_N}x{BLOCK_K}/{num_warps}w{num_stages}s".format(**b))
    if cfg["variant"] == "aligned":
        return "aligned 16x{BLOCK_N}x{BLOCK_K}/{num_warps}w{num_stages}s".format(**cfg)
    return "small (default)"


def sweep_shape(name: str, fmts, tokens, bandwidth: float, gen, variants=("small", "gemv", "pair", "aligned")) -> list[dict]:
    dense, K = quant_gpu.layer_weights(name, gen)
    E, D = dense.n_local, dense.w13.shape[2]
    timer = layer.time_graph if quant_gpu.DEVICE.type == "cuda" else once_ms
    rows = []
    for T in tokens:
        x = torch.randn(T, D, device=quant_gpu.DEVICE, generator=gen).to(quant_gpu.DTYPE)
        routes = layer.routings(T, E, K, layer.ROTATE, quant_gpu.DEVICE)
        touched = statistics.mean(float(torch.unique(ids).numel()) for _, ids in routes)
        bf16_us = timer(lambda: [EXPERT_PATHS["fused"](x, dense, ids, w) for w, ids in routes], quant_gpu.DEVICE) * 1e3
        for fmt in fmts:
            qex = quantize_experts(dense, fmt)
            floor = (touched * (qex.w13.nbytes + qex.w2.nbytes) / E + 2 * x.numel() * x.element_size()) / bandwidth / 1e3
            oracle = [EXPERT_PATHS["loop"](x, qex, ids, w) for w, ids in routes]
            where = {"shape": name, "format": fmt, "T": T, "bf16_us": bf16_us, "floor_us": floor}
            for cfg in [c for c in candidate_configs(qex.w13, T) if c["variant"] in variants]:
                rows.append(dict(where, **run_candidate(x, qex, routes, oracle, cfg, timer, fmt)))
                print(row_line(rows[-1]), flush=True)
            del qex
    del dense
    return rows


def run_candidate(x, qex, routes, oracle, cfg, timer, fmt) -> dict:
    row = {"config": cfg, "label": label(cfg)}
    tol = 8e-2 if fmt == "fp8" and cfg["variant"] == "aligned" else 2e-2
    try:
        err = max(quant_gpu.rel(fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=cfg), ref)
                  for (w, ids), ref in zip(routes, oracle))
    except Exception as e:                                   # a failure is a row, not the end of the run
        return dict(row, status="ERROR", error=f"{type(e).__name__}: {e}"[:300])
    row.update(err=err, tol=tol, status="PASS" if err < tol else "FAIL")
    if row["status"] == "PASS":
        row["us"] = timer(lambda: [fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=cfg) for w, ids in routes],
                          quant_gpu.DEVICE) * 1e3
    return row


def once_ms(fn, device) -> float:
    """The smoke run's timer: one interpreted call, so the table has numbers (meaningless ones)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3 / layer.ROTATE


def row_line(r: dict) -> str:
    head = f"{r['shape']:14s} {r['format']:5s} T={r['T']:<2d} {r['label']:42s}"
    if r["status"] != "PASS":
        why = r.get("error") or "rel err {:.1e} (tol {:.0e})".format(r["err"], r["tol"])
        return f"{head} {r['status']} {why}"
    flag = "  BELOW FLOOR: measurement bug" if r["us"] < r["floor_us"] else ""
    return (f"{head} PASS {r['us']:8.1f} us  floor {r['floor_us']:6.1f} ({100 * r['floor_us'] / r['us']:3.0f}%)  "
            f"{r['bf16_us'] / r['us']:5.2f}x bf16 ({r['bf16_us']:.1f})  err {r['err']:.1e}{flag}")


def best_rows(rows: list[dict]) -> dict:
    best = {}
    for r in rows:
        if r["status"] == "PASS":
            key = (r["shape"], r["format"], r["T"])
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = r
    return best


def report(rows: list[dict]) -> dict:
    best = best_rows(rows)
    print(f"\n{'shape':14s} {'fmt':5s} {'T':>2s} {'default us':>10s} {'best us':>8s} {'floor':>6s} {'%floor':>6s} "
          f"{'x bf16':>6s}  best")
    paste = {}
    for (shape, fmt, T), r in sorted(best.items()):
        default = next((d for d in rows if (d["shape"], d["format"], d["T"]) == (shape, fmt, T)
                        and d["config"]["variant"] == "small" and d["status"] == "PASS"), None)
        d_us = f"{default['us']:10.1f}" if default else f"{'-':>10s}"
        print(f"{shape:14s} {fmt:5s} {T:2d} {d_us} {r['us']:8.1f} {r['floor_us']:6.1f} "
              f"{100 * r['floor_us'] / r['us']:5.0f}% {r['bf16_us'] / r['us']:5.2f}x  {r['label']}")
        paste.setdefault(fmt, {}).setdefault(shape, {})[T] = r["config"]
    print("\n# best config per format, shape and T (paste as the decode configs; a variant that wins everywhere "
          "is one flip of fused_moe_quant_small.DECODE_VARIANT):")
    print("QUANT_DECODE_CONFIGS = " + json.dumps(paste, indent=1, sort_keys=True))
    return paste


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for quant_decode_sweep.json")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (interpreter)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(layer.SHAPES))
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    p.add_argument("--variants", nargs="+", default=["small", "gemv", "pair", "aligned"],
                   choices=["small", "gemv", "pair", "aligned"], help="which candidates to time")
    p.add_argument("--bandwidth", type=float, help="GB/s for the floor (default: measured here)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if quant_gpu.DEVICE.type != "cuda" and not args.smoke:
        print("error: this needs a CUDA GPU (or --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    shapes, tokens = args.shapes, args.tokens
    if args.smoke:
        shapes, tokens, layer.ROTATE = shapes[:1], [1, 3], 1
        layer.SHAPES = {**layer.SHAPES, **{n: quant_gpu.TINY["tiny"] for n in layer.SHAPES}}
    t0 = time.time()
    ceilings = {"bandwidth_GBps": args.bandwidth} if args.bandwidth else measure_ceilings(quant_gpu.DEVICE)
    print(f"# quant decode sweep | {quant_gpu.device_name()} | floor at {ceilings['bandwidth_GBps']:.0f} GB/s | "
          f"activations {quant_gpu.DTYPE} | {layer.ROTATE} routings a graph, softmax-top-k of random logits", flush=True)
    gen = torch.Generator(device=quant_gpu.DEVICE).manual_seed(0)
    rows = []
    for name in shapes:
        rows += sweep_shape(name, args.formats, tokens, ceilings["bandwidth_GBps"], gen, args.variants)
        torch.cuda.empty_cache() if quant_gpu.DEVICE.type == "cuda" else None
    paste = report(rows)
    bad = [r for r in rows if r["status"] != "PASS"]
    print(f"# {len(rows)} rows, {len(bad)} not PASS, {time.time() - t0:.0f} s")
    with open(os.path.join(args.out, "quant_decode_sweep.json"), "w") as f:
        json.dump({"device": quant_gpu.device_name(), "ceilings": ceilings, "rows": rows, "best": paste}, f, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
