"""Run a script with module-level kernel knobs set first: a bench.py figure for a knob that has no switch yet.

    python scripts/with_knobs.py minimoe.kernels.rope.Q_PROGRAMS=4 [MOD.ATTR=VALUE ...] -- bench.py --model olmoe ...

Each knob is module.ATTR=VALUE (VALUE a Python literal; the module must import and the attribute exist, else one
line and exit 2). The
modules are imported and set before the script runs in this process (runpy, as `__main__`), so every later
`from module import ...` of a function sees the knob it reads at call time; a knob copied into another module's
namespace at import would not be seen (knobs are read as `module.ATTR` in minimoe for this reason).
"""
from __future__ import annotations

import ast
import importlib
import runpy
import sys


def _fail(message: str) -> None:
    print(f"with_knobs.py: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        _fail("usage: with_knobs.py MOD.ATTR=VALUE ... -- SCRIPT [ARGS...]")
    cut = argv.index("--")
    knobs, rest = argv[:cut], argv[cut + 1:]
    if not rest:
        _fail("no script after --")
    for item in knobs:
        path, eq, literal = item.partition("=")
        mod_name, _, attr = path.rpartition(".")
        if not (eq and mod_name and attr):
            _fail(f"{item!r} is not MOD.ATTR=VALUE")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            _fail(f"{item!r}: cannot import {mod_name} ({e})")
        if not hasattr(mod, attr):
            _fail(f"{mod_name} has no attribute {attr}")
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            _fail(f"{item!r}: {literal!r} is not a Python literal (quote a string: ATTR='x')")
        setattr(mod, attr, value)
        print(f"# knob {mod_name}.{attr} = {getattr(mod, attr)!r}", file=sys.stderr)
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
