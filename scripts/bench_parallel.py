"""Expert and tensor parallelism on two GPUs: every plan checked against one GPU, then timed beside it.

    torchrun --nproc-per-node 2 scripts/bench_parallel.py --model mixtral --out DIR   (one launch per model)
    torchrun --nproc-per-node 2 scripts/bench_parallel.py --model olmoe-tiny --smoke --out DIR   (CPU, gloo)

Phases (every rank runs every one, in lockstep; rank 0 prints and writes DIR/<model>.json):
  check     the model cut to --check-layers layers (its real widths), float32, random weights: the
            one-process model on every rank against each plan (TP2, EP2 x each dispatch design) on the
            plan's own rows: logits (prefill and decode) within fp32 rounding, the same greedy tokens,
            and the same tokens again from the CUDA-graph-captured decode where the design allows
  exchange  one MoE layer's dispatch + combine (OLMoE's shape: D 2048, K 8, E 64) per design, and a
            tensor-parallel all-reduce, replayed as CUDA graphs: microseconds per layer
  time      bf16, full depth, random weights, --input-len/--output-len: 1 GPU (the batch sizes shared
            between the two GPUs, each alone on its own), TP2, EP2 x each design; graphs where the
            design allows (alltoall syncs with the host: eager). Each row: ITL p50, out tok/s,
            speedup over 1 GPU, the roofline of all the plan's GPUs and the cost model's prediction
            (rows without a graph are host-bound, ~1-2 ms per layer: they decode --eager-output-len tokens)
The random weights of every plan are the values one process draws (parallel.py), so plans compare
token for token. Greedy tokens of bf16 runs are not compared: random weights make near-ties.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import parallel_cost_model as cost                                     # noqa: E402  (scripts/)
from minimoe import allreduce, dispatch, parallel                                 # noqa: E402
from minimoe.bench import cli as bench_cli                             # noqa: E402
from minimoe.bench.roofline import measure_ceilings                    # noqa: E402
from minimoe.generate import Generator                                 # noqa: E402
from minimoe.graphs import enable_graphs                               # noqa: E402
from minimoe.loader import build_model, read_config, resolve           # noqa: E402
from minimoe.placement import Placement                                # noqa: E402
from minimoe.settings import ALLREDUCE_DESIGNS, RunSettings                               # noqa: E402

DESIGNS = ("allgather", "padded", "alltoall")


def say(*a) -> None:
    if dist.get_rank() == 0:
        print(*a, flush=True)


def settings(args, ep=1, tp=1, dtype=None, design="allgather", reduce="nccl", pdl=None) -> RunSettings:
    return RunSettings(device=args.device, dtype=dtype or args.dtype, experts=args.experts, ep=ep, tp=tp,
                       dispatch=design, allreduce=reduce, pdl=pdl or args.pdl, eager=args.device == "cpu").resolve()


def plans(args):
    """(ep, tp, all-reduce) of every 2-GPU model built: TP2 once per --allreduce kind, then EP2 (when
    --designs names any)."""
    return [(1, 2, kind) for kind in args.allreduce] + ([(2, 1, "nccl")] if args.designs else [])


def tp_label(kind: str) -> str:
    return "-" if kind == "nccl" else kind          # "TP2 -" stays the NCCL row (earlier sessions' label)


def build(args, model, s, prepare=None):
    return build_model(model, "dummy", dtype=s.torch_dtype, device=s.device, settings=s, seed=args.seed,
                       prepare=prepare)[0]


def free() -> None:
    gc.collect()                             # generators hold their CUDA graphs in reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    dist.barrier()


# ---- check: every plan against one process, float32 -------------------------------------------------

def cut_model(args) -> str:
    """A config folder of the model with --check-layers layers (dense-first families keep their first)."""
    hf, _ = resolve(args.model)
    hf = {**hf, "num_hidden_layers": args.check_layers}
    folder = Path(tempfile.mkdtemp(prefix=f"cut{dist.get_rank()}-"))
    (folder / "config.json").write_text(json.dumps(hf))
    return str(folder)


def trace(model, prompts, steps: int):
    """Prefill + greedy decode through `append`: (logits [b, S + steps, V] float32, tokens [b, steps])."""
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps + 1)
    logits, tokens = [gen.append(prompts)], []
    for _ in range(steps):
        tokens.append(logits[-1][:, -1].argmax(-1))
        logits.append(gen.append(tokens[-1][:, None]))
    return torch.cat(logits, 1), torch.stack(tokens, 1)


def check_plans(args) -> list[dict]:
    cut = cut_model(args)
    B, S, steps = args.check_batch, args.check_len, args.check_steps
    prompts = torch.randint(0, read_config(cut)[0].vocab_size, (B, S), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = build(args, cut, settings(args, dtype="fp32", pdl="off"), prepare=lambda m: Placement())  # the oracle
        want_logits, want_tokens = trace(ref, prompts.to(ref.embed.weight.device), steps)
    del ref
    free()
    out = []
    for ep, tp, kind in plans(args):
        model = build(args, cut, settings(args, ep, tp, dtype="fp32", reduce=kind))
        rows = model.plan.local_rows(B)
        for design in (args.designs if ep > 1 else (tp_label(kind),)):
            model.settings.dispatch = design if ep > 1 else "allgather"
            row = {"plan": f"ep{ep} tp{tp} {design}", "layers": args.check_layers, "batch": B}
            try:
                with torch.inference_mode():
                    logits, tokens = trace(model, prompts[rows].to(want_logits.device), steps)
                    row["logits_rel_err"] = ((logits - want_logits[rows]).abs().max() / want_logits.abs().max()).item()
                    row["tokens_equal"] = bool((tokens == want_tokens[rows]).all())
                    row["graphed_tokens_equal"] = graphed_tokens(model, prompts[rows], steps, design, want_tokens[rows])
                row["ok"] = row["logits_rel_err"] <= args.check_tol and row["tokens_equal"] \
                    and row["graphed_tokens_equal"] in (True, None)
            except Exception as e:          # reported, and the other plans still run
                row["ok"], row["error"] = False, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            out.append(row)
        del model
        free()
    return out


def graphed_tokens(model, prompts, steps, design, want) -> bool | None:
    """The decode step as one CUDA graph (None where there is no graph: CPU, or the alltoall design)."""
    if not torch.cuda.is_available() or design == "alltoall":
        return None
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps + 1)
    enable_graphs(gen)
    return bool((gen.generate(prompts.to(gen.device), steps) == want).all())


# ---- exchange: one layer's dispatch + combine, and a TP all-reduce ----------------------------------

def exchange_us(args) -> list[dict]:
    D, K, E, dev = 2048, 8, 64, torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    world = dist.get_world_size()
    out = []
    reducers = {}
    for kind in args.allreduce:                                  # collective: every rank, same order
        reducers[kind] = allreduce.make(kind, dist.group.WORLD, dev, (dtype,))
        reducers[kind].setup()
    for T in args.exchange_tokens:
        x = torch.randn(T, D, device=dev, dtype=dtype)
        w = torch.rand(T, K, device=dev)
        ids = torch.rand(T, E, device=dev, generator=None).topk(K).indices
        for design in args.designs:
            s = SimpleNamespace(dispatch=design)
            ex = dispatch.Exchange(parallel.expert_bounds(E, world), dist.group.WORLD, s)

            def layer():
                xr, _, _ = ex.dispatch(None, (x, w, ids))
                return ex.combine(None, None, xr * 1)           # the local experts' stand-in: one copy
            out.append({"what": f"dispatch+combine {design}", "tokens_per_rank": T, "D": D, "K": K, "E": E,
                        "us": timed_us(layer, graph=design != "alltoall")})
        y = torch.randn(T, 4096, generator=torch.Generator().manual_seed(T)).to(dev, dtype)   # same y on every rank
        for kind, reduce in reducers.items():
            ok = torch.equal(reduce(y.clone()), y * world)        # x + x is exact in bf16 / fp32
            label = "all_reduce [T, 4096]" + ("" if kind == "nccl" else f" {kind}")
            z = y.clone()                                         # nccl reduces in place: z grows, timing does not
            out.append({"what": label, "tokens_per_rank": T, "ok": ok, "us": timed_us(lambda: reduce(z))})
    return out


def timed_us(fn, graph: bool = True, reps: int = 20) -> float:
    """Median µs per call: `reps` calls captured as one CUDA graph and replayed (eager on a CPU or when
    graph is False: host clock around synchronised calls)."""
    fn()
    if torch.cuda.is_available() and graph:
        from minimoe.bench.roofline import graph_us
        return graph_us([fn] * reps)
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return sorted(times)[len(times) // 2]


# ---- time: 1 GPU, TP2, EP2 x designs ----------------------------------------------------------------

def run_one(args, model, s, ceilings, b, use_graphs) -> dict:
    """bench.py's measurement of one configuration. Without graphs (alltoall) a step is host-bound (~1-2 ms
    per layer eagerly), so those rows decode --eager-output-len tokens, untimed warm-up skipped."""
    out_len = args.output_len if use_graphs else args.eager_output_len
    ns = SimpleNamespace(warmup=args.warmup if use_graphs else 0, iters=args.iters, profile=args.profile)
    try:
        res = bench_cli.run_config(ns, model, args.cfg, s, ceilings, b, args.input_len, out_len, use_graphs, None)
        res["graphs"] = use_graphs
    except Exception as e:
        traceback.print_exc()
        res = {"batch": b, "error": f"{type(e).__name__}: {e}"}
    res.pop("itl_ms", None)
    return res


def time_plans(args, ceilings) -> list[dict]:
    rows = []
    s = settings(args)                       # one GPU: each rank takes every other batch size, largest first
    model = build(args, args.model, s)
    mine = sorted(args.bs, reverse=True)[dist.get_rank()::dist.get_world_size()]
    local = [dict(run_one(args, model, s, ceilings, b, s.use_graphs), plan="1 GPU", pdl=s.pdl) for b in mine]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    rows += sorted((r for part in gathered for r in part), key=lambda r: r["batch"])
    del model
    free()
    for ep, tp, kind in plans(args):
        s = settings(args, ep, tp, reduce=kind)
        model = build(args, args.model, s)
        for design in (args.designs if ep > 1 else (tp_label(kind),)):
            s.dispatch = design if ep > 1 else "allgather"
            graphs = s.use_graphs and design != "alltoall"
            for b in args.bs:
                reduce = model.plan.reduce
                before = dict(reduce.calls) if reduce else {}
                rows.append(dict(run_one(args, model, s, ceilings, b, graphs), plan=f"{'TP' if tp > 1 else 'EP'}2 {design}",
                                 pdl=s.pdl, allreduce=s.allreduce if tp > 1 else None))
                if reduce:                  # Python calls per path during this row (a captured graph counts once)
                    rows[-1]["allreduce_calls"] = {k: v - before.get(k, 0) for k, v in reduce.calls.items()}
                say(f"# {args.model} {rows[-1]['plan']} bs{b}: " + short(rows[-1]))
        del model
        free()
    return rows


def short(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    m = r["metrics"]
    text = f"ITL {m['itl_median_ms']:.3f} ms, {m['output_tok_s']:.0f} tok/s, graphs {r['graphs']}, pdl {r.get('pdl')}"
    if "profile" in r:       # eager step, CUDA events per region: µs per call (a call = one layer's)
        regions = r["profile"]["regions"]
        text += "; eager profile, us per call: " + ", ".join(
            f"{n} {1e3 * v['ms_per_step'] / v['calls_per_step']:.1f}" for n, v in regions.items()
            if n in ("dispatch", "combine", "all_reduce", "experts", "attention") and v["calls_per_step"])
    return text


def print_timing(args, rows, cfg) -> None:
    base = {r["batch"]: r for r in rows if r["plan"] == "1 GPU" and "metrics" in r}
    say(f"\n## {args.model}: decode step (ITL p50) and throughput, {args.input_len} in / {args.output_len} out, "
        f"{args.dtype}; floor = roofline of the plan's GPUs together; model = cost model (docs/parallel_cost_model.md)")
    say(f"{'plan':22} {'bs':>4} {'ITL ms':>8} {'floor ms':>8} {'model ms':>8} {'decode vs 1':>11} {'out tok/s':>10} "
        f"{'vs 1 GPU':>8} {'out':>4} graphs pdl")
    for r in rows:
        if "metrics" not in r:
            say(f"{r['plan']:22} {r['batch']:>4}  {r.get('error', '?')}")
            continue
        m, b = r["metrics"], r["batch"]
        one = base[b]["metrics"]["itl_median_ms"] if b in base else float("nan")
        pred = cost.predict_row(cfg, r["plan"], b, args.input_len + args.output_len / 2, cost.Hardware(),
                                None if one != one else one)
        same_len = b in base and r["output_len"] == base[b]["output_len"]
        speed = m["output_tok_s"] / base[b]["metrics"]["output_tok_s"] if same_len else float("nan")
        say(f"{r['plan']:22} {b:>4} {m['itl_median_ms']:>8.3f} {r['roofline']['decode_step_floor_ms']:>8.3f} "
            f"{pred['step_ms']:>8.3f} {one / m['itl_median_ms']:>10.2f}x {m['output_tok_s']:>10.0f} {speed:>7.2f}x "
            f"{r['output_len']:>4} {r['graphs']!s:6} {r.get('pdl', '-')}")


def guarded(phase, args, failed):
    """A phase's result, or `failed` (after printing the error) so the next phase still runs."""
    try:
        return phase(args)
    except Exception:
        traceback.print_exc()
        print(f"# {phase.__name__} FAILED on rank {dist.get_rank()}: see the log", flush=True)
        free()
        return failed


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="folder for <model>.json")
    p.add_argument("--bs", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--eager-output-len", type=int, default=16, help="output length of the rows without graphs")
    p.add_argument("--designs", nargs="*", default=list(DESIGNS), choices=DESIGNS,
                   help="EP2 dispatch designs, one EP2 row each (none: no EP2 model)")
    p.add_argument("--allreduce", nargs="+", default=["nccl"], choices=[d for d in ALLREDUCE_DESIGNS if d != "auto"],
                   help="tensor-parallel all-reduce designs: one TP2 row per design (symm: GPUs only)")
    p.add_argument("--phases", nargs="+", default=["check", "exchange", "time"], choices=["check", "exchange", "time"])
    p.add_argument("--check-layers", type=int, default=4)
    p.add_argument("--check-batch", type=int, default=4)
    p.add_argument("--check-len", type=int, default=16)
    p.add_argument("--check-steps", type=int, default=8)
    p.add_argument("--check-tol", type=float, default=1e-4, help="float32 logits, relative to the largest")
    p.add_argument("--exchange-tokens", type=int, nargs="+", default=[1, 8, 32, 64], help="tokens per rank")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="per-region decode profile of every row")
    p.add_argument("--ceilings", help="JSON of measured ceilings: read if it exists, else measured on rank 0 and "
                                      "written there")
    p.add_argument("--pdl", default="auto", choices=["auto", "on", "off"],
                   help="Programmatic Dependent Launch for every row (settings.py: auto is off under a plan); "
                        "--pdl on checks and times the plans with it (sm90+ GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, float32, tiny lengths: the script end to end")
    args = p.parse_args(argv)
    args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if args.device == "cpu" and args.allreduce != ["nccl"]:
        p.error("--allreduce symm needs GPUs (symmetric memory); a CPU run has only --allreduce nccl (gloo)")
    if args.device == "cpu" and args.pdl == "on":
        p.error("--pdl on needs sm90+ GPUs (Programmatic Dependent Launch); a CPU run has --pdl auto or off")
    args.dtype, args.experts = ("fp32", "grouped") if args.device == "cpu" else ("bf16", "fused")
    if args.smoke:
        args.input_len, args.output_len, args.eager_output_len, args.check_len, args.check_steps = 8, 4, 4, 6, 3
        args.check_layers = min(args.check_layers, 2)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    try:
        parallel.init_distributed(args.device)
    except ValueError as e:                  # not under torchrun: one line, exit 2
        print(f"bench_parallel.py: {e}", file=sys.stderr)
        return 2
    args.cfg = read_config(args.model)[0]
    result = {"model": args.model, "args": {k: v for k, v in vars(args).items() if k != "cfg"}}
    if "check" in args.phases:
        result["check"] = guarded(check_plans, args, [{"plan": "all", "ok": False}])
        for r in result["check"]:
            say(f"# check {args.model} {r['plan']}: {'PASS' if r['ok'] else 'FAIL'} " +
                json.dumps({k: v for k, v in r.items() if k not in ('plan', 'ok')}))
    if "exchange" in args.phases:
        result["exchange"] = guarded(exchange_us, args, [])
        for r in result["exchange"]:
            say(f"# exchange {r['what']:33} {r['tokens_per_rank']:>3} tokens/rank: {r['us']:8.1f} us per layer"
                + ("" if r.get("ok", True) else "  WRONG SUM"))
    if "time" in args.phases:
        known = args.ceilings and Path(args.ceilings).exists()
        ceilings = json.loads(Path(args.ceilings).read_text()) if known else None
        if ceilings is None:                 # measured once on rank 0, kept for the next launches
            box = [measure_ceilings(args.device) if dist.get_rank() == 0 else None]
            dist.broadcast_object_list(box, src=0)
            ceilings = box[0]
            if args.ceilings and dist.get_rank() == 0:
                Path(args.ceilings).write_text(json.dumps(ceilings))
        result["ceilings"] = ceilings
        result["time"] = time_plans(args, ceilings)
        print_timing(args, result["time"], args.cfg)
    if dist.get_rank() == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.model}.json").write_text(json.dumps(result, default=str))
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all(r["ok"] for r in result.get("check", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
