"""Run bench.py with module attributes set first (an A/B of a probe knob on the whole bench, one process each).

    python scripts/bench_knob.py minimoe.graphs.PDL_MARK=False -- --model qwen3 --fused --bs 1 ...

Each NAME=VALUE before `--` sets a module attribute (VALUE a Python literal); the rest are bench.py's arguments.
"""
import ast
import importlib
import os
import runpy
import sys

if __name__ == "__main__":
    if "--" not in sys.argv:
        raise SystemExit("bench_knob: usage: bench_knob.py module.ATTR=VALUE ... -- <bench.py arguments>")
    cut = sys.argv.index("--")
    for item in sys.argv[1:cut]:
        name, _, value = item.partition("=")
        mod, _, attr = name.rpartition(".")
        m = importlib.import_module(mod)
        if not hasattr(m, attr):
            raise SystemExit(f"bench_knob: {mod} has no attribute {attr}")
        setattr(m, attr, ast.literal_eval(value))
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench.py")
    sys.argv = [bench] + sys.argv[cut + 1:]
    runpy.run_path(bench, run_name="__main__")
