"""The fused MoE's default launch rule at prefill sizes: its TMA prefill tiles against its pointer tiles.

For each (E, D, I, K) (issue 16's five unseen shapes, the tensor-parallel shards, a 4-expert chunk of Mixtral as the
int4 / int8 prefill's dequantize-then-bf16 path runs it, and the five single-GPU presets) and each T with more than
128 routed rows an expert (where the rule groups M-blocks and may take its TMA prefill tiles: it does from
`moe_configs.PREFILL_TMA_MIN_ROWS`), the same fused_moe call is timed by
CUDA-graph replay (`tune_fused_moe.time_call`: the median of 5 replays of a graph of several calls) with:
  * new:   `moe_configs.default_config(..., prefill_tma=True)`, the TMA prefill tiles (128 x 128 x 32, 5 deep; GEMM2
           128 x 256 x 64);
  * old:   the same with prefill_tma=False (128 x 128 x 64 pointer tiles, GROUP_M 16: the rule below
           PREFILL_TMA_MIN_ROWS);
  * table: the tuned table's entry for that T, for any shape with a file in minimoe/kernels/configs/ for this GPU (on
           another Hopper GPU, the H200's: `moe_configs.tuned_table`).
`--rounds` rounds, the variants' order reversed every other round (ABBA); a cell reports each variant's median over
rounds and the old / new ratio's spread over rounds. The new rule's output must match the old rule's (the same sums
over other tiles: within bf16 rounding) or the script exits 1. Whether this GPU and Triton give the TMA unit at all is
in the header and the JSON (without it, "new" runs its tiles through pointer loads). The JSON is rewritten after every
cell. Each shape compiles its variants first (about two minutes a shape on an H100): pick shapes with --shapes.

    python scripts/default_rule_ab.py [--shapes qwen2-57b phi3.5-moe] [--buckets 2048 4096 8192] [--rounds 3]
                                      [--json out.json]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tune_fused_moe as tune  # noqa: E402
import untuned_shapes  # noqa: E402
from minimoe.kernels import fused_moe as fm  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402

SHAPES = {**untuned_shapes.UNSEEN, **untuned_shapes.SHARDS,
          "mixtral-chunk4": (4, 4096, 14336, 2),      # the dequantized prefill's chunk: no table for 4 experts
          **{n: s for n, s in tune.PRESETS.items() if not n.endswith("-tp2")}}


def cells(shapes: list[str], buckets: list[int]) -> list[tuple[str, int]]:
    """The (shape, T) pairs where the two rules differ: more than 128 routed rows an expert."""
    return [(n, T) for n in shapes for T in buckets if T * SHAPES[n][3] / SHAPES[n][0] > 128]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__ + "\nNeeds a CUDA GPU.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--buckets", nargs="+", type=int, default=[1024, 2048, 4096, 8192], help="tokens T a call")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds, the variants' order alternating")
    p.add_argument("--json", help="write the rows here (rewritten after every cell)")
    a = p.parse_args(argv)
    if min(a.buckets) <= 0 or a.rounds <= 0:
        p.error("--buckets and --rounds must be positive")
    todo = cells(a.shapes, a.buckets)
    if not todo:
        p.error("no (shape, T) with more than 128 routed rows an expert: the two rules are the same there")
    if a.json and not Path(a.json).resolve().parent.is_dir():
        p.error(f"--json: folder {Path(a.json).resolve().parent} does not exist")
    if not torch.cuda.is_available():
        print("default_rule_ab: times CUDA graphs on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    dtype, t0, rows, bad = torch.bfloat16, time.time(), [], 0
    tma = fm.TensorDescriptor is not None and fm._tma_unit(torch.device("cuda"))
    head = {"device": moe_configs.device_name(), "tma_unit": tma, "rounds": a.rounds}
    print(f"# {head['device']}, TMA unit {'yes' if tma else 'NO (new runs its tiles through pointer loads)'}, "
          f"{a.rounds} rounds (ABBA)")
    print(f"{'shape':15s} {'T':>5s} {'rows/E':>6s} {'old us':>9s} {'new us':>9s} {'old/new':>7s} {'spread':>13s} "
          f"{'table us':>9s} {'table/new':>9s}", flush=True)
    for name in dict.fromkeys(n for n, _ in todo):
        E, D, I, K = SHAPES[name]
        w13, w2 = tune.make_layer(E, D, I, dtype)
        table = moe_configs.tuned_table(E, I, D, K, dtype)        # on another Hopper GPU: the H200's
        for T in (T for n, T in todo if n == name):
            routings = tune.make_routings(T, E, D, K, dtype, tune.n_calls_for(E, D, I, K, T), seed=T)
            cfgs = {"old": moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=False),
                    "new": moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=True)}
            if table:
                cfgs["table"] = moe_configs.nearest_bucket(table, T)
            x, ids, w = routings[0]
            outs = {k: fm.fused_moe(x, w13, w2, ids, w, config=c).float() for k, c in cfgs.items()}
            err = ((outs["new"] - outs["old"]).norm() / outs["old"].norm()).item()
            bad += not err < 1e-2
            times = {k: [] for k in cfgs}
            for r in range(a.rounds):
                for k in (list(cfgs) if r % 2 == 0 else list(cfgs)[::-1]):
                    c = cfgs[k]
                    times[k].append(tune.time_call(
                        [lambda r=r_, c=c: fm.fused_moe(r[0], w13, w2, r[1], r[2], config=c) for r_ in routings]))
            us = {k: statistics.median(v) for k, v in times.items()}
            per_round = [o / n for o, n in zip(times["old"], times["new"])]
            row = {"shape": name, "E": E, "D": D, "I": I, "K": K, "T": T, "rows_per_expert": T * K / E,
                   "us": {k: round(v, 2) for k, v in us.items()}, "us_rounds": times,
                   "old_over_new": round(us["old"] / us["new"], 3),
                   "old_over_new_range": [round(min(per_round), 3), round(max(per_round), 3)],
                   "table_over_new": round(us["table"] / us["new"], 3) if "table" in us else None,
                   "rel_err_new_vs_old": err, "configs": cfgs}
            rows.append(row)
            tab = f"{us['table']:9.1f} {row['table_over_new']:9.2f}" if "table" in us else f"{'-':>9s} {'-':>9s}"
            spread = f"{min(per_round):.3f}-{max(per_round):.3f}"
            print(f"{name:15s} {T:5d} {T * K / E:6.0f} {us['old']:9.1f} {us['new']:9.1f} {row['old_over_new']:7.3f} "
                  f"{spread:>13s} {tab}{'  <-- outputs differ' if not err < 1e-2 else ''}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(dict(head, rows=rows), indent=1))
        del w13, w2
        torch.cuda.empty_cache()
    ratios = sorted(r["old_over_new"] for r in rows)
    print(f"old/new over {len(rows)} cells: min {ratios[0]:.3f}, median {statistics.median(ratios):.3f}, "
          f"max {ratios[-1]:.3f}; {time.time() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
