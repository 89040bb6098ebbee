"""Time the router at decode sizes: cuBLAS GEMV + top-k, the one-program fused kernel, split-K + top-k.

    python scripts/bench_router.py --json router.json      # CUDA GPU only: ~1 min on an H200
    python scripts/bench_router.py --models olmoe --tokens 1 4 --pdl

An MoE layer's router is logits = h Wgateᵀ ([T, D] x [E, D]ᵀ) and a top-k over E. Three ways:
  (a) cublas   F.linear(h.to(gate dtype), gate) + kernels/route.py `route_topk` (the engine's default)
  (b) fused    kernels/norm_route.py `gate_route`: one program per token streams the whole gate
               (timed wherever it runs: same gate and activation dtype; `norm_route.usable` says
               the engine takes it only for gates <= 64 KB, marked "*" in the table)
  (c) splitk   kernels/gate_splitk.py `gate_route_splitk`: a split-K GEMV over ~one wave of
               programs, then a reduce + top-k kernel; at its default splits, and a small sweep of
               splits (at 128-column tiles) and tile widths (at their default splits)
for OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite (fp32 gate, bf16 h) and Mixtral gates, T = 1..16 tokens.

Each variant is timed as a CUDA graph of back-to-back calls (`minimoe.bench.roofline.graph_us`,
median of 20 replays, divided by the calls): launch overhead out, as in a graphed decode step. The
calls cycle through enough copies of the gate to overflow L2 (~2.5x its size, at most MAX_CALLS
calls), because in a real step the attention and experts stream megabytes between two routers and
each gate comes from HBM; h stays L2-resident (it was just written). "% bw" is the time the gate's
bytes take at 4.25 TB/s (the H200's measured copy bandwidth) over the variant's time.

Inputs are built so that routing is unambiguous (as tests/test_gate_splitk.py does): per token the
target logits are a shuffled grid 4/E apart, h = pinv(gate) z + a null-space part. Then a bf16
rounding of a logit cannot create a tie, and (c)'s ids must equal (a)'s exactly; a variant that
disagrees is reported and not timed.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels import gate_splitk, norm_route  # noqa: E402
from minimoe.kernels.route import route_topk  # noqa: E402

# name: (E, D, K, gate dtype, h dtype, routing kwargs)
MODELS = {
    "olmoe": (64, 2048, 8, torch.bfloat16, torch.bfloat16, dict(renorm=False, softmax_first=True)),
    "qwen3-30b": (128, 2048, 8, torch.bfloat16, torch.bfloat16, dict(renorm=True, softmax_first=True)),
    "deepseek-v2-lite": (64, 2048, 6, torch.float32, torch.bfloat16, dict(renorm=False, softmax_first=True)),
    "mixtral": (8, 4096, 2, torch.bfloat16, torch.bfloat16, dict(renorm=True, softmax_first=False)),
}
TOKENS = (1, 2, 4, 8, 16)
SPLITS_SWEEP = (4, 8, 16, 32)     # at 128-column tiles (clamped to the tiles, duplicates dropped)
BLOCK_D_SWEEP = (64, 128, 256, 512)  # at each width's default splits (the default tile is skipped)
HBM_BYTES_PER_S = 4.25e12
L2_OVERFLOW = 2.5                 # gate copies cycled: this many times the L2 size
MAX_CALLS = 1024
REPLAYS = 20


def make_case(E, D, T, gate_dtype, h_dtype, device, seed=0):
    """(gates: copies of one [E, D] gate, h [T, D]) with per-token logits a shuffled grid 4/E apart."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(E, D, generator=gen, dtype=torch.float64) * 2 / D ** 0.5
    gate = g.to(gate_dtype)
    g = gate.double()
    pinv = torch.linalg.pinv(g)  # [D, E]: g @ pinv = I (D >= E)
    z = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).double() * (4.0 / E) - 2.0
    hz = z @ pinv.T
    r = torch.randn(T, D, generator=gen, dtype=torch.float64)
    null = r - (r @ g.T) @ pinv.T
    rms = lambda v: v.pow(2).mean(-1, keepdim=True).sqrt()  # noqa: E731
    null = null / rms(null) * (1.0 - rms(hz).clamp(max=0.8) ** 2).sqrt()
    h = (hz + null).to(h_dtype).to(device)
    gate = gate.to(device)
    nbytes = gate.numel() * gate.element_size()
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    copies = max(1, min(MAX_CALLS, -(-int(L2_OVERFLOW * l2) // nbytes)))
    return [gate] + [gate.clone() for _ in range(copies - 1)], h, nbytes


def variants(E, D, T, K, gate_dtype, h_dtype, kw, pdl):
    """name -> (fn(h, gate) -> (w, ids), info dict)."""
    out = {"cublas": (lambda h, g: route_topk(F.linear(h.to(g.dtype), g), K, **kw, pdl=pdl), {})}
    if gate_dtype == h_dtype and D <= norm_route.MAX_D:
        fits = T <= norm_route.MAX_T and norm_route.usable(E, D, True, gate_dtype, h_dtype)
        out["fused"] = (lambda h, g: norm_route.gate_route(h, g, K, **kw, pdl=pdl), {"usable": fits})
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tile_e, tile_d, _ = gate_splitk.gate_tiles(gate_dtype, fold=False, E=E)  # the unfolded kernel's own tiles
    tile_d = min(tile_d, max(1 << (D - 1).bit_length(), 16))
    block_e = min(tile_e, 1 << (E - 1).bit_length())
    n_tiles = -(-D // tile_d)
    default = gate_splitk.default_splits(T, E, D, sms, tile_d, block_e)
    configs = [(default, tile_d)]
    configs += [(min(s, n_tiles), tile_d) for s in SPLITS_SWEEP]
    configs += [(gate_splitk.default_splits(T, E, D, sms, bd, block_e), bd) for bd in BLOCK_D_SWEEP]
    seen = set()
    for i, (s, bd) in enumerate(configs):
        if (s, bd) in seen:
            continue
        seen.add((s, bd))
        name = "splitk" if i == 0 else f"splitk s{s} d{bd}"
        out[name] = (lambda h, g, s=s, bd=bd: gate_splitk.gate_route_splitk(h, g, K, **kw, pdl=pdl, splits=s,
                                                                           block_d=bd),
                     {"splits": s, "block_d": bd, "default": i == 0})
    return out


def bench(model, T, pdl, device):
    E, D, K, gate_dtype, h_dtype, kw = MODELS[model]
    gates, h, nbytes = make_case(E, D, T, gate_dtype, h_dtype, device, seed=T)
    bytes_us = nbytes / HBM_BYTES_PER_S * 1e6
    row = {"model": model, "E": E, "D": D, "K": K, "T": T, "gate_dtype": str(gate_dtype), "h_dtype": str(h_dtype),
           "gate_bytes": nbytes, "bytes_us": bytes_us, "calls": len(gates), "variants": {}}
    ref_w, ref_ids = None, None
    for name, (fn, info) in variants(E, D, T, K, gate_dtype, h_dtype, kw, pdl).items():
        w, ids = fn(h, gates[0])
        if ref_ids is None:
            ref_w, ref_ids = w, ids
        ok = torch.equal(ids, ref_ids) and torch.allclose(w, ref_w, rtol=3e-2, atol=1e-4)
        rec = dict(info, ids_match=bool(ok), us=None)
        if ok:
            rec["us"] = graph_us([lambda g=g: fn(h, g) for g in gates], REPLAYS)
            rec["pct_bw"] = 100 * bytes_us / rec["us"]
        else:
            print(f"  {model} T={T} {name}: ids differ from cuBLAS + route_topk; not timed")
        row["variants"][name] = rec
    base = row["variants"]["cublas"]["us"]
    for rec in row["variants"].values():
        rec["speedup"] = base / rec["us"] if rec["us"] else None
    timed = {n: r for n, r in row["variants"].items() if n.startswith("splitk") and r["us"]}
    row["best_splitk"] = min(timed, key=lambda n: timed[n]["us"]) if timed else None
    del gates
    torch.cuda.empty_cache()
    return row


def _cell(rec):
    if rec is None:
        return f"{'-':>19s}"
    if rec["us"] is None:
        return f"{'WRONG IDS':>19s}"
    star = "*" if rec.get("usable") is False else " "
    return f"{rec['us']:6.2f}{star}{rec['speedup']:5.2f}x {rec['pct_bw']:4.1f}%"


def print_row(r):
    v = r["variants"]
    best = v.get(r["best_splitk"]) if r["best_splitk"] else None
    tag = f"s{best['splits']} d{best['block_d']}" if best else "-"
    print(f"{r['model']:17s} {r['T']:3d} {r['gate_bytes'] / 1024:5.0f} | {_cell(v['cublas'])} | "
          f"{_cell(v.get('fused'))} | {_cell(v.get('splitk'))} s{v['splitk'].get('splits', '?'):<3} | "
          f"{_cell(best)} {tag}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Cells: µs per call, speed-up over cuBLAS + route_topk, % of HBM "
                                       "bandwidth on the gate's bytes. Needs a CUDA GPU.")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    p.add_argument("--pdl", action="store_true", help="launch every Triton kernel with PDL (sm90+)")
    p.add_argument("--json", help="write every timing here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_router.py times CUDA graphs: it needs a CUDA GPU (tests/test_gate_splitk.py "
                 "checks the kernel on the CPU)")
    device = torch.device("cuda")
    import triton
    print(f"{'model':17s} {'T':>3s} {'KB':>5s} | {'cuBLAS+top-k us':>19s} | {'fused (*: not used)':>19s} | "
          f"{'split-K default':>19s} {'':4s} | {'split-K best':>19s}")
    rows, t0 = [], time.time()
    for model in args.models:
        for T in args.tokens:
            rows.append(bench(model, T, args.pdl, device))
            print_row(rows[-1])
    print(f"timed in {time.time() - t0:.0f} s; cells: µs, speed-up over cuBLAS + route_topk, "
          f"% of {HBM_BYTES_PER_S / 1e12:.2f} TB/s on the gate bytes")
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device), "triton": triton.__version__,
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "pdl": args.pdl,
                "replays": REPLAYS, "l2_overflow": L2_OVERFLOW}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
