"""Decode-size fused MoE on the GPU: the GEMV "small" kernels against the tl.dot ones before them.

For each preset (E, K, I, D) at T = 1, and T = 2 where `plan` still picks "small", times in bf16:
  small_dot  the legacy decode path (tl.dot, one live row per 16-row M-block, y buffer + combine),
             with the tuned/heuristic config `get_config` gives it
  aligned    the prefill path forced to run at this T, same config
  default    the GEMV path with `small_default_config`
  gu/dn N/K/warps/stages  a sweep of GEMM1 (gate_up) and GEMM2 (down + combine) tiles, each
             varied with the other kernel at its default; then the best of both, combined
Every timing is a CUDA graph of 20 back-to-back calls, each call with its own random routing (drawn
afresh for every graph, so calls do not keep re-reading one set of experts out of L2), replayed 20
times with CUDA events: the median replay / 20. Bandwidth counts the bytes of the experts each call touches (3·D·I·2 per
local expert) against 4.25 TB/s (the measured H200 ceiling). Every config is first checked against
the loop oracle (minimoe.experts.experts_loop, run in fp32) at 1e-2 relative error.

    python scripts/bench_moe_small.py --json small.json    # GPU, ~90 s with a cold cache
    python scripts/bench_moe_small.py --check              # CPU: TRITON_INTERPRET=1, fp32, tiny
"""

import os
import sys

if "--check" in sys.argv:  # must be set before triton is imported: @triton.jit reads it then
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.experts import Experts, experts_loop  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe, plan  # noqa: E402
from minimoe.kernels.fused_moe_small import small_default_config  # noqa: E402

PRESETS = {  # name: (E, K, I, D)
    "olmoe": (64, 8, 1024, 2048), "qwen3": (128, 8, 768, 2048), "mixtral": (8, 2, 14336, 4096),
    "qwen15": (60, 4, 1408, 2048), "dsv2lite": (64, 6, 1408, 2048),
}
TINY = {"tiny_a": (16, 2, 48, 40), "tiny_b": (12, 3, 36, 56)}  # --check: not multiples of tiles
HBM_BYTES_PER_S = 4.25e12
CALLS_PER_GRAPH, REPLAYS = 20, 20
# (BLOCK_N, BLOCK_K, num_warps, num_stages). Fixed across presets: one compile serves all of them.
GATE_UP_SWEEP = [(4, 1024, 4, 1), (8, 256, 4, 1), (8, 512, 4, 1), (8, 512, 4, 2), (8, 512, 4, 3),
                 (8, 512, 8, 1), (8, 1024, 8, 1), (16, 128, 4, 1), (16, 256, 4, 1),
                 (16, 256, 4, 3), (16, 512, 8, 1), (32, 128, 4, 1), (32, 128, 4, 3),
                 (32, 256, 8, 1), (8, 256, 2, 1)]
DOWN_SWEEP = [(1, 2048, 4, 1), (2, 512, 4, 3), (2, 1024, 4, 1), (2, 1024, 4, 2), (2, 1024, 4, 3),
              (2, 1024, 4, 4), (2, 2048, 8, 3), (4, 512, 4, 1), (4, 512, 4, 3), (4, 1024, 4, 3),
              (4, 1024, 8, 3), (8, 256, 4, 3), (8, 512, 4, 1), (8, 512, 4, 3), (16, 256, 4, 3)]
TINY_GATE_UP, TINY_DOWN = [(4, 16, 2, 2), (64, 32, 4, 1)], [(1, 64, 1, 3), (8, 16, 4, 1)]


def tile(t):
    return dict(zip(("BLOCK_N", "BLOCK_K", "num_warps", "num_stages"), t))


def label(t):
    return "/".join(map(str, t))


