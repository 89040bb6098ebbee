"""scripts/bench_tile.py: which probe variant it installs, and what it refuses before building a model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
bench_tile = pytest.importorskip("bench_tile")

T = "minimoe.kernels.small_configs.SMALL_TILES="


def probe_json(tmp_path, rows):
    variants = ["base", f"a:{T}{{None:{{'down':{{'BLOCK_N':4}}}}}}", f"b:{T}{{None:{{'BLOCK_N':2}}}}",
                f"c:{T}{{None:{{'BLOCK_N':1}}}},minimoe.kernels.fused_moe.SMALL_BATCH_RATIO=2"]   # two settings
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"variants": variants, "rows": [
        {"model": "m", "batch": b, "variant": v, "us_per_step": 1.0, "vs_base_pct": pct, "rounds": [1.0],
         "same_tokens": True} for b, v, pct in rows]}))
    return str(path)


def test_best_tiles_picks_the_fastest_single_setting_variant_at_the_batch(tmp_path):
    path = probe_json(tmp_path, [(1, "base", 0.0), (1, "a", -3.0), (1, "b", -2.0), (1, "c", -9.0),
                                 (2, "base", 0.0), (2, "a", +4.0), (2, "b", -1.5)])
    assert bench_tile.best_tiles(path, 1, 1.0) == ("a", {None: {"down": {"BLOCK_N": 4}}})   # c sets two things
    assert bench_tile.best_tiles(path, 2, 1.0) == ("b", {None: {"BLOCK_N": 2}})
    assert bench_tile.best_tiles(path, 2, 2.0) == ("base", {})                              # not by min_gain
    with pytest.raises(ValueError, match="give one --bs"):
        bench_tile.best_tiles(path, None, 1.0)
    with pytest.raises(ValueError, match="not 4"):
        bench_tile.best_tiles(path, 4, 1.0)
    one = probe_json(tmp_path, [(1, "base", 0.0), (1, "b", -2.0)])
    assert bench_tile.best_tiles(one, None, 1.0)[0] == "b"


@pytest.mark.parametrize("tiles", [{None: {"BLOK_N": 4}}, {None: {"down": {"num_stage": 2}}}, {None: {"down": 4}},
                                   {None: 3}, [1]])
def test_check_tiles_refuses_what_is_not_a_tile(tiles):
    with pytest.raises(ValueError):
        bench_tile.check_tiles(tiles)


def test_check_tiles_takes_a_tile():
    bench_tile.check_tiles({None: {"BLOCK_N": 2, "down": {"BLOCK_K": 1024, "num_warps": 2}}, (8, 4, 2, 2): {}})


@pytest.mark.parametrize("extra,message", [([], "give --fused"), (["--fused", "--quant", "int4"], "give --fused"),
                                           (["--fused"], "CUDA GPU")])
def test_refused_before_any_model_is_built(extra, message):
    if "CUDA" in message and bench_tile.torch.cuda.is_available():
        pytest.skip("a GPU is here")
    run = subprocess.run([sys.executable, str(SCRIPTS / "bench_tile.py"), "--tile", "{'BLOCK_N': 2}",
                          "--model", "olmoe-tiny", *extra], capture_output=True, text=True, timeout=300,
                         cwd=SCRIPTS.parent)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-1500:]
