"""Fused MoE on shapes no tuned config lists: the default launch rule against what the tuner finds.

For each (E, D, I, K) below (real MoE layers that `minimoe/kernels/configs/` has no file for) and
each T, two timings of the same fused_moe call, by CUDA-graph replay (median of CUDA events):
  * default: `fused_moe(..., config=None)`, i.e. exactly what the engine launches for that shape;
  * tuned:   the best config `scripts/tune_fused_moe.py` finds for that shape and T (same search
             space, same correctness check against a torch loop over experts).
The issue's bar: default speed >= 80% of tuned (tuned_us / default_us >= 0.8) in every cell.

    python scripts/untuned_shapes.py [--buckets 1 8 64 512 4096] [--tma] [--json out.json]

--tma gives the tuner its full search (`tune_fused_moe.py --tma`: every candidate also with TMA weight tiles, the
deeper prefill tiles), as the shipped tables were tuned: the stricter comparison.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tune_fused_moe as tune  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe, plan  # noqa: E402

UNSEEN = {  # name: (E, D, I, K), none of which has a file in minimoe/kernels/configs/
    "qwen2-57b": (64, 3584, 2560, 8),      # Qwen2-57B-A14B
    "phi3.5-moe": (16, 4096, 6400, 2),     # Phi-3.5-MoE
    "deepseek-v2": (160, 5120, 1536, 6),   # DeepSeek-V2 (236B)
    "granite-3b": (40, 1536, 512, 8),      # granite-3.0-3b-a800m
    "qwen3-235b": (128, 4096, 1536, 8),    # Qwen3-235B-A22B
}


# The tensor-parallel shards (tune_fused_moe.py's "-tp2" presets) are measured the same way, their default
# rule pinned explicitly so the comparison still holds once their tuned files exist.
SHARDS = {n: shape for n, shape in tune.PRESETS.items() if n.endswith("-tp2")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__ + "\nNeeds a CUDA GPU.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(UNSEEN), choices=list(UNSEEN) + list(SHARDS),
                   help="(E, D, I, K) shapes by name (default: the five unseen ones)")
    p.add_argument("--buckets", nargs="+", type=int, default=[1, 8, 64, 512, 4096],
                   help="tokens T a call (default: 1 8 64 512 4096)")
    p.add_argument("--workers", type=int, default=12,
                   help="parallel compile processes, each holding one copy of a shape's layer (default 12; 0: none)")
    p.add_argument("--tma", action="store_true", help="the tuner's --tma search space (a superset)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if min(a.buckets) <= 0 or a.workers < 0:
        p.error("--buckets must be positive and --workers >= 0")
    if a.json and not Path(a.json).resolve().parent.is_dir():
        p.error(f"--json: folder {Path(a.json).resolve().parent} does not exist")
    if not torch.cuda.is_available():
        print("untuned_shapes: times the fused MoE on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    shapes = {**UNSEEN, **SHARDS}
    for name in (n for n in a.shapes if n in UNSEEN):
        E, D, I, K = UNSEEN[name]
        assert not (moe_configs.CONFIG_DIR / moe_configs.config_file_name(E, I, D, K, dtype)).exists(), name
    tune.PRESETS.clear()
    tune.PRESETS.update({n: shapes[n] for n in a.shapes})
    t0 = time.time()
    if a.workers:
        tune.precompile(a.shapes, a.buckets, dtype, a.workers, a.tma)
    rows = []
    print(f"{'shape':12s} {'T':>5s} {'variant':8s} {'default us':>10s} {'tuned us':>9s} {'ratio':>6s}  tuned config")
    for name in a.shapes:
        E, D, I, K = shapes[name]
        layer = tune.make_layer(E, D, I, dtype)
        for T in a.buckets:
            best, best_t, routings = tune.tune_bucket(name, layer, T, dtype, 2e-2, a.tma)
            w13, w2 = layer
            default_cfg = moe_configs.default_config(E, I, D, K, T, dtype)     # the rule, file or not
            default_t = tune.time_call([lambda r=r: fused_moe(r[0], w13, w2, r[1], r[2], config=default_cfg)
                                        for r in routings])
            ratio = best_t / default_t
            rows.append({"shape": name, "E": E, "D": D, "I": I, "K": K, "T": T, "variant": plan(T, K, E),
                         "default_us": round(default_t, 2), "tuned_us": round(best_t, 2),
                         "ratio": round(ratio, 3), "tuned": best, "default": default_cfg})
            flag = "" if ratio >= 0.8 else "  <-- below 80%"
            print(f"{name:12s} {T:5d} {plan(T, K, E):8s} {default_t:10.1f} {best_t:9.1f} {ratio:6.2f}  "
                  f"{json.dumps(best, sort_keys=True)}{flag}", flush=True)
        del layer
        torch.cuda.empty_cache()
    worst = min(rows, key=lambda r: r["ratio"])
    print(f"worst cell: {worst['shape']} T={worst['T']} ratio {worst['ratio']:.2f}; "
          f"{sum(r['ratio'] >= 0.8 for r in rows)}/{len(rows)} cells >= 0.80; {time.time() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": moe_configs.device_name(), "tma": a.tma, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
