"""GPU checks and timings of the quantized kernels on real shapes (issue 12), run by scripts/gpu/quant.sh.

    python scripts/quant_gpu.py check --out DIR       # each format's kernels against their oracles, real shapes
    python scripts/quant_gpu.py layer --out DIR       # one MoE layer, bf16 and quantized in the same run
    python scripts/quant_gpu.py sweep --out DIR       # decode GEMV tiles for the M=1 targets
    python scripts/quant_gpu.py ceilings --out DIR    # bandwidth + matmul peak, measured once for all bench runs
    python scripts/quant_gpu.py summary --out DIR     # whole-model rows (bench JSONs) against the issue's targets
    ... --smoke                                       # tiny shapes on the CPU (interpreter, fp32): this script's own test

check: the fused path of each format (decode GEMVs at T=1, aligned tensor-core GEMMs at T=64) against the
loop oracle on the same codes (dequantized; bitsandbytes' own dequantize for nf4 / bnb-int8); fp8's W8A8
GEMMs also against a PyTorch W8A8 reference (activations fake-quantized per token); the dense GEMV and
fp8 `torch._scaled_mm` against dequantize-then-matmul. Tolerances: bf16 rounding (2e-2) for codes read
exactly; 8e-2 where fp8 activations meet the W8A16 oracle. Each row PASS/FAIL; exit 1 on any FAIL.
layer: bench/layer.py's bench_shape (bf16 fused timed in a CUDA graph over 4 routings) with its quantized
twin in the same run; floors from the stored bytes and the measured bandwidth.
sweep: a handful of GEMV tilings per target; prints the best as a config to bake in.
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

from minimoe.bench import layer  # noqa: E402
from minimoe.bench.roofline import measure_ceilings  # noqa: E402
from minimoe.experts import EXPERT_PATHS, Experts  # noqa: E402
from minimoe.kernels.fused_moe_quant_small import quant_gemv  # noqa: E402
from minimoe.qweights import WEIGHT_ONLY_MAX_T, QuantWeight, quant_rows_fp8  # noqa: E402
from minimoe.quant import FORMATS, quantize_experts  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
TINY = {"tiny": (12, 64, 40, 2)}         # (E, D, I, K): I is not a multiple of the groups, codes are padded
try:
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False

# (shape, formats, token counts) checked; the timed shapes are compiled here first
CHECKS = [("qwen3-30b-a3b", ("int8", "int4", "fp8", "fp8-block", "nf4", "bnb-int8"), (1, 64)),
          ("mixtral-8x7b", ("int8", "int4", "nf4"), (1,)),
          ("olmoe", ("fp8",), (64,))]
LAYER = [("mixtral-8x7b", 1, "int4"), ("mixtral-8x7b", 1, "int8"), ("qwen3-30b-a3b", 1, "fp8"),
         ("qwen3-30b-a3b", 64, "fp8"), ("olmoe", 64, "fp8"), ("mixtral-8x7b", 1, "nf4")]
TARGET_US = {("mixtral-8x7b", 1, "int4"): 55.0, ("qwen3-30b-a3b", 1, "fp8"): 15.0, ("qwen3-30b-a3b", 64, "fp8"): 150.0}


def shape_of(name):
    return TINY["tiny"] if SMOKE else layer.SHAPES[name]


def layer_weights(name, gen):
    E, D, I, K = shape_of(name)
    w13 = torch.randn(E, 2 * I, D, device=DEVICE, generator=gen).to(DTYPE) * 0.02
    w2 = torch.randn(E, D, I, device=DEVICE, generator=gen).to(DTYPE) * 0.02
    return Experts.from_tensors(w13, w2), K


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fake_quant(x, group):
    q, s = quant_rows_fp8(x, group)
    return (q.float() * (s if group == 0 else s.repeat_interleave(group, 1)[:, :x.shape[1]])).to(x.dtype)


def w8a8_reference(x, qex, ids, w):
    """The loop oracle with fp8 activations per token (per 128-group for block scales), in fp32."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    I = qex.hidden
    for e in range(qex.n_local):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        w13, w2 = qex.w13.dequantize(torch.float32, e)[0], qex.w2.dequantize(torch.float32, e)[0]
        gate, up = (fake_quant(x[tok], qex.w13.group).float() @ w13.T).split(I, -1)
        h = fake_quant((torch.nn.functional.silu(gate) * up).to(x.dtype), qex.w2.group).float()
        out.index_add_(0, tok, (h @ w2.T) * w[tok, slot, None])
    return out


