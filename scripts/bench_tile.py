"""bench.py with one batch-1/2 decode-GEMV tile installed: how a tile that won inside the graphed step
(scripts/step_probe.py) reads in bench.py's own figures before it becomes a small_configs.STEP_TILES entry.

    python scripts/bench_tile.py --tile "{'down': {'BLOCK_N': 4, 'BLOCK_K': 1024}}" --model olmoe --fused --bs 1
    python scripts/bench_tile.py --best-of PROBE.json --min-gain 1.0 --model olmoe --fused --bs 1

--tile sets small_configs.SMALL_TILES = {None: TILE}: every expert shape, every decode T, merged over the rule and
STEP_TILES (so it changes only the keys it names). --best-of takes the fastest variant of a step_probe JSON whose
one setting is small_configs.SMALL_TILES, at --bs's batch size, that beat the baseline by --min-gain percent (none:
the baseline, nothing installed), and installs its SMALL_TILES as it was probed. Every other argument goes to
bench.py unchanged. The tile reaches only the bf16 / fp16 decode kernels (kernels/fused_moe_small.py), which run on a
CUDA GPU with --fused and no --quant: anything else is refused before the model is built, as is a tile with a key
that is not a tile's.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import runpy
import sys
from pathlib import Path

import torch

from minimoe.kernels import small_configs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_probe import parse_variant  # noqa: E402


def best_tiles(probe_json: str, batch: int | None, min_gain: float) -> tuple[str, dict]:
    """(variant name, SMALL_TILES dict) of the fastest variant at `batch` that sets only SMALL_TILES and is at least
    min_gain % below the baseline; ("base", {}) when none is. ValueError: the probe holds several batch sizes and
    `batch` is None, or none of `batch`."""
    data = json.loads(Path(probe_json).read_text())
    batches = {row["batch"] for row in data["rows"]}
    if batch is None and len(batches) > 1:
        raise ValueError(f"{probe_json} holds batch sizes {sorted(batches)}: give one --bs")
    if batch is not None and batch not in batches:
        raise ValueError(f"{probe_json} holds batch sizes {sorted(batches)}, not {batch}")
    specs = {}
    for text in data["variants"]:
        name, sets = parse_variant(text)
        if len(sets) == 1 and sets[0][0] is small_configs and sets[0][1] == "SMALL_TILES":
            specs[name] = sets[0][2]
    want = batch if batch is not None else batches.pop()
    best = ("base", {}, -min_gain)
    for row in data["rows"]:
        if row["variant"] in specs and row["batch"] == want and row["vs_base_pct"] <= best[2]:
            best = (row["variant"], specs[row["variant"]], row["vs_base_pct"])
    return best[0], best[1]


def check_tiles(tiles: dict) -> None:
    """ValueError unless `tiles` is a SMALL_TILES dict whose every tile takes only SMALL_KEYS (and 'down')."""
    if not isinstance(tiles, dict):
        raise ValueError(f"SMALL_TILES must be a dict, not {type(tiles).__name__}")
    rule = dict({k: 0 for k in small_configs.SMALL_KEYS}, down={})
    for tile in tiles.values():
        if not isinstance(tile, dict) or not isinstance(tile.get("down", {}), dict):
            raise ValueError(f"a tile is a dict of {', '.join(small_configs.SMALL_KEYS)} and 'down': {tile!r}")
        small_configs._over(rule, tile, "--tile")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tile", help="a tile (Python literal): SMALL_KEYS and 'down'")
    p.add_argument("--best-of", help="a step_probe.py JSON to take the fastest SMALL_TILES variant from")
    p.add_argument("--min-gain", type=float, default=1.0, help="percent below the baseline a variant must be (1.0)")
    args, rest = p.parse_known_args()
    seen = argparse.ArgumentParser(add_help=False)
    seen.add_argument("--fused", action="store_true")
    seen.add_argument("--experts")
    seen.add_argument("--quant", default="none")
    seen.add_argument("--bs", type=int, nargs="+")
    bench_args, _ = seen.parse_known_args(rest)
    if (args.tile is None) == (args.best_of is None):
        p.error("give exactly one of --tile and --best-of")
    if not (bench_args.fused or bench_args.experts == "fused") or bench_args.quant != "none":
        p.error("the tile reaches only the bf16 decode kernels: give --fused and no --quant")
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("the decode kernels' tiles take effect on a CUDA GPU only")
    try:
        if args.tile:
            name, tiles = "tile", {None: ast.literal_eval(args.tile)}
        else:
            bs = bench_args.bs[0] if bench_args.bs and len(bench_args.bs) == 1 else None
            name, tiles = best_tiles(args.best_of, bs, args.min_gain)
        check_tiles(tiles)
    except (ValueError, SyntaxError, OSError, KeyError) as err:
        p.error(f"{type(err).__name__}: {err}")
    small_configs.SMALL_TILES.update(tiles)
    print(f"# bench_tile: {name} SMALL_TILES={tiles}", file=sys.stderr, flush=True)
    sys.argv = ["bench.py", *rest]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench.py"), run_name="__main__")


if __name__ == "__main__":
    main()
