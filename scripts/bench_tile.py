"""bench.py with one decode-GEMV tile installed for every expert shape (small_configs.SMALL_TILES[None]): how a tile
that won inside the graphed step (scripts/step_probe.py) reads in bench.py's own figures before it becomes a
STEP_TILES entry.

    python scripts/bench_tile.py --tile "{'down': {'BLOCK_N': 4, 'BLOCK_K': 1024}}" --model olmoe --fused --bs 1
    python scripts/bench_tile.py --best-of PROBE.json --min-gain 1.0 --model olmoe --fused --bs 1

--best-of: the fastest variant of a step_probe JSON that sets SMALL_TILES={None: ...} and beat its baseline by
--min-gain percent (none: the baseline, no tile). Every other argument goes to bench.py unchanged.
"""
from __future__ import annotations

import argparse
import ast
import json
import runpy
import sys
from pathlib import Path

from minimoe.kernels import small_configs

PREFIX = "minimoe.kernels.small_configs.SMALL_TILES="


def best_tile(probe_json: str, min_gain: float) -> tuple[str, dict]:
    """(variant name, tile) of the fastest SMALL_TILES variant at least min_gain % below the baseline; ("base", {})."""
    data = json.loads(Path(probe_json).read_text())
    specs = dict(v.partition(":")[::2] for v in data["variants"])              # name -> its settings
    best = ("base", {}, -min_gain)
    for row in data["rows"]:
        name, spec = row["variant"], specs.get(row["variant"], "")
        if spec.startswith(PREFIX) and "," + PREFIX not in spec and row["vs_base_pct"] <= best[2]:
            best = (name, ast.literal_eval(spec[len(PREFIX):])[None], row["vs_base_pct"])
    return best[0], best[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", help="a tile dict (Python literal): SMALL_KEYS and 'down'")
    p.add_argument("--best-of", help="a step_probe.py JSON to take the fastest SMALL_TILES variant from")
    p.add_argument("--min-gain", type=float, default=1.0, help="percent below the baseline a variant must be")
    args, rest = p.parse_known_args()
    if (args.tile is None) == (args.best_of is None):
        p.error("give exactly one of --tile and --best-of")
    name, tile = ("tile", ast.literal_eval(args.tile)) if args.tile else best_tile(args.best_of, args.min_gain)
    small_configs.SMALL_TILES[None] = tile
    print(f"# bench_tile: {name} {tile}", file=sys.stderr, flush=True)
    sys.argv = ["bench.py", *rest]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench.py"), run_name="__main__")


if __name__ == "__main__":
    main()
