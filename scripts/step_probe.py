"""A/B of module-level kernel knobs inside the graphed decode step: variants interleaved, CUDA events, medians.

    python scripts/step_probe.py --models mixtral olmoe --batches 1 \\
        --variant base --variant pre1:minimoe.kernels.dense_gemv.PRELOAD_TILES=1 [--steps 40] [--rounds 3] [--json OUT]
    python scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 64 --variant base --variant ...

A variant is NAME or NAME:module.ATTR=VALUE[,module.ATTR=VALUE...] (VALUE a Python literal), where the module
`settings` names a field of the built model's RunSettings (settings.fold_router='on': a switch read at every call);
the first variant is the baseline. For each model and batch one model is built (random weights, real shapes, `--fused`, `--quant` as
given, every other setting at its default), then round by round every variant sets its attributes, captures a fresh
decode graph, decodes 6 warm-up steps and times `steps` graphed steps back to back with CUDA events (µs per step, median of
rounds). With --prefill the graphed prefill of the batch's prompts (`--input-len` tokens each) is timed instead: µs
per prefill, `--steps` of them back to back (the cache reset between them), the step column then meaning one
prefill. Every variant must generate the baseline's greedy tokens (a kernel knob must not change the bits): the
exit status is 1 otherwise. A sweep of one kernel alone is not the step's context (docs/perf_notes.md, eighth
session): this is how a knob earns its default.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import statistics
import sys

import torch

from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def _top_level_split(spec: str) -> list[str]:
    """Split at the commas outside brackets and quotes ("a.B={0: 'x', 4: 'y'},a.C=1" -> two settings)."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in spec:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def parse_variant(text: str) -> tuple[str, list[tuple[object, str, object]]]:
    """"name:mod.attr=1,mod.attr2='x'" -> (name, [(module, attr, value), ...]); ValueError for a bad spelling."""
    name, _, spec = text.partition(":")
    sets = []
    for item in filter(None, _top_level_split(spec)):
        path, eq, literal = item.partition("=")
        mod_name, _, attr = path.rpartition(".")
        if not (eq and mod_name and attr):
            raise ValueError(f"variant {text!r}: each setting is module.ATTR=VALUE")
        if mod_name == "settings":          # a RunSettings field of the built model (its modules share the instance)
            if attr not in RunSettings.__dataclass_fields__:
                raise ValueError(f"variant {text!r}: RunSettings has no field {attr}")
            sets.append(("settings", attr, ast.literal_eval(literal)))
            continue
        mod = importlib.import_module(mod_name)
        if not hasattr(mod, attr):
            raise ValueError(f"variant {text!r}: {mod_name} has no attribute {attr}")
        value = ast.literal_eval(literal)
        choices = getattr(mod, attr + "_CHOICES", None)
        if choices is not None and value not in choices:
            raise ValueError(f"variant {text!r}: {attr} is one of {', '.join(map(repr, choices))}")
        sets.append((mod, attr, value))
    return name, sets


def probe(model_name: str, batches: list[int], variants, a) -> list[dict]:
    s = RunSettings(experts="fused", device="cuda", quant=a.quant).resolve()
    model, cfg, _ = build_model(model_name, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    for spec in a.install or []:     # a plan installed once on the built model; its knobs are variant settings
        mod_name, _, fn = spec.partition(":")
        getattr(importlib.import_module(mod_name), fn)(model)
    rows = []
    for B in batches:
        prompt = torch.randint(0, cfg.vocab_size, (B, a.input_len), device="cuda")
        times = {name: [] for name, _ in variants}
        tokens = {}
        for _ in range(a.rounds):
            for name, named_sets in variants:
                sets = [(s if mod == "settings" else mod, attr, value) for mod, attr, value in named_sets]
                saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in sets]
                try:
                    for mod, attr, value in sets:
                        setattr(mod, attr, value)
                    gen = Generator(model, B, a.input_len + a.steps + 16)
                    enable_graphs(gen, prefill_lengths=[a.input_len])
                    tok = gen.prefill(prompt)
                    seq = [tok]
                    for _ in range(6):
                        tok = gen.decode(tok)
                        seq.append(tok)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(a.steps):
                        if a.prefill:
                            gen.reset()
                            tok = gen.prefill(prompt)
                        else:
                            tok = gen.decode(tok)
                        seq.append(tok)
                    end.record()
                    torch.cuda.synchronize()
                    times[name].append(start.elapsed_time(end) * 1e3 / a.steps)
                    tokens.setdefault(name, torch.stack(seq).cpu())
                    del gen
                finally:
                    for mod, attr, value in saved:
                        setattr(mod, attr, value)
        base_name = variants[0][0]
        base = statistics.median(times[base_name])
        for name, t in times.items():
            med = statistics.median(t)
            rows.append({"model": model_name, "batch": B, "variant": name, "us_per_step": med,
                         "vs_base_pct": 100 * (med / base - 1), "rounds": t,
                         "same_tokens": bool(torch.equal(tokens[name], tokens[base_name]))})
    del model
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["olmoe"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--variant", action="append", required=True, help="NAME[:module.ATTR=VALUE,...]")
    p.add_argument("--quant", default="none", help="the weight format, as bench.py's --quant")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefill", action="store_true", help="time the graphed prefill, not the decode step")
    p.add_argument("--install", action="append", metavar="MODULE:FUNCTION",
                   help="call FUNCTION(model) once after building, e.g. a plan's install function whose module knobs the "
                        "variants then set (docs/results/2026-12-03-s26 call 1 used it for an L2 prefetch plan)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in a.variant]
        for spec in a.install or []:
            mod_name, colon, fn = spec.partition(":")
            if not colon or not callable(getattr(importlib.import_module(mod_name), fn, None)):
                raise ValueError(f"--install {spec!r}: not MODULE:FUNCTION naming a function")
    except (ValueError, ImportError, SyntaxError) as e:
        print(f"step_probe: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        what = "prefill" if a.prefill else "decode step"
        print(f"step_probe: times the graphed {what} on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    rows = []
    for m in a.models:
        rows += probe(m, a.batches, variants, a)
    print(f"# graphed {'prefill' if a.prefill else 'decode step'}, quant {a.quant}, {a.input_len} in, {a.rounds} rounds x {a.steps} steps, variants "
          "interleaved; "
          + "; ".join(a.variant))
    print(f"{'model':18s} {'bs':>3s} {'variant':10s} {'us/step':>9s} {'vs base':>8s} same  rounds")
    for r in rows:
        print(f"{r['model']:18s} {r['batch']:3d} {r['variant']:10s} {r['us_per_step']:9.1f} {r['vs_base_pct']:+7.2f}% "
              f"{'yes' if r['same_tokens'] else 'NO':4s} " + " ".join(f"{x:.1f}" for x in r["rounds"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"variants": a.variant, "rows": rows}, f, indent=1)
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