def candidates(E, K, I, D, T, dtype, check):
    """[(label, config)]: the two old paths, the GEMV default, then the GEMV sweep."""
    old = moe_configs.get_config(E, I, D, K, T, dtype)
    base = small_default_config(E, I, D, K, T, dtype)
    gu_base = {k: base[k] for k in ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages")}
    cands = [("small_dot", dict(old, variant="small_dot")),
             ("aligned", dict(old, variant="aligned")),
             ("default", {"variant": "small", "small": base})]
    for t in TINY_GATE_UP if check else GATE_UP_SWEEP:
        cands.append((f"gu {label(t)}", {"variant": "small", "small": dict(base, **tile(t))}))
    for t in TINY_DOWN if check else DOWN_SWEEP:
        small = dict(gu_base, down=tile(t))
        cands.append((f"dn {label(t)}", {"variant": "small", "small": small}))
    return cands


def make_routings(T, E, D, K, dtype, device, n, gen):
    """n independent (x, ids, weights), as a softmax top-k router gives them."""
    out = []
    for _ in range(n):
        x = torch.randn(T, D, device=device, generator=gen).to(dtype)
        weights, ids = torch.randn(T, E, device=device, generator=gen).softmax(-1).topk(K, dim=-1)
        out.append((x, ids.to(torch.int32), weights))
    return out


def measure(layer, cfg, check_set, ref, shape, gen, timed):
    """{err, us, bytes, GBps, pct} for one config; us etc. are None when not timed or wrong."""
    w13, w2 = layer
    E, K, I, D, T = shape
    x, ids, weights = check_set
    try:
        out = fused_moe(x, w13, w2, ids, weights, config=cfg).float()
    except Exception as exc:  # a config the compiler refuses (shared memory, registers)
        return {"err": None, "failed": f"{type(exc).__name__}: {str(exc)[:120]}"}
    res = {"err": ((out - ref).norm() / ref.norm()).item()}
    if not timed or not res["err"] <= 1e-2:
        return res
    routings = make_routings(T, E, D, K, x.dtype, x.device, CALLS_PER_GRAPH, gen)
    calls = [lambda r=r: fused_moe(r[0], w13, w2, r[1], r[2], config=cfg) for r in routings]
    try:
        us = graph_us(calls, REPLAYS)
    except Exception as exc:  # e.g. a launch the capture refuses
        return dict(res, failed=f"{type(exc).__name__}: {str(exc)[:120]}")
    touched = statistics.mean(r[1].unique().numel() for r in routings)
    nbytes = touched * 3 * D * I * w13.element_size()
    res.update(us=us, bytes=nbytes, GBps=nbytes / us / 1e3,
               pct=100 * nbytes / us * 1e6 / HBM_BYTES_PER_S)
    return res


def show(name, r):
    if r.get("failed"):
        print(f"  {name:22s} failed: {r['failed']}")
    elif r.get("us") is None:
        ok = "ok" if r["err"] <= 1e-2 else "WRONG"
        print(f"  {name:22s} rel err {r['err']:.1e} {ok}")
    else:
        print(f"  {name:22s} {r['us']:8.1f} us  {r['bytes'] / 1e6:7.1f} MB  {r['GBps']:6.0f} GB/s "
              f"{r['pct']:5.1f}% of 4250  err {r['err']:.1e}")


def bench_shape(name, shape, dtype, device, tol, timed):
    """All candidates for one (preset, T); returns the JSON record."""
    E, K, I, D, T = shape
    gen = torch.Generator(device=device).manual_seed(T * 1000 + E)
    w13 = (torch.randn(E, 2 * I, D, device=device, generator=gen) / D ** 0.5).to(dtype)
    w2 = (torch.randn(E, D, I, device=device, generator=gen) / I ** 0.5).to(dtype)
    check_set = make_routings(T, E, D, K, dtype, device, 1, gen)[0]
    x, ids, weights = check_set
    ref = experts_loop(x.float(), Experts.from_tensors(w13.float(), w2.float()), ids, weights)  # the oracle, fp32
    print(f"{name} E={E} K={K} I={I} D={D} T={T}; GEMV default "
          f"{small_default_config(E, I, D, K, T, dtype)}")
    record = {"preset": name, "E": E, "K": K, "I": I, "D": D, "T": T, "results": {}}
    for lab, cfg in candidates(E, K, I, D, T, dtype, check=not timed):
        r = measure((w13, w2), cfg, check_set, ref, shape, gen, timed)
        r["ok"] = r["err"] is not None and r["err"] <= tol
        r["config"] = cfg
        record["results"][lab] = r
        show(lab, r)
    if timed:
        record["best"] = best_of(record, (w13, w2), check_set, ref, shape, gen)
    return record


def best_of(record, layer, check_set, ref, shape, gen):
    """The fastest gate_up and down tiles of the sweep, timed together."""
    res = record["results"]
    timed = {k: v for k, v in res.items() if v.get("us") is not None and v["ok"]}
    if "default" not in timed:
        return {"failed": "the default GEMV config did not run correctly"}
    gu = min((k for k in timed if k.startswith(("gu", "default"))), key=lambda k: timed[k]["us"])
    dn = min((k for k in timed if k.startswith(("dn", "default"))), key=lambda k: timed[k]["us"])
    small = dict(res[gu]["config"]["small"], down=res[dn]["config"]["small"]["down"])
    cfg = {"variant": "small", "small": small}
    r = measure(layer, cfg, check_set, ref, shape, gen, True)
    show("best gu + dn", r)
    old = res["small_dot"].get("us")
    if old and r.get("us"):
        print(f"  -> best GEMV {r['us']:.1f} us vs small_dot {old:.1f} us ({old / r['us']:.2f}x); "
              f"gu from '{gu}', dn from '{dn}'")
    return dict(r, config=cfg, gate_up_from=gu, down_from=dn)


def summary(records):
    print("preset    T  small_dot us  aligned us   GEMV default us (%BW)   best us (%BW)"
          "   vs small_dot")
    for rec in records:
        res, best = rec["results"], rec["best"]
        us = {k: res[k].get("us") or float("nan") for k in ("small_dot", "aligned", "default")}
        print(f"{rec['preset']:9s} {rec['T']}  {us['small_dot']:12.1f} {us['aligned']:11.1f}"
              f"   {us['default']:8.1f} ({res['default'].get('pct', float('nan')):4.1f}%)"
              f"      {best.get('us', float('nan')):8.1f} ({best.get('pct', float('nan')):4.1f}%)"
              f"   {us['small_dot'] / best.get('us', float('nan')):5.2f}x")


def shapes(presets, check):
    for name, (E, K, I, D) in presets.items():
        for T in (1, 2):
            if plan(T, K, E) == "small" or (check and T == 1):
                yield name, (E, K, I, D, T)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--json", help="write every result here")
    p.add_argument("--check", action="store_true",
                   help="correctness only, on the CPU under TRITON_INTERPRET=1, fp32 tiny shapes")
    args = p.parse_args()
    if args.check:
        presets, dtype, device, tol, timed = TINY, torch.float32, "cpu", 1e-4, False
    else:
        assert moe_configs.on_gpu(), "timing needs a CUDA GPU (or use --check)"
        presets = {k: PRESETS[k] for k in args.presets}
        dtype, device, tol, timed = torch.bfloat16, "cuda", 1e-2, True
    t0 = time.time()
    records = []
    for name, shape in shapes(presets, args.check):
        records.append(bench_shape(name, shape, dtype, device, tol, timed))
        if timed:
            torch.cuda.empty_cache()
    if timed:
        summary(records)
    bad = [(r["preset"], r["T"], k)
           for r in records for k, v in r["results"].items() if not v["ok"]]
    print(f"{len(records)} shapes in {time.time() - t0:.0f} s; "
          f"{'all correct' if not bad else f'WRONG or failed: {bad}'}")
    if args.json:
        meta = {"device": moe_configs.device_name(), "dtype": str(dtype),
                "torch": torch.__version__, "calls_per_graph": CALLS_PER_GRAPH,
                "replays": REPLAYS, "hbm_Bps": HBM_BYTES_PER_S}
        Path(args.json).write_text(json.dumps({"meta": meta, "shapes": records}, indent=1) + "\n")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
