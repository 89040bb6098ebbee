"""One MoE layer at decode sizes: the one-pass kernel (kernels/fused_moe_onepass.py) against the two-kernel path.

For each preset at T = 1 (and 2 with --t2): the two-kernel decode path with the tiles fused_moe gives it (the rule
and STEP_TILES), then the one-pass kernel with each tile of SWEEP. Timing as scripts/bench_moe_small.py: a CUDA
graph of 20 back-to-back calls, each with its own routing, replayed 20 times, median µs a call; bytes are the
touched experts' 3·D·I·2, against 4.25 TB/s. Every config is first checked against the fp32 loop oracle (1e-2).
A layer alone is not the step's context (the eighth session's lesson): scripts/step_probe.py decides.

    python scripts/bench_onepass.py --json onepass.json        # GPU
    python scripts/bench_onepass.py --check                     # CPU: TRITON_INTERPRET=1, fp32, tiny
"""
import os
import sys

if "--check" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_moe_small  # noqa: E402
from bench_moe_small import PRESETS, TINY, make_routings, measure, show  # noqa: E402
from minimoe.experts import Experts, experts_loop  # noqa: E402
from minimoe.kernels import moe_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe  # noqa: E402
from minimoe.kernels.fused_moe_onepass import fused_moe_onepass, onepass_default_config  # noqa: E402


def _call(x, w13, w2, ids, weights, config):
    """fused_moe, except that a one-pass config runs the kernel directly (fused_moe wants a contiguous w2)."""
    if config.get("variant") != "onepass":
        return fused_moe(x, w13, w2, ids, weights, config=config)
    cfg = dict(onepass_default_config(w2.shape[2], x.shape[1]), **config["onepass"])
    return fused_moe_onepass(x, w13, w2, ids.contiguous(), weights, 0, cfg)


bench_moe_small.fused_moe = lambda x, w13, w2, ids, weights, config=None: _call(x, w13, w2, ids, weights, config)

KEYS = ("BLOCK_I", "BLOCK_K", "BLOCK_D", "num_warps", "num_stages", "REDUCE_D")
# Tiles of 2-8 K elements a load (call 2's first sweep, [32, 512] x 2 and up, spilled: 0.67-0.77x the two-kernel path)
SWEEP = [(32, 128, 128, 4, 2, 64), (32, 128, 256, 4, 2, 64), (16, 256, 256, 4, 2, 64), (16, 256, 512, 4, 2, 64),
         (64, 64, 64, 4, 2, 64), (64, 64, 128, 4, 3, 64), (8, 512, 512, 4, 2, 64), (32, 128, 128, 2, 2, 64),
         (32, 256, 128, 4, 2, 64), (16, 128, 256, 2, 3, 32)]
TINY_SWEEP = [(16, 32, 32, 4, 1, 32), (8, 64, 16, 2, 2, 16)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["olmoe", "qwen3", "dsv2lite", "qwen15", "mixtral"],
                   choices=list(PRESETS))
    p.add_argument("--t2", action="store_true", help="T = 2 as well")
    p.add_argument("--json", help="write every result here")
    p.add_argument("--check", action="store_true", help="correctness only, CPU interpreter, fp32 tiny shapes")
    a = p.parse_args()
    if a.check:
        presets, dtype, device, timed, sweep = TINY, torch.float32, "cpu", False, TINY_SWEEP
    else:
        if not moe_configs.on_gpu():
            sys.exit("bench_onepass: timing needs a CUDA GPU (or --check)")
        presets, dtype, device, timed, sweep = {k: PRESETS[k] for k in a.presets}, torch.bfloat16, "cuda", True, SWEEP
    records, table = [], []
    for name, (E, K, I, D) in presets.items():
        for T in ((1, 2) if a.t2 else (1,)):
            gen = torch.Generator(device=device).manual_seed(T * 1000 + E)
            w13 = (torch.randn(E, 2 * I, D, device=device, generator=gen) / D ** 0.5).to(dtype)
            w2 = (torch.randn(E, D, I, device=device, generator=gen) / I ** 0.5).to(dtype)
            check_set = make_routings(T, E, D, K, dtype, device, 1, gen)[0]
            x, ids, weights = check_set
            ref = experts_loop(x.float(), Experts.from_tensors(w13.float(), w2.float()), ids, weights)
            print(f"{name} E={E} K={K} I={I} D={D} T={T}", flush=True)
            rec = {"preset": name, "E": E, "K": K, "I": I, "D": D, "T": T, "results": {}}
            cands = [("two-kernel", {"variant": "small"})]
            cands += [("onepass " + "/".join(map(str, t)), {"variant": "onepass", "onepass": dict(zip(KEYS, t))})
                      for t in sweep]
            # "T": W2 stored transposed ([E, I, D] in memory, passed as its [E, D, I] view), so a program's W2 slice is
            # BLOCK_I contiguous rows of D, as its w13 rows are; the one-pass kernel alone reads that view
            w2t = w2.transpose(1, 2).contiguous().transpose(1, 2)
            cands += [("onepass T " + "/".join(map(str, t)), {"variant": "onepass", "onepass": dict(zip(KEYS, t)),
                                                             "w2": "T"}) for t in sweep]
            for lab, cfg in cands:
                r = measure((w13, w2t if cfg.get("w2") == "T" else w2), cfg, check_set, ref, (E, K, I, D, T), gen,
                            timed)
                r["ok"] = r["err"] is not None and r["err"] <= (1e-4 if a.check else 1e-2)
                if not r["ok"]:
                    print(f"  {lab}: WRONG or failed {r}", flush=True)
                rec["results"][lab] = dict(r, config=cfg)
                show(lab, r)
            records.append(rec)
            if timed:
                base = rec["results"]["two-kernel"].get("us")
                ones = {k: v for k, v in rec["results"].items() if k != "two-kernel" and v.get("us") and v["ok"]}
                if base and ones:
                    best = min(ones, key=lambda k: ones[k]["us"])
                    table.append((name, T, base, best, ones[best]["us"], ones[best]["pct"]))
    if table:
        print(f"{'preset':9s} T  two-kernel us   best one-pass tile (BI/BK/BD/warps/stages/RD)   us   %4250   ratio")
        for name, T, base, best, us, pct in table:
            print(f"{name:9s} {T}  {base:12.1f}   {best:42s} {us:6.1f}  {pct:5.1f}%  {base / us:5.2f}x")
    bad = [(r["preset"], k) for r in records for k, v in r["results"].items() if not v["ok"]]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1, default=str)
    if bad:
        sys.exit(f"bench_onepass: wrong or failed: {bad}")
    print("bench_onepass: every config matched the oracle")


if __name__ == "__main__":
    main()
