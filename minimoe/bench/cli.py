"""bench.py / `python -m minimoe bench`: MoE-Inference-Bench's measurements inside one engine.

    python bench.py --model olmoe --fused --bs 64              # the headline run
    python bench.py --model olmoe --bs 64 --compare transformers
    python bench.py --model olmoe-tiny                         # any CPU, seconds
    python bench.py --model qwen1.5-moe --sweep --fused        # the paper's bs x length grid
    python bench.py --model olmoe --fused --bs 64 --input-len-dist uniform:64-192   # ragged prompts
    python bench.py --layer                                    # one MoE layer, every expert path

Prints the machine and its measured ceilings, what ran (weights, dtype, every resolved switch), one
table row per configuration (TTFT, ITL, E2E, tok/s, peak memory, non-finite logits, and the roofline
beside each), the per-region profile with --profile, and a last line that is one JSON object with
everything. Metric definitions: README.md, "Metrics". Every check that can fail runs before the model
is built: flags, lengths, output paths, ceilings file, memory for weights + KV cache + activations.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys

import torch
from tqdm import tqdm

from .. import prune_cli
from .. import settings as run_settings
from ..cli import ArgumentParser, add_model_args, check_output_path, check_plot_path, out_path, quiet_broken_pipe
from ..gate import SkipCount, counting_skips
from ..generate import Generator
from ..graphs import enable_graphs, graph_safe
from ..instrument import ExpertLoad, profiling
from ..loader import build_model, read_config, resolve, weights_source
from ..runtime import UsageError, check_settings, resolve_settings
from . import layer, memory, timing
from . import plans                    # --ep / --tp under torchrun: this rank's rows, rank 0 reports
from . import spec as spec_bench
from .prompts import length_sampler, make_prompts

# Module attributes set before the run by scripts/bench_knob.py ("module.ATTR" -> value): recorded under "knobs" in the
# JSON line, so two A/B result files say which is which.
KNOBS: dict = {}
from .report import print_header, print_profile, print_table, row, versions, COLUMNS
from .roofline import count_params, measure_ceilings

PAPER_LENGTHS = (128, 256, 512, 1024, 2048)
PAPER_BATCHES = (1, 16, 32, 64, 128)


def parser(prog: str = "bench.py") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                epilog="python bench.py --layer [...]: one MoE layer, every expert path (its own "
                                       "flags: bench.py --layer --help)")
    add_model_args(p)
    p.add_argument("--bs", type=int, nargs="+", help="batch size(s) (default 1; the paper's with --sweep)")
    p.add_argument("--input-len", type=int, nargs="+", help="prompt length(s) (default: 128)")
    p.add_argument("--output-len", type=int, nargs="+", help="generated tokens, EOS ignored (default: 128)")
    p.add_argument("--input-len-dist", help="ragged prompts: uniform:LO-HI, or file:PATH (one length per line); "
                                            "replaces --input-len")
    p.add_argument("--sweep", action="store_true", help="the paper's grid: in = out over 128..2048, bs 1,16,32,64,128 "
                                                       "(or the given --bs)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default: 1)")
    p.add_argument("--iters", type=int, default=3, help="timed runs; the median E2E run is reported (default: 3)")
    p.add_argument("--profile", action="store_true", help="per-region breakdown of an eager decode step")
    p.add_argument("--compare", choices=["transformers"], help="also time the transformers implementation")
    p.add_argument("--compare-steps", type=int, help="with --compare: time only this many transformers decode steps "
                                                    "and extrapolate its E2E as TTFT + (out-1) x median ITL")
    p.add_argument("--hf-experts", choices=["eager", "grouped_mm", "batched_mm"],
                   help="with --compare: transformers' experts implementation")
    p.add_argument("--ceilings", help="JSON file with bandwidth_GBps and matmul_TFLOPs (skip measuring)")
    p.add_argument("--json", type=out_path,
                   help="also write the final JSON object to this file (it is printed as the last line anyway; '-' "
                        "writes no file)")
    p.add_argument("--plot", type=out_path, help="image (.png, .svg, .pdf, ...): output tok/s against batch size, "
                                                 "one line per length")
    p.add_argument("--load-heatmap", "--heatmap", type=out_path, help="image (.png, .svg, .pdf, ...): tokens per (layer, expert) "
                                                         "over one generation")
    run_settings.add_args(p)
    prune_cli.add_prune_args(p, "random:2048, random prompts")
    return p


def parse_args(argv, prog: str = "bench.py") -> argparse.Namespace:
    p = parser(prog)
    args = p.parse_args(argv)
    if args.compare is None and (args.compare_steps is not None or args.hf_experts):
        p.error("--compare-steps and --hf-experts only mean something with --compare transformers")
    if args.router != "zipf" and args.zipf_s != run_settings.RunSettings.zipf_s:
        p.error("--zipf-s only means something with --router zipf")
    given = [f for f, v in (("--input-len", args.input_len), ("--output-len", args.output_len),
                            ("--input-len-dist", args.input_len_dist)) if v is not None]
    if args.sweep and given:
        p.error(f"--sweep runs the paper's equal lengths (128..2048 in and out); it contradicts {given[0]}")
    if args.input_len is not None and args.input_len_dist:
        p.error("--input-len-dist replaces --input-len: give one of them")
    args.input_len = args.input_len or [128]
    args.output_len = args.output_len or [128]
    return args


def grid(args) -> list[tuple]:
    """(batch, input length or a ragged length sampler's name, output length) for every configuration."""
    batches = args.bs or (list(PAPER_BATCHES) if args.sweep else [1])
    if args.sweep:                      # the paper runs input length = output length
        return [(b, n, n) for b in batches for n in PAPER_LENGTHS]
    ins = [args.input_len_dist] if args.input_len_dist else args.input_len
    return list(itertools.product(batches, ins, args.output_len))


def validate(args, cfg) -> list[tuple]:
    """Every check that can fail, on exactly the configurations that will run."""
    configs = grid(args)
    for b, n_in, n_out in configs:
        for flag, value in (("--bs", b), ("--output-len", n_out)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        longest = length_sampler(n_in).longest if isinstance(n_in, str) else n_in
        if longest < 1:
            raise UsageError(f"--input-len must be at least 1, got {longest}")
        if longest + n_out - 1 > cfg.max_position_embeddings:    # the last token is sampled, never fed
            raise UsageError(f"{longest} + {n_out} tokens need {longest + n_out - 1} positions, more than the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}"
                             + (" (--sweep includes 2048/2048)" if args.sweep else ""))
    if args.compare_steps is not None and args.compare_steps < 1:
        raise UsageError("--compare-steps must be at least 1")
    if args.warmup < 0 or args.iters < 1:
        raise UsageError(f"--warmup must be >= 0 and --iters >= 1 (got --warmup {args.warmup}, --iters {args.iters})")
    if args.compare and cfg.family == "deepseek":
        raise UsageError("--compare transformers: DeepSeekMoE-16B is remote code, which minimoe never runs")
    if args.compare and (args.quant != "none" or getattr(args, "prune", None) or args.ep * args.tp > 1):
        raise UsageError("--compare transformers shares minimoe's bf16 weights with the peer: it cannot follow "
                         "--quant, --prune, --ep or --tp")
    if args.load_heatmap and not cfg.is_moe:
        raise UsageError(f"--load-heatmap shows routed experts' load: {args.model} is a dense model")
    check_output_path(args.json, "--json")
    for flag in ("plot", "load_heatmap"):
        check_plot_path(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.draft:
        spec_bench.validate(args, cfg, configs)
    return configs


def read_ceilings(args) -> dict | None:
    """--ceilings FILE -> {bandwidth_GBps, matmul_TFLOPs, ..., source}, checked before the model is built
    (UsageError naming the file and the field); None without the flag (bench.py measures them)."""
    if not args.ceilings:
        return None
    try:
        with open(args.ceilings) as f:
            c = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--ceilings {args.ceilings}: {e}") from e
    if not isinstance(c, dict) or not {"bandwidth_GBps", "matmul_TFLOPs"} <= set(c):
        raise UsageError(f"{args.ceilings} needs bandwidth_GBps and matmul_TFLOPs")
    for key in ("bandwidth_GBps", "matmul_TFLOPs"):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UsageError(f"--ceilings {args.ceilings}: {key} must be a positive number, got {json.dumps(v)}")
    return {**c, "source": args.ceilings}


def measure(gen, prompts, out_len, warmup, iters, use_graphs, prefill_graph=False):
    if use_graphs and gen.graphs is None:
        enable_graphs(gen, prefill_lengths=[max(map(len, prompts))] if prefill_graph else [])
    for _ in range(warmup):
        timing.timed_generation(gen, prompts, out_len)
    runs = [timing.timed_generation(gen, prompts, out_len) for _ in range(iters)]
    return sorted(runs, key=lambda r: r["e2e_ms"])[len(runs) // 2]


def run_config(args, model, cfg, s, ceilings, b, n_in, n_out, use_graphs, load) -> dict:
    device = s.torch_device
    prompts = make_prompts(cfg.vocab_size, b, n_in, s.seed)            # B token lists (ragged or not)
    lens = [len(p) for p in prompts]
    mean_in = sum(lens) / b
    prompts = plans.local_prompts(model, prompts)                     # under EP: this rank's rows only
    memory.check_request(cfg, sum(p.numel() * p.element_size() for p in model.parameters()), len(prompts),
                         max(lens), n_out, s.torch_dtype.itemsize, device, s.top_k, weights_resident=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # the run feeds max(lens) + n_out - 1 positions (the last token is sampled, never fed); one more lets
    # touched_experts decode a step past the prompt when n_out is 1, within the model's positions
    gen = Generator(model, len(prompts), min(max(lens) + n_out, cfg.max_position_embeddings))
    run = measure(gen, prompts, n_out, args.warmup, args.iters, use_graphs, not s.eager_prefill)
    m = timing.summarize(run, b, mean_in, n_out)
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    seen = SkipCount(cfg.n_layers, device) if s.skip_threshold else None     # what skipping drops, one step
    touched = timing.touched_experts(gen, prompts, max(lens), b, seen)
    r = timing.roofline(cfg, b, mean_in, n_out, touched, plans.aggregate_ceilings(ceilings, s), m,
                        s.torch_dtype.itemsize, s.top_k)
    out = {"batch": b, "input_len": n_in, "input_lens": lens if isinstance(n_in, str) else None,
           "output_len": n_out, "metrics": m, "roofline": r, "peak_mem_GiB": mem, "itl_ms": run["itl_ms"],
           "nonfinite_logit_rows": run["nonfinite_rows"]}
    if seen is not None and int(seen.slots.sum()):
        out["skipped_slots"] = seen.fraction()      # share of routed slots dropped in touched_experts' decode step
    if args.profile:
        with counting_skips(SkipCount(cfg.n_layers, device)) as skips:
            out["profile"] = timing.profile_decode(gen, prompts, min(8, max(1, n_out - 2)))
        if s.skip_threshold:
            out["profile"]["notes"]["skipped"] = f"{skips.fraction():.1%} of routed slots"
    if load is not None:              # the router is observed from Python: run this one eagerly
        gen.reset()
        saved, gen.graphs, gen.prefill_graphs = (gen.graphs, gen.prefill_graphs), None, {}
        with profiling(None, load):
            timing.timed_generation(gen, prompts, n_out)
        gen.graphs, gen.prefill_graphs = saved
    return out


def compare_transformers(args, card, model, s, results) -> list:
    """Time transformers on every configuration; same weights when both models fit in memory."""
    from . import hf_compare
    hf, shared = hf_compare.build_peer(model, card, s.torch_dtype, s.torch_device, args.hf_experts)
    rows = []
    for res in results:
        b, n_in, n_out = res["batch"], res["input_len"], res["output_len"]
        label = f"bs{b} {n_in}/{n_out}"
        if res["input_lens"] is not None:
            rows.append((f"transformers {label}", "skipped: ragged prompts") + ("",) * (len(COLUMNS) - 2))
            continue
        prompts = torch.tensor(make_prompts(card["vocab_size"], b, n_in, s.seed), device=s.torch_device)
        try:
            hf_compare.timed_hf_generation(hf, prompts, min(n_out, 3))            # warm-up
            run = hf_compare.timed_hf_generation(hf, prompts, n_out, args.compare_steps)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            res["transformers"] = {"error": "out of memory"}
            rows.append((f"transformers {label}", "out of memory") + ("",) * (len(COLUMNS) - 2))
            continue
        m = timing.summarize(run, b, n_in, n_out)
        res["transformers"] = {**m, "weights": "same" if shared else "separate random init (both do not fit)",
                               "decode_steps_timed": run["steps_timed"]}
        res["speedup_vs_transformers"] = res["metrics"]["output_tok_s"] / m["output_tok_s"]
        rows.append(row(f"transformers {label}", m, None, None))
        rows.append((f"ratio {label}", "", "", "", "", f"{res['speedup_vs_transformers']:.1f}x")
                    + ("",) * (len(COLUMNS) - 6))
    return rows


def prepare(args):
    """Everything before the timing: settings, checks, the model, the ceilings."""
    s = resolve_settings(run_settings.from_args(args))
    card, _ = resolve(args.model)
    cfg, folder = read_config(args.model)
    check_settings(s, cfg)
    given = read_ceilings(args)                     # a --ceilings file: checked before the model is built
    prune = prune_cli.prune_request(args)           # --prune: every check before the model is built
    if prune is not None:
        prune_cli.check_request(prune, cfg, s, folder)
    configs = validate(args, cfg)
    if not s.use_graphs or (cfg.is_moe and not graph_safe(s.experts)):
        why = "--eager" if s.eager else ("no GPU" if not s.device.startswith("cuda") else f"{s.experts} path syncs")
        use_graphs, graphs = False, f"off ({why})"
    else:
        use_graphs, graphs = True, "decode" if s.eager_prefill else "decode+prefill"
    plans.check(s, ragged=bool(args.input_len_dist), compare=bool(args.compare))
    if s.ep * s.tp == 1:                            # a plan checks its own shard as it is built (loader)
        memory.check_weights(cfg, s, configs)
    torch.manual_seed(s.seed)
    source = weights_source(args.weights, folder)
    model, cfg, folder = build_model(args.model, args.weights, dtype=s.torch_dtype, device=s.device, settings=s,
                                     seed=s.seed)
    weights = source or "dummy (random, the model's real shapes)"
    if prune is not None:                           # in place; cfg now has the pruned shapes (roofline)
        cfg, note = prune_cli.prune_for_bench(prune, model, folder, s, real=source is not None)
        weights += f"; {note}"
    if not cfg.extra.get("name"):                   # a checkpoint without _name_or_path: named as the user named it
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "name": args.model})
    return s, card, cfg, model, configs, use_graphs, graphs, weights, given or measure_ceilings(s.torch_device)


@quiet_broken_pipe
def main(argv=None, prog: str = "bench.py") -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if "--layer" in argv:          # the layer benchmark has its own flags (bench/layer.py)
        return layer.main([a for a in argv if a != "--layer"])
    args = parse_args(argv, prog)
    try:
        s, card, cfg, model, configs, use_graphs, graphs, weights, ceilings = prepare(args)
        spec = spec_bench.SpecBench(args, s) if s.draft else None       # loads the draft model
    except (ValueError, MemoryError, NotImplementedError, OSError) as e:   # UsageError, CheckpointError
        sys.stderr.write(f"error: {e}\n")          # one write: torchrun's ranks share the terminal
        return 2
    plans.quiet_unless_rank0(args)
    pc = count_params(cfg)
    v = versions(s.torch_device)
    print_header(v, cfg, pc, s, ceilings, graphs, weights)
    load = ExpertLoad.of(cfg, s.device) if (args.load_heatmap and cfg.is_moe) else None
    results, rows = [], []
    for b, n_in, n_out in tqdm(configs, desc="configs", disable=len(configs) < 2, file=sys.stderr):
        label = f"bs{b} {n_in}/{n_out}"
        try:
            res = run_config(args, model, cfg, s, ceilings, b, n_in, n_out, use_graphs, load)
        except MemoryError as e:
            print(f"error: {label}: {e}", file=sys.stderr)
            return 2
        rows.append(row(f"minimoe {label}", res["metrics"], res["roofline"], res["peak_mem_GiB"],
                        res["nonfinite_logit_rows"]))
        for flag in res["roofline"]["flags"]:
            print(f"# WARNING {label}: {flag}", file=sys.stderr)
        results.append(res)
        if spec is not None:      # speculative decoding of the same prompts, timed the same way (bench/spec.py)
            res["speculative"] = spec.run(model, cfg, res, b, n_in, n_out, use_graphs)
            rows += spec.main_rows(res["speculative"], label)
    bad = sum(r["nonfinite_logit_rows"] for r in results)
    if bad:
        print(f"# WARNING: {bad} rows of logits held NaN/inf (argmax turns them into token 0): the tokens of this "
              f"run are not the model's; try --dtype bf16 or fp32", file=sys.stderr)
    if args.compare:
        rows += compare_transformers(args, card, model, s, results)
    print_table(rows)
    if spec is not None:
        spec.print_table()
    for res in results:
        if "skipped_slots" in res:
            print(f"# --skip-threshold {s.skip_threshold:g}, bs{res['batch']} {res['input_len']}/{res['output_len']}: "
                  f"{res['skipped_slots']:.1%} of routed slots dropped in one eager decode step (the roofline's "
                  "touched experts count what is left; --profile counts 8 steps)")
    for res in results:
        if "profile" in res:
            print_profile(f"bs{res['batch']} {res['input_len']}/{res['output_len']}", res["profile"])
    summary = {"versions": v, "ceilings": ceilings, "model": cfg.extra.get("name") or args.model, "weights": weights,
               "config": {k: getattr(cfg, k) for k in ("family", "n_layers", "hidden_size", "n_experts", "top_k",
                                                        "moe_intermediate_size", "attention", "experts_per_layer",
                                                        "moe_width_per_layer")},
               "params": {"total": pc.total, "active": pc.active(cfg, s.top_k)},
               "settings": s.as_json(cfg), "graphs": graphs, "dtype": s.dtype, "results": results}
    req = prune_cli.prune_request(args)             # checked before the build; here as fields a script can filter on
    if req is not None:
        summary["prune"] = {"kind": req.kind, "ratio": req.ratio, "method": req.method, "per_layer": req.per_layer,
                            "calibration": prune_cli.bench_calibration(req)}
    if KNOBS:
        summary["knobs"] = dict(KNOBS)
    if load is not None:
        summary["expert_load"] = plans.load_summary(model, load)
    line = json.dumps(summary, default=str)
    if args.json and args.json != "-":              # the numbers first, then the pictures drawn from them
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    if load is not None:
        plans.heatmap(model, load, args.load_heatmap)
    if args.plot:
        timing.plot_throughput(args.plot, results, title=f"{summary['model']} | {v['gpu'] or v.get('cpu') or 'cpu'} | "
                                                          f"{s.dtype}, experts {s.experts}")
        print(f"# throughput plot written to {args.plot}", file=sys.stderr)
    return 0
