"""The fused MoE's default launch rule at prefill sizes: its TMA prefill tiles against its pointer tiles.

For each (E, D, I, K) (issue 16's five unseen shapes, the tensor-parallel shards, a 4-expert chunk of Mixtral as the
int4 / int8 prefill's dequantize-then-bf16 path runs it, and the five shipped presets, whose tuned table is timed too)
and each T with more than 128 routed rows an expert (where `moe_configs.PREFILL_TMA` changes the rule), three
timings of the same fused_moe call by CUDA-graph replay (median of CUDA events, `tune_fused_moe.time_call`):
  * new:   `moe_configs.default_config(..., prefill_tma=True)`, the TMA prefill tiles (128 x 128 x 32, 5 deep; GEMM2
           128 x 256 x 64);
  * old:   the same with prefill_tma=False (128 x 128 x 64 pointer tiles, GROUP_M 16: the rule as it ships while
           PREFILL_TMA is off);
  * table: the shipped tuned table's entry for that T (presets only).
The new rule's output must match the old rule's (same sums, other tiles: within bf16 rounding) or the script exits 1.

    python scripts/default_rule_ab.py [--buckets 1024 2048 4096 8192] [--shapes ...] [--json out.json]
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
import untuned_shapes  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe  # noqa: E402

SHAPES = {**untuned_shapes.UNSEEN, **untuned_shapes.SHARDS,
          "mixtral-chunk4": (4, 4096, 14336, 2),      # the dequantized prefill's chunk: no table for 4 experts
          **{n: s for n, s in tune.PRESETS.items() if not n.endswith("-tp2")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--buckets", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("default_rule_ab: times CUDA graphs on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    dtype, t0, rows, bad = torch.bfloat16, time.time(), [], 0
    print(f"{'shape':15s} {'T':>5s} {'rows/E':>6s} {'old us':>9s} {'new us':>9s} {'old/new':>7s} {'table us':>9s} "
          f"{'table/new':>9s}", flush=True)
    for name in a.shapes:
        E, D, I, K = SHAPES[name]
        w13, w2 = tune.make_layer(E, D, I, dtype)
        table = moe_configs.load_tuned(str(moe_configs.CONFIG_DIR / moe_configs.config_file_name(E, I, D, K, dtype)))
        for T in a.buckets:
            if T * K / E <= 128:
                continue
            routings = tune.make_routings(T, E, D, K, dtype, tune.n_calls_for(E, D, I, K, T), seed=T)
            cfgs = {"old": moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=False),
                    "new": moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=True)}
            if table:
                cfgs["table"] = moe_configs.nearest_bucket(table, T)
            x, ids, w = routings[0]
            outs = {k: fused_moe(x, w13, w2, ids, w, config=c).float() for k, c in cfgs.items()}
            err = ((outs["new"] - outs["old"]).norm() / outs["old"].norm()).item()
            if not err < 1e-2:
                bad += 1
            us = {k: tune.time_call([lambda r=r, c=c: fused_moe(r[0], w13, w2, r[1], r[2], config=c) for r in routings])
                  for k, c in cfgs.items()}
            row = {"shape": name, "E": E, "D": D, "I": I, "K": K, "T": T, "rows_per_expert": T * K / E,
                   "us": {k: round(v, 2) for k, v in us.items()}, "old_over_new": round(us["old"] / us["new"], 3),
                   "table_over_new": round(us["table"] / us["new"], 3) if "table" in us else None,
                   "rel_err_new_vs_old": err, "configs": cfgs}
            rows.append(row)
            tab = f"{us['table']:9.1f} {row['table_over_new']:9.2f}" if "table" in us else f"{'-':>9s} {'-':>9s}"
            print(f"{name:15s} {T:5d} {T * K / E:6.0f} {us['old']:9.1f} {us['new']:9.1f} {row['old_over_new']:7.3f} "
                  f"{tab}{'  <-- outputs differ' if not err < 1e-2 else ''}", flush=True)
        del w13, w2
        torch.cuda.empty_cache()
    if rows:
        ratios = sorted(r["old_over_new"] for r in rows)
        print(f"old/new over {len(rows)} cells: min {ratios[0]:.3f}, median {ratios[len(ratios) // 2]:.3f}, "
              f"max {ratios[-1]:.3f}; {time.time() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": moe_configs.device_name(), "rows": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