def check_layer(name, fmt, tokens, gen) -> list[dict]:
    dense, K = layer_weights(name, gen)
    qex = quantize_experts(dense, fmt)
    rows = []
    for T in tokens:
        x = torch.randn(T, dense.w13.shape[2], device=DEVICE, generator=gen).to(DTYPE)
        w, ids = layer.routings(T, dense.n_local, K, 1, DEVICE)[0]
        fused = EXPERT_PATHS["fused"](x, qex, ids, w)
        oracle = EXPERT_PATHS["loop"](x, qex, ids, w)
        w8a8 = fmt.startswith("fp8") and layer.plan(T, K, qex.n_local) != "small"
        row = {"what": f"{name} fused {fmt}", "T": T, "variant": layer.plan(T, K, qex.n_local),
               "err_vs_oracle": rel(fused, oracle), "tol": 8e-2 if w8a8 else 2e-2,
               "finite": bool(torch.isfinite(fused).all())}
        if w8a8:
            row["err_vs_w8a8"], row["tol_w8a8"] = rel(fused, w8a8_reference(x, qex, ids, w)), 2e-2
        rows.append(row)
    del qex, dense
    return rows


def check_dense(fmt, gen) -> list[dict]:
    """A dense layer (Mixtral's q/k/v shape) at decode sizes, and fp8's _scaled_mm at prefill sizes."""
    N, Kd = (48, 72) if SMOKE else (6144, 4096)
    wt = torch.randn(N, Kd, device=DEVICE, generator=gen).to(DTYPE) * 0.02
    f = FORMATS[fmt]
    qw = f.stack(wt, cls=f.dense_cls)
    qw.use_kernels = True
    rows = []
    x = torch.randn(1, Kd, device=DEVICE, generator=gen).to(DTYPE)
    ref = x.float() @ qw.dequantize(torch.float32).T
    if type(qw) is QuantWeight:
        rows.append({"what": f"dense gemv {fmt}", "T": 1, "err_vs_oracle": rel(quant_gemv(x, qw), ref), "tol": 2e-2})
    if fmt == "fp8" and DEVICE.type == "cuda":
        xs = torch.randn(80, Kd, device=DEVICE, generator=gen).to(DTYPE)
        got = qw.linear(xs)                                        # rows > WEIGHT_ONLY_MAX_T[0]: torch._scaled_mm
        want = qw.reference_linear(xs)
        rows.append({"what": "dense fp8 _scaled_mm", "T": 80, "err_vs_oracle": rel(got, want), "tol": 2e-2,
                     "rows_gt_weight_only": 80 > WEIGHT_ONLY_MAX_T[0]})
    return rows


