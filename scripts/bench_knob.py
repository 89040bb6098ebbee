"""Run bench.py with module attributes set first (an A/B of a probe knob on the whole bench, one process each).

    python scripts/bench_knob.py "minimoe.graphs.PDL_MARK=''" -- --model qwen3 --fused --bs 1 ...

Each NAME=VALUE before `--` sets a module attribute; VALUE is a Python literal (quote strings: X='after', and quote
the whole item for the shell) of the attribute's current type (an int for a float is fine; an attribute that is None
takes anything). The rest are bench.py's arguments. Each setting is echoed on stderr before the run and recorded under
"knobs" in bench.py's JSON line. Bad input (no `--`, no `=`, an unknown module or attribute, a value that is not a
literal or not of the attribute's type, or not one of the values a module lists in ATTR_CHOICES) exits with one line.
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
    old = getattr(m, attr)
    numeric = isinstance(old, float) and isinstance(v, int) and not isinstance(v, bool)
    if old is not None and v is not None and type(v) is not type(old) and not numeric:
        raise SystemExit(f"bench_knob: {name} holds {old!r} of type {type(old).__name__}; "
                         f"{v!r} is of type {type(v).__name__}")
    choices = getattr(m, attr + "_CHOICES", None)      # a knob that names its values (fused_moe.OVERLAP_GEMMS_CHOICES)
    if choices is not None and v not in choices:
        raise SystemExit(f"bench_knob: {name} is one of {', '.join(map(repr, choices))}, not {v!r}")
    setattr(m, attr, v)
    from minimoe.bench import cli
    cli.KNOBS[name] = v
    print(f"bench_knob: {name} = {v!r}", file=sys.stderr)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:sys.argv.index("--") if "--" in sys.argv else len(sys.argv)]):
        print(__doc__)
        sys.exit(0)
    if "--" not in sys.argv:
        raise SystemExit("bench_knob: usage: bench_knob.py module.ATTR=VALUE ... -- <bench.py arguments>")
    cut = sys.argv.index("--")
    for item in sys.argv[1:cut]:
        _set(item)
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench.py")
    sys.argv = [bench] + sys.argv[cut + 1:]
    runpy.run_path(bench, run_name="__main__")
