"""A cost model of one decode step under expert / tensor parallelism: bytes over HBM plus collectives over links.

    step(plan) = bytes one rank streams / HBM bandwidth            (weights it holds and reads, its KV cache)
               + layers x c(B)                                     (what is not bandwidth: kernel tails,
                                                                    launches, compute; from the 1-GPU run)
               + sum over collectives of (alpha + bytes / link)    (NCCL latency and bandwidth; NVLink
                                                                    inside a node, InfiniBand across)
No overlap of communication with compute is assumed (minimoe overlaps none). Docs and the derivation:
docs/parallel_cost_model.md. Uses minimoe's own parameter counts (bench/roofline.py), so every model
card works.

    python scripts/parallel_cost_model.py                          # predictions with the default hardware
    python scripts/parallel_cost_model.py --measured DIR/*.json    # calibrate on a bench_parallel run, then
                                                                   # predicted vs measured for every 2-GPU row
    python scripts/parallel_cost_model.py --ib-GBps 25 --ib-us 25  # another interconnect
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minimoe.bench.roofline import count_params                        # noqa: E402
from minimoe.loader import read_config                                  # noqa: E402


@dataclasses.dataclass
class Hardware:
    hbm_GBps: float = 4200.0       # measured H200 read ceiling (bench.py header, 2026-11-28 runs)
    nvlink_GBps: float = 370.0     # NVLink 4 per direction, what NCCL reaches (nccl-tests #212; DeepEP #16)
    nvlink_us: float = 12.0        # one small NCCL collective inside a node, in a CUDA graph (calibrated)
    symm_us: float = 6.0           # one one-shot symmetric-memory all-reduce inside a node (--allreduce symm)
    ib_GBps: float = 50.0          # 400 Gb/s NDR, one NIC per GPU, per direction
    ib_us: float = 20.0            # one small collective across nodes
    gpus_per_node: int = 8
    host_sync_us: float = 40.0     # alltoall: counts to the host and the launch gap after, per MoE layer
    layer_us: float = 30.0         # c(B) when no 1-GPU measurement is given (H200 OLMoE/Qwen3 bs 1: ~35)
    wbytes: int = 2                # bf16


def parse_plan(label: str) -> tuple[int, int, str]:
    """'1 GPU' | 'TP2 -' | 'TP2 symm' | 'EP2 padded' | 'EP4 TP2 allgather' -> (ep, tp, design)."""
    ep = tp = 1
    design = "allgather"
    for word in label.split():
        if word.startswith("EP"):
            ep = int(word[2:])
        elif word.startswith("TP"):
            tp = int(word[2:])
        elif word in ("allgather", "alltoall", "padded", "symm"):
            design = word
    return ep, tp, design


def touched(E: int, K: int, tokens: float) -> float:
    """Experts hit by `tokens` tokens under uniform routing: E (1 - (1 - K/E)^tokens)."""
    return E * (1.0 - (1.0 - K / E) ** tokens)


def rank_bytes(cfg, ep: int, tp: int, B: int, ctx: float, wb: int) -> dict:
    """Bytes one rank streams in a decode step of global batch B at mean context ctx."""
    pc = count_params(cfg)
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    dense = (pc.total - pc.expert - pc.embed) * wb / tp            # EP replicates these; TP splits them
    held = cfg.n_experts / ep                                       # an EP rank computes on its group's B tokens
    experts = moe_layers * touched(cfg.n_experts, cfg.top_k, B) / cfg.n_experts * held * pc.per_expert * wb / tp
    kv_split = 1 if cfg.attention == "mla" else tp                  # MLA's latent cache is whole on every rank
    kv = cfg.n_layers * math.ceil(B / ep) * ctx * cfg.kv_bytes_per_token(wb) / kv_split
    return {"weights": dense, "experts": experts, "kv": kv, "total": dense + experts + kv}


def link(hw: Hardware, ranks: int) -> tuple[float, float]:
    """(alpha µs, GB/s) of a collective over `ranks` GPUs: NVLink within a node, InfiniBand beyond."""
    return (hw.nvlink_us, hw.nvlink_GBps) if ranks <= hw.gpus_per_node else (hw.ib_us, hw.ib_GBps)


def comm_us(cfg, ep: int, tp: int, design: str, B: int, hw: Hardware) -> dict:
    """Collective time per decode step (µs): TP all-reduces and EP dispatch + combine."""
    D, K, wb = cfg.hidden_size, cfg.top_k, hw.wbytes
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    out = {"tp": 0.0, "ep": 0.0}
    rows = math.ceil(B / ep)             # tokens per rank per step (a rank short of rows repeats one: parallel.py)
    if tp > 1:
        a, bw = link(hw, tp)
        per = a + 2 * (tp - 1) / tp * rows * D * wb / (bw * 1e3)    # ring all-reduce; GB/s = bytes/µs / 1e3
        if design == "symm" and tp <= hw.gpus_per_node and rows * D * wb <= 1 << 20:
            per = hw.symm_us + (tp - 1) * rows * D * wb / (bw * 1e3)   # one shot: every peer's whole message
        n = 2 * cfg.n_layers + (cfg.n_layers if cfg.qk_norm == "full" else 0)
        head = a + (tp - 1) / tp * rows * cfg.vocab_size * wb / (bw * 1e3)
        out["tp"] = n * per + head
    if ep > 1:
        a, bw = link(hw, ep * tp)
        packed = D * wb + 8 * K
        moved = (ep - 1) * rows * (packed + D * wb)                 # N-1 peers' rows in, outputs back
        if design == "alltoall":                                    # only routed rows, plus the count exchange
            moved *= 1.0 - (1.0 - K / cfg.n_experts) ** (cfg.n_experts / ep)
            per = 3 * a + hw.host_sync_us + moved / (bw * 1e3)
        else:
            per = 2 * a + moved / (bw * 1e3)
        out["ep"] = moe_layers * per
    out["total"] = out["tp"] + out["ep"]
    return out


def predict_row(cfg, plan: str, B: int, ctx: float, hw: Hardware, one_gpu_ms: float | None = None) -> dict:
    """Predicted decode step (ms) of `plan` at global batch B. one_gpu_ms: the measured 1-GPU step at this
    batch, which fixes c(B) = (measured - bytes / bandwidth) / layers; else hw.layer_us."""
    ep, tp, design = parse_plan(plan)
    bw = hw.hbm_GBps * 1e3                                          # bytes per µs
    c = hw.layer_us
    if one_gpu_ms is not None:
        c = max(0.0, (one_gpu_ms * 1e3 - rank_bytes(cfg, 1, 1, B, ctx, hw.wbytes)["total"] / bw) / cfg.n_layers)
    hbm = rank_bytes(cfg, ep, tp, B, ctx, hw.wbytes)["total"] / bw
    comm = comm_us(cfg, ep, tp, design, B, hw)
    step_us = hbm + cfg.n_layers * c + comm["total"]
    return {"step_ms": step_us / 1e3, "hbm_ms": hbm / 1e3, "fixed_ms": cfg.n_layers * c / 1e3,
            "comm_ms": comm["total"] / 1e3, "tok_s": B / step_us * 1e6}


def calibrate(hw: Hardware, results: list[dict]) -> Hardware:
    """NVLink alpha from the measured exchanges and all-reduces of a bench_parallel run (bytes negligible)."""
    ar = [r["us"] for res in results for r in res.get("exchange", []) if r["what"] == "all_reduce [T, 4096]"]
    symm = [r["us"] for res in results for r in res.get("exchange", []) if r["what"].endswith("symm")
            and r["tokens_per_rank"] == 1]                        # the latency: bytes are counted apart
    ex = [r["us"] / 2 for res in results for r in res.get("exchange", []) if "allgather" in r["what"]
          or "padded" in r["what"]]
    sync = [r["us"] for res in results for r in res.get("exchange", []) if "alltoall" in r["what"]]
    if ar or ex:
        hw = dataclasses.replace(hw, nvlink_us=statistics.median(ar + ex))
    if symm:
        hw = dataclasses.replace(hw, symm_us=statistics.median(symm))
    if sync:
        hw = dataclasses.replace(hw, host_sync_us=max(0.0, statistics.median(sync) - 3 * hw.nvlink_us))
    return hw


def check_against(results: list[dict], hw: Hardware) -> None:
    """Predicted vs measured ITL for every plan row of a bench_parallel run (1-GPU rows calibrate c(B))."""
    print(f"calibrated: NVLink alpha {hw.nvlink_us:.1f} us, one-shot all-reduce {hw.symm_us:.1f} us, "
          f"alltoall host sync {hw.host_sync_us:.1f} us per layer")
    print(f"{'model':14} {'plan':18} {'bs':>4} {'measured':>9} {'predicted':>9} {'error':>7}   (ms per decode step)")
    errors = []
    for res in results:
        cfg = read_config(res["model"])[0]
        a = res["args"]
        ctx = a["input_len"] + a["output_len"] / 2
        base = {r["batch"]: r["metrics"]["itl_median_ms"] for r in res.get("time", [])
                if r["plan"] == "1 GPU" and "metrics" in r}
        for r in res.get("time", []):
            if "metrics" not in r or r["plan"] == "1 GPU":
                continue
            got = r["metrics"]["itl_median_ms"]
            pred = predict_row(cfg, r["plan"], r["batch"], ctx, hw, base.get(r["batch"]))["step_ms"]
            errors.append(abs(pred - got) / got)
            print(f"{res['model']:14} {r['plan']:18} {r['batch']:>4} {got:>9.3f} {pred:>9.3f} {100 * (pred - got) / got:>6.0f}%")
    if errors:
        print(f"mean |error| {100 * statistics.mean(errors):.0f}% over {len(errors)} rows")


def targets(results: list[dict]) -> None:
    """Issue 15's acceptance figures, from the measured runs (PASS / MISS / not measured)."""
    by = {r["model"]: r for r in results}

    def itl(model, plan, b):
        rows = [r for r in by.get(model, {}).get("time", []) if r["plan"] == plan and r["batch"] == b and "metrics" in r]
        return rows[0]["metrics"]["itl_median_ms"] if rows else None

    def verdict(ok):
        return "not measured" if ok is None else ("PASS" if ok else "MISS")
    mix = by.get("mixtral", {}).get("time", [])
    one = itl("mixtral", "1 GPU", 64)
    best = min((r for r in mix if r["batch"] == 64 and r["plan"] != "1 GPU" and "metrics" in r),
               key=lambda r: r["metrics"]["itl_median_ms"], default=None)
    gain = one / best["metrics"]["itl_median_ms"] if best and one else None
    print(f"target Mixtral bs 64, best plan >= 1.7x one GPU: "
          + (f"{best['plan']} {gain:.2f}x " if gain else "") + verdict(gain and gain >= 1.7))
    tp_rows = sorted({r["plan"] for r in mix if r["plan"].startswith("TP2")})
    tp1 = {p: itl("mixtral", p, 1) for p in tp_rows}
    tp1 = {p: v for p, v in tp1.items() if v}
    best1 = min(tp1, key=tp1.get, default=None)
    one1 = itl("mixtral", "1 GPU", 1)
    head = "target Mixtral bs 1, TP2 decode step <= 4.0 ms" + (f" (one GPU {one1:.3f} ms in this run)" if one1 else "")
    print(head + ": " + " ".join(f"{p} {v:.2f} ms" for p, v in tp1.items()) + " "
          + verdict(best1 and tp1[best1] <= 4.0))
    graphed = [c.get("graphed_tokens_equal") for r in results for c in r.get("check", []) if c["plan"].startswith("ep2")
               and "alltoall" not in c["plan"]]
    ran = [r.get("graphs") for res in results for r in res.get("time", []) if r["plan"].startswith("EP2")
           and "alltoall" not in r["plan"] and "metrics" in r]
    graphed = [g for g in graphed if g is not None]           # None: no graph was possible (a CPU run)
    ok = (all(graphed) and all(ran)) if graphed and ran else None
    print(f"target EP2 decode step graph-captured (allgather, padded; tokens = eager): {verdict(ok)}")
    ex = [e for e in by.get("olmoe", {}).get("exchange", []) if e["tokens_per_rank"] == 32
          and e["what"].startswith("dispatch")]
    fast = min(ex, key=lambda e: e["us"], default=None)
    print("target OLMoE bs 64 (32 tokens/rank) dispatch + combine <= 40 us per layer: "
          + (" ".join(f"{e['what'].split()[-1]} {e['us']:.1f} us" for e in ex) + " " if ex else "")
          + verdict(fast and fast["us"] <= 40))