def run_check(args) -> int:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    rows = []
    for name, fmts, tokens in CHECKS:
        for fmt in fmts:
            if fmt in ("nf4", "bnb-int8") and not HAVE_BNB:
                rows.append({"what": f"{name} fused {fmt}", "skipped": "bitsandbytes not importable"})
                continue
            t0 = time.time()
            try:
                rows += check_layer(name, fmt, tokens, gen)
            except Exception as e:                                 # a failure is a row, not the end of the run
                rows.append({"what": f"{name} fused {fmt}", "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"# checked {name} {fmt} in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    for fmt in ("int8", "int4", "fp8", "fp8-block"):
        try:
            rows += check_dense(fmt, gen)
        except Exception as e:
            rows.append({"what": f"dense {fmt}", "error": f"{type(e).__name__}: {e}"[:300]})
    bad = 0
    for r in rows:
        ok = "error" not in r and "skipped" not in r and r.get("finite", True) and r["err_vs_oracle"] < r["tol"] \
            and r.get("err_vs_w8a8", 0) < r.get("tol_w8a8", 1)
        bad += not ok and "skipped" not in r
        r["status"] = "SKIP" if "skipped" in r else ("PASS" if ok else "FAIL")
        extra = f" vs W8A8 ref {r['err_vs_w8a8']:.1e}" if "err_vs_w8a8" in r else ""
        detail = r.get("error") or r.get("skipped") or (f"T={r['T']:<3d} {r.get('variant', ''):8s} rel err "
                                                        f"{r['err_vs_oracle']:.1e} (tol {r['tol']:.0e}){extra}")
        print(f"{r['status']}  {r['what']:32s} {detail}")
    dump(args, "check.json", {"rows": rows, "device": device_name()})
    return 1 if bad else 0


def run_layer(args) -> int:
    ceilings = load_ceilings(args)
    rows = []
    for name, T, fmt in (LAYER[:2] + LAYER[3:4] if SMOKE else LAYER):
        if fmt in ("nf4", "bnb-int8") and not HAVE_BNB:
            continue
        try:
            rows += layer.bench_shape(name, T, ["fused"], ceilings, DEVICE, DTYPE, quant=fmt)
        except Exception as e:
            rows.append({"shape": name, "T": T, "path": f"fused-{fmt}", "error": f"{type(e).__name__}: {e}"[:300]})
        torch.cuda.empty_cache() if DEVICE.type == "cuda" else None
    print(f"{'shape':15s} {'T':>3s} {'path':12s} {'us':>8s} {'floor':>7s} {'%bw':>5s} {'x bf16':>7s} {'target':>7s} "
          f"{'err':>8s}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:15s} {r['T']:3d} {r['path']:12s} ERROR {r['error']}")
            continue
        fmt = r["path"].removeprefix("fused-")
        target = TARGET_US.get((r["shape"], r["T"], fmt))
        floor = f"{r['floor_us']:7.1f}" if "floor_us" in r else " " * 7
        speed = f"{r['speedup_vs_bf16']:6.2f}x" if "speedup_vs_bf16" in r else " " * 7
        verdict = "" if target is None else (" meets" if r["us"] <= target else " MISSES")
        print(f"{r['shape']:15s} {r['T']:3d} {r['path']:12s} {r['us']:8.1f} {floor} {r['pct_bw']:5.0f} {speed} "
              f"{(f'{target:.0f}' if target else '-'):>7s} {r['rel_err_vs_loop']:8.1e} {r.get('variant', '')}{verdict}")
    dump(args, "layer.json", {"rows": rows, "ceilings": ceilings, "device": device_name()})
    return 0


SWEEP = [  # (shape, T, format): candidate "small" configs, GEMM1 then GEMM2 (the first is the default)
    ("mixtral-8x7b", 1, "int4"), ("qwen3-30b-a3b", 1, "fp8"), ("mixtral-8x7b", 1, "int8")]
TILES = [(4, 4096, 16, 1, 8, 2048, 16, 3), (4, 2048, 8, 1, 8, 1024, 8, 3), (8, 1024, 4, 2, 8, 1024, 4, 3),
         (2, 2048, 4, 1, 4, 2048, 8, 2), (8, 2048, 8, 2, 16, 512, 4, 3), (4, 1024, 4, 1, 8, 512, 4, 3),
         (16, 512, 4, 2, 8, 2048, 8, 1)]


def run_sweep(args) -> int:
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    timer = layer.time_graph if DEVICE.type == "cuda" else cpu_timer
    out = []
    for name, T, fmt in SWEEP:
        dense, K = layer_weights(name, gen)
        qex = quantize_experts(dense, fmt)
        x = torch.randn(T, dense.w13.shape[2], device=DEVICE, generator=gen).to(DTYPE)
        routes = layer.routings(T, qex.n_local, K, layer.ROTATE, DEVICE)
        best = None
        for bn, bk, nw, ns, dbn, dbk, dnw, dns in (TILES[:2] if SMOKE else TILES):
            cfg = {"variant": "small", "small": {"BLOCK_N": bn, "BLOCK_K": max(bk, qex.w13.group), "num_warps": nw,
                                                 "num_stages": ns, "down": {"BLOCK_N": dbn, "BLOCK_K": dbk,
                                                                            "num_warps": dnw, "num_stages": dns}}}
            if SMOKE:
                bk = max(64, qex.w13.group)
                cfg["small"].update(BLOCK_K=bk, down=dict(cfg["small"]["down"], BLOCK_K=bk))
            try:
                from minimoe.kernels.fused_moe_quant import fused_moe_quant
                call = lambda: [fused_moe_quant(x, qex.w13, qex.w2, ids, w, config=cfg) for w, ids in routes]  # noqa
                us = timer(call, DEVICE) * 1e3
            except Exception as e:
                print(f"# {name} {fmt} {cfg['small']}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
                continue
            out.append({"shape": name, "T": T, "format": fmt, "config": cfg["small"], "us": us})
            best = us if best is None else min(best, us)
            print(f"{name:15s} {fmt:5s} T={T} {us:8.1f} us  {cfg['small']}", flush=True)
        print(f"# best {name} {fmt}: {best:.1f} us" if best else f"# {name} {fmt}: nothing ran")
        del qex, dense
    dump(args, "sweep.json", {"rows": out, "device": device_name()})
    return 0


def cpu_timer(fn, device) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3 / layer.ROTATE


def load_ceilings(args) -> dict:
    path = os.path.join(args.out, "ceilings.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return measure_ceilings(DEVICE)


def run_ceilings(args) -> int:
    c = measure_ceilings(DEVICE)
    dump(args, "ceilings.json", c)
    print(json.dumps(c))
    return 0


BENCH_ROWS = [  # (bench JSON written by quant.sh, its --model, what the issue asks of it)
    ("olmoe_bs64_bf16", "olmoe", None), ("olmoe_bs64_fp8", "olmoe", ">= 1.6x bf16 out tok/s"),
    ("mixtral_bs1_bf16", "mixtral", "6.97 ms today"), ("mixtral_bs1_int8", "mixtral", "<= 3.8 ms"),
    ("mixtral_bs1_int4", "mixtral", "<= 2.3 ms"), ("mixtral_bs1_fp8", "mixtral", "weights <= 48 GB"),
    ("mixtral_bs1_nf4", "mixtral", "peak < 30 GB")]


def run_summary(args) -> int:
    """The issue's whole-model figures from the bench JSONs, each beside its bf16 row and its target."""
    from minimoe.bench.roofline import count_params
    from minimoe.loader import read_config
    rows, loaded = [], {}
    for stem, model, target in BENCH_ROWS:
        label = stem
        for suffix in ("", "_eager"):
            path = os.path.join(args.out, f"{stem}{suffix}.json")
            if os.path.exists(path):
                with open(path) as f:
                    loaded[stem] = json.load(f)
                label += " (eager)" if suffix else ""
                break
        if stem not in loaded:
            rows.append(f"{label:24s} missing (the run failed or was skipped: see its .txt)")
            continue
        js = loaded[stem]
        r, s = js["results"][0], js["settings"]
        m = r["metrics"]
        cfg, _ = read_config(f"{model}-tiny" if args.smoke else model)      # smoke: the tiny cards ran
        fmt = s["quant"]
        if fmt != "none":
            cfg.extra["weight_format"] = {"quant": fmt, "lm_head": s["quant_lm_head"]}
        pc = count_params(cfg)
        weights_gb = pc.weight_bytes(2) / 1e9
        ratio = ""
        base = loaded.get(stem.rsplit("_", 1)[0] + "_bf16")
        if base is not None and base is not js:
            b = base["results"][0]["metrics"]
            ratio = (f"  {m['output_tok_s'] / b['output_tok_s']:.2f}x bf16 tok/s, "
                     f"ITL {b['itl_median_ms'] / m['itl_median_ms']:.2f}x")
        rows.append(f"{label:24s} ITL p50 {m['itl_median_ms']:7.3f} ms  out {m['output_tok_s']:9.1f} tok/s  "
                    f"decode {r['roofline']['decode_pct_of_floor'] or 0:4.0f}% of floor  weights {weights_gb:6.1f} GB  "
                    f"peak {r['peak_mem_GiB'] or 0:6.1f} GiB{ratio}  [{target or '-'}]")
    print("\n".join(rows))
    dump(args, "summary.json", {"rows": rows})
    return 0


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke)"


def dump(args, name, obj) -> None:
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(obj, f, default=str)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["check", "layer", "sweep", "ceilings", "summary"])
    p.add_argument("--out", required=True, help="directory for the JSON results")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (interpreter)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if DEVICE.type != "cuda" and not args.smoke and args.phase != "summary":
        print("error: this needs a CUDA GPU (or --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    if args.smoke:
        layer.SHAPES = {**layer.SHAPES, **{n: TINY["tiny"] for n in layer.SHAPES}}
        if DEVICE.type != "cuda":
            layer.time_graph = cpu_timer
    phases = {"check": run_check, "layer": run_layer, "sweep": run_sweep, "ceilings": run_ceilings,
              "summary": run_summary}
    return phases[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
