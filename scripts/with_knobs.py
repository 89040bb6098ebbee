"""Run a script with module-level kernel knobs set first: a bench.py figure for a knob that has no switch yet.

    python scripts/with_knobs.py minimoe.kernels.rope.Q_PROGRAMS=4 [MOD.ATTR=VALUE ...] -- bench.py --model olmoe ...

Each knob is module.ATTR=VALUE (VALUE a Python literal; the attribute must exist, else one line and exit 2). The
modules are imported and set before the script runs in this process (runpy, as `__main__`), so every later
`from module import ...` of a function sees the knob it reads at call time; a knob copied into another module's
namespace at import would not be seen (knobs are read as `module.ATTR` in minimoe for this reason).
"""
from __future__ import annotations

import ast
import importlib
import runpy
import sys


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: with_knobs.py MOD.ATTR=VALUE ... -- SCRIPT [ARGS...]")
    cut = argv.index("--")
    knobs, rest = argv[:cut], argv[cut + 1:]
    if not rest:
        sys.exit("with_knobs.py: no script after --")
    for item in knobs:
        path, eq, literal = item.partition("=")
        mod_name, _, attr = path.rpartition(".")
        if not (eq and mod_name and attr):
            sys.exit(f"with_knobs.py: {item!r} is not MOD.ATTR=VALUE")
        mod = importlib.import_module(mod_name)
        if not hasattr(mod, attr):
            sys.exit(f"with_knobs.py: {mod_name} has no attribute {attr}")
        setattr(mod, attr, ast.literal_eval(literal))
        print(f"# knob {mod_name}.{attr} = {getattr(mod, attr)!r}", file=sys.stderr)
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
