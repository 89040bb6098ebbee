"""Run bench.py with module attributes set first (an A/B of a probe knob on the whole bench, one process each).

    python scripts/bench_knob.py "minimoe.graphs.PDL_MARK=''" -- --model qwen3 --fused --bs 1 ...

Each NAME=VALUE before `--` sets a module attribute; VALUE is a Python literal (quote strings: X='after', and quote
the whole item for the shell). The rest are bench.py's arguments. Each setting is echoed on stderr before the run.
Bad input (no `--`, no `=`, an unknown module or attribute, a value that is not a literal) exits with one line.
"""
import ast
import importlib
import os
import runpy
import sys


def _set(item: str) -> None:
    name, eq, value = item.partition("=")
    mod, _, attr = name.rpartition(".")
    if not eq or not mod or not attr:
        raise SystemExit(f"bench_knob: {item!r} is not module.ATTR=VALUE")
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        raise SystemExit(f"bench_knob: cannot import {mod}: {e}")
    if not hasattr(m, attr):
        raise SystemExit(f"bench_knob: {mod} has no attribute {attr}")
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise SystemExit(f"bench_knob: {value!r} is not a Python literal (quote strings: {name}='{value}')")
    setattr(m, attr, v)
    print(f"bench_knob: {name} = {v!r}", file=sys.stderr)


if __name__ == "__main__":
    if "--" not in sys.argv:
        raise SystemExit("bench_knob: usage: bench_knob.py module.ATTR=VALUE ... -- <bench.py arguments>")
    cut = sys.argv.index("--")
    for item in sys.argv[1:cut]:
        _set(item)
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench.py")
    sys.argv = [bench] + sys.argv[cut + 1:]
    runpy.run_path(bench, run_name="__main__")
