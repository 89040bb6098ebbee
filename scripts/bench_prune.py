"""The pruning speed study: decode throughput against the pruning ratio, bytes per step beside each.

    python scripts/bench_prune.py --out /tmp/prune                      # on the H200 (scripts/gpu/prune.sh)
    TRITON_INTERPRET=1 python scripts/bench_prune.py --smoke --out /tmp/prune-smoke   # the same code on a CPU, tiny cards

One process per run: each model is built once with random weights of its real shapes (the speed of a
shape does not depend on the values), calibrated once on random prompts, and every variant is timed in
the same process, after the same warm-up, with the same prompts:
    none          the unpruned model
    inter R       R of every layer's experts dropped (prune.py); bytes fall only once a batch reads all
    intra R       every expert R narrower; bytes fall at every batch size
    skip f        --skip-threshold beta chosen to drop a fraction f of the routed slots of greedy decode steps
                  (--skip-calibration timed, the default: the first --bs's own timed prompts, --output-len steps;
                  "decode": SKIP_CALIB_ROWS other random prompts; "random": the random-token windows; NAEE's dynamic
                  skipping); the fused kernels skip
                  those experts' bytes. The "skipped" column counts --output-len eager decode steps after the timed prompts
Before any timing, correctness on the real shapes: each pruned layer's fused and grouped paths against
the float32 loop oracle with skipping on (T = 1, 16, 64), and the graphed decode of each pruned model
against its eager step, token for token. Timing = bench.py's run_config (CUDA events, graphs, medians
of --iters runs, the roofline: bytes a decode step must read / measured bandwidth). The targets of
issue 13 are checked at the end (MET / MISSED), and everything is written to --out as JSON and text.
Short runs (--output-len 64 --iters 1 --warmup 1 by default) are fair here because every ratio is
measured in the same process right after the others.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from minimoe.bench.cli import run_config
from minimoe.bench.roofline import measure_ceilings
from minimoe.calibrate import calibrate, calibrate_decode, moe_layers
from minimoe.experts import EXPERT_PATHS, Experts
from minimoe.gate import SkipCount, counting_skips, skip_small
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.prune import prune_, skip_threshold_for
from minimoe.settings import RunSettings

SKIP_CALIB_ROWS = 4   # prompts whose greedy decode steps set the skip thresholds (x --output-len tokens)
TARGETS = [  # (model, bs, variant, minimum speedup over "none" at the same bs): issue 13's acceptance
    ("olmoe", 64, "inter 50%", 1.3), ("olmoe", 1, "intra 25%", 1.15), ("olmoe", 1, "skip 33%", 1.2)]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for prune_speed.json and the tables")
    p.add_argument("--models", nargs="+", default=["olmoe", "qwen1.5-moe"],
                   help="model cards (random weights, real shapes; default %(default)s)")
    p.add_argument("--bs", type=int, nargs="+", default=[1, 16, 64], help="decode batches (default %(default)s)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (default %(default)s)")
    p.add_argument("--output-len", type=int, default=64, help="new tokens (default %(default)s)")
    p.add_argument("--inter", type=float, nargs="*", default=[0.125, 0.25, 0.5],
                   help="inter-expert ratios: shares of each layer's experts dropped (default %(default)s)")
    p.add_argument("--intra", type=float, nargs="*", default=[0.125, 0.25, 0.5],
                   help="intra-expert ratios: shares of each expert's width dropped (default %(default)s)")
    p.add_argument("--skip", type=float, nargs="*", default=[1 / 6, 1 / 3],
                   help="skipping: fractions of routed slots dropped (default 1/6 and 1/3)")
    p.add_argument("--long", action="store_true", help="also bs 16 at 2048/2048 (the seed's setting), first model")
    p.add_argument("--skip-calibration", choices=("timed", "decode", "random"), default="timed",
                   help="where the --skip fractions' thresholds come from. timed (default): the greedy decode steps "
                        "of the first --bs's own timed prompts (the fraction is exact for that run only); decode: "
                        "the decode steps of SKIP_CALIB_ROWS other random prompts; random: the random-token windows "
                        "that inter / intra pruning calibrate on (the study before the thirty-eighth session)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each timing (default %(default)s)")
    p.add_argument("--iters", type=int, default=1, help="timed runs, the median kept (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=330, help="stop starting new timings after this many seconds")
    p.add_argument("--ceilings", help="JSON of measured ceilings: read if it exists, else measured and written")
    p.add_argument("--check-only", action="store_true", help="correctness on the real shapes, no timing")
    p.add_argument("--smoke", action="store_true",
                   help="CPU (needs TRITON_INTERPRET=1): tiny cards, fp32, a few tokens, the same code; it sets its "
                        "own --models, --bs, --input-len, --output-len, --inter, --intra, --skip, --warmup, --iters")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.bs, a.input_len, a.output_len = ["olmoe-tiny", "qwen2-moe-tiny"], [2], 4, 3
        a.inter, a.intra, a.skip, a.warmup, a.iters = [0.5], [0.25], [1 / 3], 0, 1
    return a


def settings(smoke: bool) -> RunSettings:
    """The GPU runs the fused kernels under CUDA graphs; the CPU smoke times the grouped path (interpreted
    Triton takes seconds a step) and checks the fused one on the layer only."""
    return RunSettings(device="cpu" if smoke else "auto", dtype="fp32" if smoke else "auto",
                       experts="grouped" if smoke else "fused")


def variants(model, calib, a) -> list:
    """(name, kind, value) for every variant; skip fractions become thresholds from the calibration."""
    out = [("none", None, None)]
    out += [(f"inter {r:.1%}".replace(".0%", "%"), "inter", r) for r in a.inter]
    out += [(f"intra {r:.1%}".replace(".0%", "%"), "intra", r) for r in a.intra]
    for f in a.skip:
        beta, got = skip_threshold_for(calib, f)
        out.append((f"skip {f:.0%}", "skip", beta))
        print(f"#   skip {f:.0%}: beta {beta:.3f} drops {got:.1%} of the calibration slots")
    return out


def make_variant(base, kind, value, seed: int):
    """A pruned deep copy (inter/intra; random ranking: only the shapes are timed) or the base itself."""
    if kind in ("inter", "intra"):
        model = copy.deepcopy(base)
        prune_(model, None, kind, "random", value, seed=seed)
        return model
    return base


# ---- correctness on the real shapes ---------------------------------------------------------------------

def check_layer(model, beta: float, dev) -> list[str]:
    """Fused and grouped against the float32 loop oracle on the first MoE layer, skipping on."""
    problems = []
    _, moe = moe_layers(model)[0]
    ex = moe.experts
    oracle_ex = Experts.from_tensors(ex.w13.float(), ex.w2.float())
    tol = 2e-2 if ex.w13.dtype == torch.bfloat16 else 1e-4
    for T in ((1, 8) if dev.type == "cpu" else (1, 16, 64)):      # interpreted Triton is slow: fewer on a CPU
        x = torch.randn(T, ex.w13.shape[2], device=dev, dtype=ex.w13.dtype)
        with torch.inference_mode():
            w, ids = moe.router(x)
            w, ids = skip_small(w, ids, beta)
            want = EXPERT_PATHS["loop"](x.float(), oracle_ex, ids, w)
            for path in ("fused", "grouped"):
                if path == "grouped" and dev.type == "cpu" and ex.hidden * x.element_size() % 16:
                    continue
                got = EXPERT_PATHS[path](x, ex, ids, w).float()
                err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
                if not err <= tol:
                    problems.append(f"{path} T={T}: rel err {err:.2e} > {tol:g}")
    return problems


def check_graphs(model, cfg, dev) -> list[str]:
    """Graphed decode == the eager static step it captured, token for token (GPU only)."""
    if dev.type != "cuda":
        return []
    prompts = torch.randint(0, cfg.vocab_size, (4, 11), device=dev, generator=torch.Generator(dev).manual_seed(0))
    gen = Generator(model, 4, 11 + 9)
    enable_graphs(gen, prefill_lengths=[11])
    graphed = gen.generate(prompts, 8)
    eager = Generator(model, 4, 11 + 9)
    tok, out = eager.prefill(prompts), []
    with torch.inference_mode():
        for _ in range(8):
            out.append(tok)
            tok = eager.eager_step(tok, None)
    same = torch.equal(graphed, torch.stack(out, 1))
    return [] if same else ["graphed decode tokens differ from the eager step"]


# ---- timing ----------------------------------------------------------------------------------------------

def skipped_fraction(model, cfg, prompts, dev, steps: int) -> float:
    """Share of routed slots --skip-threshold dropped over `steps` eager decode steps after the bench's prompts (the
    prefill not counted: a decode step's bytes follow its own tokens' routing)."""
    gen = Generator(model, len(prompts), len(prompts[0]) + steps + 1)
    tok = gen.prefill(prompts)
    with counting_skips(SkipCount(cfg.n_layers, dev)) as c:
        for _ in range(steps):
            tok = gen.decode(tok)
    return c.fraction()


def time_variant(model, s, ceilings, bs, n_in, n_out, a) -> dict:
    from minimoe.bench.prompts import make_prompts
    args = argparse.Namespace(warmup=a.warmup, iters=a.iters, profile=False)
    res = run_config(args, model, model.cfg, s, ceilings, bs, n_in, n_out, s.use_graphs, None)
    prompts = make_prompts(model.cfg.vocab_size, bs, n_in, s.seed)
    res["skipped"] = (skipped_fraction(model, model.cfg, prompts, s.torch_device, n_out) if s.skip_threshold
                      else 0.0)
    return res


def row(model_name, name, res, base, ok: bool) -> dict:
    m, r = res["metrics"], res["roofline"]
    return {"model": model_name, "variant": name, "checked": ok, "bs": res["batch"], "in": res["input_len"], "out": res["output_len"],
            "out_tok_s": m["output_tok_s"], "speedup": m["output_tok_s"] / base if base else None,
            "itl_ms": m["itl_median_ms"], "step_GB": r["decode_step_bytes"]["total"] / 1e9,
            "expert_GB": r["decode_step_bytes"]["experts"] / 1e9, "floor_ms": r["decode_step_floor_ms"],
            "pct_floor": r["decode_pct_of_floor"], "touched": r["experts_touched_per_layer"],
            "skipped": res["skipped"], "flags": r["flags"]}


def print_rows(rows: list) -> None:
    head = f"{'model':12} {'variant':10} {'bs':>3} {'in/out':>9} {'tok/s':>9} {'x none':>6} {'ITL ms':>7} " \
           f"{'GB/step':>7} {'exp GB':>6} {'floor ms':>8} {'%floor':>6} {'touched':>7} {'skipped':>7} check"
    print(head)
    for r in rows:
        x = "-" if r["speedup"] is None else f"{r['speedup']:.2f}"
        print(f"{r['model']:12} {r['variant']:10} {r['bs']:>3} {str(r['in']) + '/' + str(r['out']):>9} "
              f"{r['out_tok_s']:>9.1f} {x:>6} {r['itl_ms'] or 0:>7.3f} {r['step_GB']:>7.3f} {r['expert_GB']:>6.3f} "
              f"{r['floor_ms']:>8.3f} {r['pct_floor'] or 0:>5.0f}% {r['touched']:>7.1f} {r['skipped']:>6.1%} "
              f"{'ok' if r['checked'] else 'FAILED'}")


def study(name, a, ceilings, started, rows, checks, save) -> None:
    s = settings(a.smoke)
    s.resolve_()
    dev = s.torch_device
    base, cfg, _ = build_model(name, "dummy", dtype=s.torch_dtype, device=s.device, settings=s, seed=s.seed)
    ids = torch.randint(0, cfg.vocab_size, (8 * min(256, 4 * a.input_len),), generator=torch.Generator().manual_seed(0))
    calib = calibrate(base, ids, window=min(256, 4 * a.input_len), batch=8, about={"source": "random tokens"})
    print(f"# {name}: E={cfg.n_experts} K={cfg.top_k} I={cfg.moe_intermediate_size}, calibrated on {ids.numel()} "
          f"random tokens")
    skip_calib = calib
    if a.skip and a.skip_calibration != "random":
        from minimoe.bench.prompts import make_prompts
        timed = a.skip_calibration == "timed"          # the first --bs's own prompts, as time_variant makes them
        rows_, seed = (a.bs[0], s.seed) if timed else (SKIP_CALIB_ROWS, s.seed + 1)
        prompts = torch.tensor(make_prompts(cfg.vocab_size, rows_, a.input_len, seed))
        skip_calib = calibrate_decode(base, prompts, a.output_len, about={"source": "greedy decode"})
        print(f"#   skip thresholds from {skip_calib.tokens} decode tokens ({rows_} "
              f"{'of the timed bs ' + str(a.bs[0]) + ' run' if timed else 'other random'} prompts of {a.input_len}, "
              f"{a.output_len} greedy steps each)")
    plan = variants(base, skip_calib, a)
    for vname, kind, value in plan:                       # correctness first, on every variant's shapes
        model = make_variant(base, kind, value, s.seed)
        s.skip_threshold = value if kind == "skip" else 0.0
        probs = check_layer(model, s.skip_threshold, dev) + check_graphs(model, model.cfg, dev)
        checks.append({"model": name, "variant": vname, "problems": probs})
        print(f"#   check {vname}: {'ok' if not probs else '; '.join(probs)}")
        del model
    s.skip_threshold = 0.0
    if a.check_only:
        return
    lengths = [(b, a.input_len, a.output_len) for b in a.bs]
    if a.long and name == a.models[0]:
        lengths.append((16, 2048, 2048))
    for bs, n_in, n_out in lengths:
        long = n_in >= 2048
        base_tok = None
        for vname, kind, value in plan:
            if long and vname not in ("none", "inter 50%", "intra 25%", "skip 33%"):
                continue
            if time.time() - started > a.budget_s:
                print(f"#   {vname} bs{bs} {n_in}/{n_out}: skipped (budget of {a.budget_s:.0f} s spent)")
                continue
            model = make_variant(base, kind, value, s.seed)
            s.skip_threshold = value if kind == "skip" else 0.0
            try:
                res = time_variant(model, s, ceilings, bs, n_in, n_out, a)
            except Exception as e:                         # report and go on: one failure must not end the study
                print(f"#   {vname} bs{bs}: FAILED {type(e).__name__}: {e}")
                continue
            finally:
                s.skip_threshold = 0.0
                del model
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            if vname == "none":
                base_tok = res["metrics"]["output_tok_s"]
            ok = not any(c["problems"] for c in checks if c["model"] == name and c["variant"] == vname)
            rows.append(row(name, vname, res, base_tok, ok))
            print_rows(rows[-1:])
            save()                                        # after every row: a time cap loses nothing measured


def verdicts(rows: list) -> list[str]:
    out = []
    for model, bs, variant, need in TARGETS:
        hit = [r for r in rows if r["model"] == model and r["bs"] == bs and r["variant"] == variant and r["in"] < 2048]
        if not hit or hit[0]["speedup"] is None:
            out.append(f"{model} bs{bs} {variant} >= {need}x: NOT MEASURED")
        else:
            x, ok = hit[0]["speedup"], hit[0]["checked"]
            verdict = "MET" if x >= need and ok else "MISSED" if ok else "NOT JUDGED (correctness check failed)"
            out.append(f"{model} bs{bs} {variant} >= {need}x: {x:.2f}x {verdict}")
    return out


def main(argv=None) -> int:
    a = parse(argv)
    if a.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        print("error: --smoke runs the Triton kernels on the CPU: set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = settings(a.smoke).resolve().torch_device
    if a.ceilings and Path(a.ceilings).exists():
        ceilings = json.loads(Path(a.ceilings).read_text())
    else:
        ceilings = measure_ceilings(device)
        if a.ceilings:
            Path(a.ceilings).write_text(json.dumps(ceilings))
    print(f"# ceilings: {ceilings['bandwidth_GBps']:.0f} GB/s, {ceilings['matmul_TFLOPs']:.1f} TFLOP/s; "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (smoke)'}")
    rows, checks = [], []

    def save(targets=()):
        (out / "prune_speed.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows, "checks": checks,
                                                          "targets": list(targets), "args": vars(a)},
                                                         indent=1, default=str))
    for name in a.models:
        try:
            study(name, a, ceilings, started, rows, checks, save)
        except Exception as e:                              # the next model still runs
            print(f"# {name}: FAILED {type(e).__name__}: {e}")
            checks.append({"model": name, "variant": "all", "problems": [f"{type(e).__name__}: {e}"]})
    print("# all rows")
    print_rows(rows)
    lines = verdicts(rows) if not a.smoke else ["(smoke run: targets not judged)"]
    for line in lines:
        print(f"# target {line}")
    bad = [c for c in checks if c["problems"]]
    print(f"# correctness: {len(checks) - len(bad)} of {len(checks)} variants ok; {time.time() - started:.0f} s")
    save(lines)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