def scaling_table(models: list[str], batches: list[int], hw: Hardware, ctx: float) -> None:
    """Predicted tok/s per plan on 1..16 GPUs (16 = two nodes of 8 over InfiniBand)."""
    plans = ["1 GPU", "TP2", "EP2 allgather", "TP4", "EP4 allgather", "EP4 alltoall", "TP8", "EP8 allgather",
             "EP8 TP2 allgather", "EP16 allgather", "EP16 alltoall"]
    print(f"\npredicted decode throughput (out tok/s), context {ctx:.0f}, bf16; alpha NVLink {hw.nvlink_us} us, "
          f"IB {hw.ib_GBps} GB/s + {hw.ib_us} us, c(B) = {hw.layer_us} us/layer")
    print(f"{'model':10} {'bs':>4} " + " ".join(f"{p:>17}" for p in plans))
    for name in models:
        cfg = read_config(name)[0]
        for B in batches:
            cells = []
            for p in plans:
                ep, tp, _ = parse_plan(p)
                ok = cfg.n_experts % ep == 0 and cfg.n_heads % tp == 0
                cells.append(f"{predict_row(cfg, p, B, ctx, hw)['tok_s']:>17.0f}" if ok else f"{'-':>17}")
            print(f"{name:10} {B:>4} " + " ".join(cells))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measured", nargs="*", default=[], help="bench_parallel.py JSON files (one per model)")
    p.add_argument("--models", nargs="+", default=["mixtral", "qwen3", "olmoe"])
    p.add_argument("--bs", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--ctx", type=float, default=192.0, help="mean context during decode (128 in + 128/2 out)")
    for f in dataclasses.fields(Hardware):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    hw = Hardware(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Hardware)})
    results = [r for r in (json.loads(Path(f).read_text()) for f in args.measured) if "model" in r]
    if results:
        hw = calibrate(hw, results)
        check_against(results, hw)
        targets(results)
    scaling_table(args.models, args.bs, hw, args.ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
