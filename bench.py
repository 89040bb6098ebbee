"""bench.py: MoE-Inference-Bench's measurements inside one engine, one switch per optimization.

    python bench.py --model olmoe --fused --bs 64              # the headline run
    python bench.py --model olmoe --bs 64 --compare transformers
    python bench.py --model olmoe-tiny                         # any CPU, seconds
    python bench.py --model qwen1.5-moe --sweep --fused        # the paper's bs x length grid
    python bench.py --layer                                    # one MoE layer, every expert path

Prints the machine and its measured ceilings, one table row per configuration (TTFT, ITL, E2E,
tok/s, peak memory, and the roofline beside each), the per-region profile with --profile, and a last
line that is one JSON object with everything. Metric definitions: README.md, "Metrics".
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys

import torch

from minimoe import benchmark, memory
from minimoe.config import RunSettings
from minimoe.families import config_from_hf
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs, graph_safe
from minimoe.instrument import ExpertLoad, profiling
from minimoe.loader import build_model, resolve
from minimoe.roofline import count_params, measure_ceilings
from minimoe.router import ROUTERS
from minimoe.runtime import (UsageError, check_settings, pick_device, pick_dtype, resolve_auto, resolve_gemv,
                             resolve_pdl)

PAPER_LENGTHS = (128, 256, 512, 1024, 2048)
PAPER_BATCHES = (1, 16, 32, 64, 128)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="model card name/alias (models/), checkpoint dir, or hub id")
    p.add_argument("--weights", default="dummy", help="'dummy' (random, real shapes) or a safetensors dir")
    p.add_argument("--bs", type=int, nargs="+", default=[1], help="batch size(s)")
    p.add_argument("--input-len", type=int, nargs="+", default=[128], help="prompt length(s)")
    p.add_argument("--output-len", type=int, nargs="+", default=[128], help="generated tokens (EOS ignored)")
    p.add_argument("--sweep", action="store_true", help="the paper's grid: bs 1,16,32,64,128 x in=out 128..2048")
    p.add_argument("--dtype", default="auto", help="bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N")
    p.add_argument("--experts", default="loop", help="expert path: loop | grouped | fused")
    p.add_argument("--fused", action="store_true", help="shorthand for --experts fused")
    p.add_argument("--attn", default="auto", help="decode attention: sdpa | triton | flash (auto: triton on a "
                                                  "GPU, sdpa on a CPU)")
    p.add_argument("--ops", default="auto", help="RMSNorm(+add), q/k-norm+rope+cache write, router top-k (at decode "
                   "sizes norm + router GEMV + top-k as one): torch "
                                                 "(several kernels each) | triton (one fused kernel each); auto: "
                                                 "triton on a GPU")
    p.add_argument("--gemv", default="auto", help="decode-size projections: torch (cuBLAS after the RMSNorm "
                   "kernel) | triton (Triton GEMVs with the RMSNorm folded in; slower on the H200); auto: torch")
    p.add_argument("--pdl", default="auto", help="Programmatic Dependent Launch for the Triton kernels: on (sm90+) | "
                   "off; auto: off (measured slower on the H200)")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs (graphs are on when the GPU and "
                                                        "the expert path allow)")
    p.add_argument("--eager-prefill", action="store_true", help="graph the decode step only, not the prefill "
                   "(by default a graph is captured per prompt length before timing)")
    p.add_argument("--router", choices=sorted(ROUTERS), help="override the card's router (synthetic ones too)")
    p.add_argument("--topk", type=int, help="route each token to K experts instead of the card's default")
    p.add_argument("--zipf-s", type=float, default=1.2, help="exponent of --router zipf")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--iters", type=int, default=3, help="timed runs; the median E2E run is reported")
    p.add_argument("--profile", action="store_true", help="per-region breakdown of an eager decode step")
    p.add_argument("--compare", choices=["transformers"], help="also time the transformers implementation")
    p.add_argument("--compare-steps", type=int, help="time only this many transformers decode steps and "
                   "extrapolate its E2E as TTFT + (out-1) x median ITL (for slow long runs)")
    p.add_argument("--hf-experts", help="transformers experts implementation (eager, grouped_mm, batched_mm)")
    p.add_argument("--ceilings", help="JSON file with bandwidth_GBps and matmul_TFLOPs (skip measuring)")
    p.add_argument("--json", help="also write the final JSON object to this file")
    p.add_argument("--plot", help="PNG: output tok/s against batch size, one line per length")
    p.add_argument("--load-heatmap", help="PNG: tokens per (layer, expert) over the timed decode")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and prompts")
    p.add_argument("--layer", action="store_true", help="the single-MoE-layer benchmark (minimoe/layer_bench.py)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if "--layer" in argv:          # the layer benchmark has its own flags (minimoe/layer_bench.py)
        return argparse.Namespace(layer=True), [a for a in argv if a != "--layer"]
    args, rest = p.parse_known_args(argv)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.model:
        p.error("--model is required")
    return args, rest


def validate(args, cfg, device, dtype) -> RunSettings:
    """Every check that can fail, before any heavy work."""
    if args.fused:
        if args.experts not in ("loop", "fused"):
            raise UsageError("--fused contradicts --experts " + args.experts)
        args.experts = "fused"
    if args.sweep:
        args.bs, args.input_len, args.output_len = list(PAPER_BATCHES), list(PAPER_LENGTHS), None
    for name in ("bs", "input_len", "output_len"):
        for v in getattr(args, name) or []:
            if v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    for n_in in args.input_len:
        for n_out in args.output_len or args.input_len:
            if n_in + n_out - 1 > cfg.max_position_embeddings:   # the last token is sampled, never fed
                raise UsageError(f"{n_in} + {n_out} tokens exceed the model's max_position_embeddings "
                                 f"{cfg.max_position_embeddings}")
    if args.compare_steps is not None and args.compare_steps < 1:
        raise UsageError("--compare-steps must be at least 1")
    if args.warmup < 0 or args.iters < 1:
        raise UsageError("--warmup must be >= 0 and --iters >= 1")
    attn, fused_ops = resolve_auto(args.attn, args.ops, device)
    settings = RunSettings(experts=args.experts, attn=attn, fused_ops=fused_ops, router=args.router,
                           top_k=args.topk, zipf_s=args.zipf_s, gemv=resolve_gemv(args.gemv, device),
                           pdl=resolve_pdl(args.pdl, device))
    check_settings(settings, cfg, device, dtype)
    if args.compare and cfg.family == "deepseek":
        raise UsageError("--compare transformers: DeepSeekMoE-16B is remote code, which minimoe never runs")
    return settings


def grid(args):
    if args.output_len is None:        # the paper runs input length = output length
        return [(b, n, n) for b in args.bs for n in args.input_len]
    return list(itertools.product(args.bs, args.input_len, args.output_len))


def versions(device) -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    if device.type == "cuda":
        v["gpu"] = torch.cuda.get_device_name(device)
        v["cuda"] = torch.version.cuda
    else:
        v["gpu"] = None
        v["cpu"] = platform.processor() or platform.machine()
    return v


def load_ceilings(args, device) -> dict:
    if args.ceilings:
        try:
            with open(args.ceilings) as f:
                c = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--ceilings {args.ceilings}: {e}") from e
        if not {"bandwidth_GBps", "matmul_TFLOPs"} <= set(c):
            raise UsageError(f"{args.ceilings} needs bandwidth_GBps and matmul_TFLOPs")
        return {**c, "source": args.ceilings}
    return measure_ceilings(device)


def print_header(v, cfg, pc, settings, ceilings, graphs, dtype):
    where = v["gpu"] or v.get("cpu")
    print(f"# minimoe bench | {where} | torch {v['torch']} | triton {v['triton']} | CUDA {v.get('cuda')}")
    print(f"# ceilings ({ceilings['source']}): bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s "
          f"(copy {ceilings.get('copy_GBps', 0):.0f}, read {ceilings.get('read_GBps', 0):.0f}, "
          f"stream {_f(ceilings.get('stream_read_GBps'), '.0f')}), "
          f"matmul {ceilings['matmul_TFLOPs']:.1f} TFLOP/s")
    moe = f"E={cfg.n_experts} K={settings.top_k or cfg.top_k} I={cfg.moe_intermediate_size}" if cfg.is_moe else "dense"
    print(f"# model {cfg.extra.get('name') or cfg.family} ({cfg.family}): L={cfg.n_layers} D={cfg.hidden_size} "
          f"{moe} attn={cfg.attention} | params {pc.total / 1e9:.3f}B total, {pc.active(cfg, settings.top_k) / 1e9:.3f}B active")
    print(f"# run: dtype={str(dtype).replace('torch.', '')} experts={settings.experts} attn={settings.attn} "
          f"ops={'triton' if settings.fused_ops else 'torch'} gemv={'triton' if settings.gemv else 'torch'} "
          f"pdl={'on' if settings.pdl else 'off'} "
          f"graphs={graphs} router={settings.router or cfg.router}")


COLUMNS = ("config", "TTFT ms", "ITL p50", "ITL p90", "E2E s", "out tok/s", "paper tok/s", "prefill tok/s",
           "mem GiB", "floor tok/s", "%floor", "%decode", "%prefill")


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def row(label, m, r, mem):
    return (label, f"{m['ttft_ms']:.1f}", _f(m['itl_median_ms'], ".3f"), _f(m['itl_p90_ms'], ".3f"),
            f"{m['e2e_s']:.3f}", f"{m['output_tok_s']:.1f}", f"{m['throughput_tok_s']:.1f}",
            f"{m['prefill_tok_s']:.0f}", f"{mem:.1f}" if mem is not None else "-",
            f"{r['output_tok_s_floor']:.0f}" if r else "-", f"{r['e2e_pct_of_floor']:.0f}%" if r else "-",
            _f(r['decode_pct_of_floor'], ".0f") + "%" if r and r['decode_pct_of_floor'] else "-", f"{r['prefill_pct_of_peak']:.0f}%" if r else "-")


def print_table(rows):
    widths = [max(len(str(r[i])) for r in [COLUMNS] + rows) for i in range(len(COLUMNS))]
    for r in [COLUMNS] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def measure(gen, prompts, out_len, warmup, iters, use_graphs, prefill_graph=False):
    if use_graphs and gen.graphs is None:
        enable_graphs(gen, prefill_lengths=[prompts.shape[1]] if prefill_graph else [])
    for _ in range(warmup):
        benchmark.timed_generation(gen, prompts, out_len)
    runs = [benchmark.timed_generation(gen, prompts, out_len) for _ in range(iters)]
    return sorted(runs, key=lambda r: r["e2e_ms"])[len(runs) // 2]


def make_prompts(args, cfg, device):
    def prompts_of(b, n_in):
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        return torch.randint(0, cfg.vocab_size, (b, n_in), generator=g).to(device)
    return prompts_of


def run_config(args, model, cfg, settings, ceilings, device, dtype, b, n_in, n_out, use_graphs, load):
    wbytes = torch.finfo(dtype).bits // 8
    memory.check_request(cfg, sum(p.numel() * p.element_size() for p in model.parameters()), b, n_in, n_out,
                         wbytes, device, settings.top_k, weights_resident=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = Generator(model, b, n_in + n_out)
    prompts = make_prompts(args, cfg, device)(b, n_in)
    run = measure(gen, prompts, n_out, args.warmup, args.iters, use_graphs, not args.eager_prefill)
    m = benchmark.summarize(run, b, n_in, n_out)
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    touched = benchmark.touched_experts(gen, prompts)
    r = benchmark.roofline(cfg, b, n_in, n_out, touched, ceilings, m, wbytes, settings.top_k)
    out = {"batch": b, "input_len": n_in, "output_len": n_out, "metrics": m, "roofline": r, "peak_mem_GiB": mem,
           "itl_ms": run["itl_ms"]}
    if args.profile:
        out["profile"] = benchmark.profile_decode(gen, prompts, min(8, max(1, n_out - 2)))
    if load is not None:              # the router is observed from Python: run this one eagerly
        gen.reset()
        saved, gen.graphs, gen.prefill_graphs = (gen.graphs, gen.prefill_graphs), None, {}
        with profiling(None, load):
            benchmark.timed_generation(gen, prompts, n_out)
        gen.graphs, gen.prefill_graphs = saved
    return out


def compare_transformers(args, card, model, dtype, device, results, prompts_of):
    """Time transformers on every configuration; same weights when both models fit in memory."""
    from minimoe import hf_compare
    hf, shared = hf_compare.build_peer(model, card, dtype, device, args.hf_experts)
    rows = []
    for res in results:
        b, n_in, n_out = res["batch"], res["input_len"], res["output_len"]
        prompts = prompts_of(b, n_in)
        label = f"bs{b} {n_in}/{n_out}"
        try:
            hf_compare.timed_hf_generation(hf, prompts, min(n_out, 3))            # warm-up
            run = hf_compare.timed_hf_generation(hf, prompts, n_out, args.compare_steps)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            res["transformers"] = {"error": "out of memory"}
            rows.append((f"transformers {label}", "out of memory") + ("",) * (len(COLUMNS) - 2))
            continue
        m = benchmark.summarize(run, b, n_in, n_out)
        res["transformers"] = {**m, "weights": "same" if shared else "separate random init (both do not fit)",
                               "decode_steps_timed": run["steps_timed"]}
        res["speedup_vs_transformers"] = res["metrics"]["output_tok_s"] / m["output_tok_s"]
        rows.append(row(f"transformers {label}", m, None, None))
        rows.append((f"ratio {label}", "", "", "", "", f"{res['speedup_vs_transformers']:.1f}x")
                    + ("",) * (len(COLUMNS) - 6))
    return rows


def print_profile(label, prof):
    print(f"# profile {label}: eager decode step {prof['step_ms']:.3f} ms, regions cover "
          f"{prof['coverage_pct']:.0f}%  {prof['notes'] or ''}")
    for name, v in sorted(prof["regions"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
        print(f"#   {name:10s} {v['ms_per_step']:8.3f} ms  {v['calls_per_step']:6.1f} calls  {v['pct']:5.1f}%")


def main(argv=None) -> int:
    args, rest = parse_args(argv)
    if args.layer:
        from minimoe import layer_bench
        return layer_bench.main(rest)
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        card, _ = resolve(args.model)
        cfg = config_from_hf(card)
        settings = validate(args, cfg, device, dtype)
        if args.eager or device.type != "cuda" or (cfg.is_moe and not graph_safe(settings.experts)):
            why = "--eager" if args.eager else ("no GPU" if device.type != "cuda" else f"{settings.experts} path syncs")
            use_graphs, graphs = False, f"off ({why})"
        else:
            use_graphs, graphs = True, "decode" if args.eager_prefill else "decode+prefill"
        torch.manual_seed(args.seed)
        model, cfg, _ = build_model(args.model, args.weights, dtype=dtype, device=device, settings=settings,
                                    seed=args.seed)
        ceilings = load_ceilings(args, device)
    except (ValueError, MemoryError, NotImplementedError, OSError) as e:   # UsageError, CheckpointError
        print(f"error: {e}", file=sys.stderr)
        return 2
    pc = count_params(cfg)
    v = versions(device)
    print_header(v, cfg, pc, settings, ceilings, graphs, dtype)
    load = ExpertLoad(cfg.n_layers, cfg.n_experts, device) if (args.load_heatmap and cfg.is_moe) else None
    results, rows = [], []
    configs = grid(args)
    from tqdm import tqdm
    for b, n_in, n_out in tqdm(configs, desc="configs", disable=len(configs) < 2, file=sys.stderr):
        label = f"bs{b} {n_in}/{n_out}"
        try:
            res = run_config(args, model, cfg, settings, ceilings, device, dtype, b, n_in, n_out, use_graphs, load)
        except MemoryError as e:
            print(f"error: {label}: {e}", file=sys.stderr)
            return 2
        rows.append(row(f"minimoe {label}", res["metrics"], res["roofline"], res["peak_mem_GiB"]))
        for flag in res["roofline"]["flags"]:
            print(f"# WARNING {label}: {flag}", file=sys.stderr)
        results.append(res)
    if load is not None:
        summary_load = load.summary()
        load.heatmap(args.load_heatmap)
    if args.compare:
        rows += compare_transformers(args, card, model, dtype, device, results, make_prompts(args, cfg, device))
    print_table(rows)
    for res in results:
        if "profile" in res:
            print_profile(f"bs{res['batch']} {res['input_len']}/{res['output_len']}", res["profile"])
    summary = {"versions": v, "ceilings": ceilings, "model": cfg.extra.get("name") or args.model,
               "config": {k: getattr(cfg, k) for k in ("family", "n_layers", "hidden_size", "n_experts", "top_k",
                                                        "moe_intermediate_size", "attention")},
               "params": {"total": pc.total, "active": pc.active(cfg, settings.top_k)},
               "settings": vars(settings), "graphs": graphs, "dtype": str(dtype), "results": results}
    if load is not None:
        summary["expert_load"] = summary_load
    if args.plot:
        benchmark.plot_throughput(args.plot, results)
    line = json.dumps(summary, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
