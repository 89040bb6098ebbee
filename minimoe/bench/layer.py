"""The layer benchmark (`python bench.py --layer`): one MoE expert layer, every path, real shapes.

For each model shape and token count, random bf16 weights and activations, a softmax-top-k routing
of random logits, then every expert path (`experts.EXPERT_PATHS`) is checked against `loop` and
timed. grouped and fused are captured in a CUDA graph that runs the layer on ROTATE different routings
back to back (so a replay cannot find the previous call's experts in L2) and timed by graph replay
with CUDA events, median of REPEATS; loop cannot be captured (it syncs per expert) and is timed eager.
Reported beside each time: TB/s over the bytes that must move (weights of the experts the routing
touched + activations in and out) against the measured copy bandwidth, and TFLOP/s over
2*T*K*3*D*I against the measured matmul peak. With `--quant FORMAT` each shape is also quantized
(quant.py) and its fused kernels timed in the same run: a `fused-FORMAT` row whose bytes are the
stored codes + scales of the touched experts, with its floor, its speedup over the bf16 fused row
and its error against its own loop oracle and against bf16.
"""
from __future__ import annotations

import json
import statistics
import sys

import torch

from ..cli import ArgumentParser, check_output_path, out_path
from ..runtime import UsageError
from ..experts import EXPERT_PATHS, Experts
from ..quant import FORMATS, quantize_experts
try:
    from ..kernels.fused_moe import plan
except ImportError:     # no Triton: the layer benchmark refuses to run (it needs a GPU)
    plan = None
from .roofline import measure_ceilings, median_ms

SHAPES = {   # name: (E, D, I, K) from the model cards
    "olmoe": (64, 2048, 1024, 8),
    "qwen3-30b-a3b": (128, 2048, 768, 8),
    "mixtral-8x7b": (8, 4096, 14336, 2),
    "qwen1.5-moe-a2.7b": (60, 2048, 1408, 4),
    "deepseek-v2-lite": (64, 2048, 1408, 6),
}
TOKENS = (1, 8, 64, 512, 4096, 16384)
ROTATE, REPEATS = 4, 10


def routings(T, E, K, n, device):
    """n independent softmax-top-k routings of random logits: [(weights [T, K] fp32, ids [T, K])]."""
    out = []
    for _ in range(n):
        w, ids = torch.randn(T, E, device=device).softmax(-1).topk(K, dim=-1)
        out.append((w, ids))
    return out


def time_graph(fn, device) -> float:
    """Median ms of one fn() call, fn captured ROTATE-fold in one graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(REPEATS + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[2:]) / ROTATE


def time_eager(fn, device) -> float:
    """Median ms of one fn() call run eagerly (fn runs ROTATE layer calls)."""
    fn()
    return median_ms(fn, 3, device) / ROTATE


def bench_shape(name, T, paths, ceilings, device, dtype=torch.bfloat16, quant=None) -> list[dict]:
    E, D, I, K = SHAPES[name]
    gen = torch.Generator(device=device).manual_seed(T)
    w13 = torch.randn(E, 2 * I, D, device=device, dtype=dtype, generator=gen) * 0.02
    w2 = torch.randn(E, D, I, device=device, dtype=dtype, generator=gen) * 0.02
    x = torch.randn(T, D, device=device, dtype=dtype, generator=gen)
    routes = routings(T, E, K, ROTATE, device)
    touched = statistics.mean(float(torch.unique(ids).numel()) for _, ids in routes)
    nbytes = touched * 3 * D * I * dtype.itemsize + 2 * T * D * dtype.itemsize
    flops = 2.0 * T * K * 3 * D * I
    experts = Experts.from_tensors(w13, w2)
    ref = [EXPERT_PATHS["loop"](x, experts, ids, w) for w, ids in routes]
    rows = []
    for path in paths:
        fn_path = EXPERT_PATHS[path]
        outs = [fn_path(x, experts, ids, w) for w, ids in routes]
        err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(outs, ref))

        def run(fn_path=fn_path):
            for w, ids in routes:
                fn_path(x, experts, ids, w)
        ms = time_eager(run, device) if path == "loop" else time_graph(run, device)
        tbs, tflops = nbytes / ms / 1e9, flops / ms / 1e9
        rows.append({"shape": name, "E": E, "D": D, "I": I, "K": K, "T": T, "path": path, "us": ms * 1e3,
                     "TB_s": tbs, "pct_bw": 100 * tbs * 1e3 / ceilings["bandwidth_GBps"],
                     "TFLOP_s": tflops, "pct_peak": 100 * tflops / ceilings["matmul_TFLOPs"],
                     "experts_touched": touched, "rel_err_vs_loop": err})
        if path == "fused":
            rows[-1]["variant"] = plan(T, K, E)
    if quant:          # the same layer quantized, its fused kernels timed in this run beside bf16
        bf16 = next((r for r in rows if r["path"] == "fused"), {})
        where = {"shape": name, "E": E, "D": D, "I": I, "K": K, "T": T}
        rows.append(bench_quant(quant, where, bf16, experts, x, routes, touched, flops, ceilings, device))
    del w13, w2, experts
    torch.cuda.empty_cache()
    return rows


def bench_quant(quant, where: dict, bf16_row: dict, experts: Experts, x, routes, touched, flops, ceilings,
                device) -> dict:
    """One row for the quantized twin of `experts` on the fused path: error against its own loop oracle
    (the same codes, dequantized) and against bf16's output, bytes counted from its stored tensors."""
    qex = quantize_experts(experts, quant)
    ref = [EXPERT_PATHS["loop"](x, qex, ids, w) for w, ids in routes]
    outs = [EXPERT_PATHS["fused"](x, qex, ids, w) for w, ids in routes]
    dense = [EXPERT_PATHS["loop"](x, experts, ids, w) for w, ids in routes]
    err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(outs, ref))
    err_bf16 = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(outs, dense))

    def run():
        for w, ids in routes:
            EXPERT_PATHS["fused"](x, qex, ids, w)
    ms = time_graph(run, device)
    per_expert = (qex.w13.nbytes + qex.w2.nbytes) / qex.n_local
    nbytes = touched * per_expert + 2 * x.numel() * x.element_size()
    tbs, tflops = nbytes / ms / 1e9, flops / ms / 1e9
    row = {**where, "path": f"fused-{quant}",
           "us": ms * 1e3, "TB_s": tbs, "pct_bw": 100 * tbs * 1e3 / ceilings["bandwidth_GBps"], "TFLOP_s": tflops,
           "pct_peak": 100 * tflops / ceilings["matmul_TFLOPs"], "experts_touched": touched,
           "rel_err_vs_loop": err, "rel_err_vs_bf16": err_bf16, "floor_us": nbytes / ceilings["bandwidth_GBps"] / 1e3,
           "variant": plan(x.shape[0], routes[0][1].shape[1], qex.n_local), "format": qex.fmt}
    if bf16_row.get("us"):
        row["speedup_vs_bf16"] = bf16_row["us"] / row["us"]
    del qex
    return row


def main(argv=None) -> int:
    p = ArgumentParser(prog="bench.py --layer", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES),
                   help="MoE layer shapes (real models' E, D, I, top-k; default: all)")
    p.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS),
                   help=f"tokens routed through the layer (default: {' '.join(map(str, TOKENS))})")
    p.add_argument("--paths", nargs="+", default=list(EXPERT_PATHS), choices=list(EXPERT_PATHS))
    p.add_argument("--json", type=out_path, help="also write the rows as JSON to this file (the line is printed anyway)")
    p.add_argument("--quant", choices=[f for f in FORMATS if f != "bnb-int8"],
                   help="also time the layer quantized to this format (fused path; bf16 in the same run)")
    args = p.parse_args(argv)
    try:
        check_output_path(args.json, "--json")
    except UsageError as e:
        p.error(str(e))
    if not torch.cuda.is_available():
        print("error: the layer benchmark times CUDA graphs and needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    ceilings = measure_ceilings(device)
    print(f"# layer bench | {torch.cuda.get_device_name()} | bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s (copy "
          f"{ceilings['copy_GBps']:.0f}, read {ceilings['read_GBps']:.0f}) | matmul {ceilings['matmul_TFLOPs']:.0f} "
          f"TFLOP/s | bf16, routed by softmax-top-k of random logits; %bw against the larger of copy and read")
    rows = []
    from tqdm import tqdm
    for name, T in tqdm([(n, t) for n in args.shapes for t in args.tokens], file=sys.stderr, desc="shapes"):
        rows += bench_shape(name, T, args.paths, ceilings, device, quant=args.quant)
    print(f"{'shape':18s} {'T':>6s} {'path':14s} {'us':>10s} {'TB/s':>6s} {'%bw':>5s} {'TFLOP/s':>8s} "
          f"{'%peak':>6s} {'err':>8s}  note")
    for r in rows:
        flag = " ABOVE CEILING: measurement bug" if r["pct_bw"] > 100 or r["pct_peak"] > 100 else ""
        quant = (f" {r['format']}: floor {r['floor_us']:.1f} us, {r.get('speedup_vs_bf16', 0):.2f}x bf16, "
                 f"err vs bf16 {r['rel_err_vs_bf16']:.1e}") if "format" in r else ""
        print(f"{r['shape']:18s} {r['T']:6d} {r['path']:14s} {r['us']:10.1f} {r['TB_s']:6.2f} {r['pct_bw']:5.0f} "
              f"{r['TFLOP_s']:8.1f} {r['pct_peak']:6.0f} {r['rel_err_vs_loop']:8.1e}  {r.get('variant', '')}{quant}{flag}")
    out = {"ceilings": ceilings, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            json.dump(out, f)
    print(json.dumps(out))
    return 0
