"""cuBLAS split-K by hand for decode-size dense projections: is there time to win before building it into the engine?

At bs 64 the q/k/v and o projections run in cuBLAS at 63% and 32% of their weights' bytes (OLMoE: 9.4 and 6.1 µs a
layer, thirty-ninth session's profile): 64-column tiles give 96 CTAs for 132 SMs. Cutting K into S slices as one
batched GEMM (torch.bmm over views, no copy, fp32 partials through `out_dtype`) gives S x the CTAs; a consumer kernel
that already reads the output (the rope kernel, the residual add + RMSNorm) could sum the partials. This times, inside
CUDA graphs with the weights rotated over copies that overflow the L2, y = x Wᵀ (bf16, as the engine runs it) against
the S-slice batched GEMM (fp32 partials, no sum: the consumer's job) and the same with the sum as its own kernel.

    python scripts/bench_splitk_cublas.py [--json OUT]     # an sm90 GPU; prints a table
"""
import argparse
import json
import sys

import torch

from minimoe.bench.roofline import graph_us

SHAPES = {  # name: (T, K, N)
    "olmoe qkv bs64": (64, 2048, 6144), "olmoe o bs64": (64, 2048, 2048),
    "qwen3 qkv bs64": (64, 2048, 5120), "qwen3 o bs64": (64, 4096, 2048),
    "olmoe qkv bs16": (16, 2048, 6144), "olmoe o bs16": (16, 2048, 2048),
}
COPIES = 12            # weight copies cycled so that every call reads its weight from HBM (12 x >= 8 MB > 50 MB L2)
REPS = 24              # calls a graph


def time_graph(fn, n_rep: int = 15) -> float:
    """µs a call: a CUDA graph of REPS calls (fn(i) for i over the copies), replayed n_rep times, median
    (minimoe.bench.roofline.graph_us)."""
    return graph_us([lambda i=i: fn(i) for i in range(REPS)], replays=n_rep)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    print(f"{'shape':16s} {'T':>3s} {'K':>5s} {'N':>5s} {'variant':14s} {'us':>7s} {'GB/s':>6s} {'vs mm':>7s}")
    for name, (T, K, N) in SHAPES.items():
        x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
        ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5 for _ in range(COPIES)]
        y = torch.empty(T, N, device="cuda", dtype=torch.bfloat16)
        ref = (x.float() @ ws[0].float().T)
        variants = {"mm bf16": lambda i: torch.mm(x, ws[i % COPIES].T, out=y)}
        for S in (2, 3, 4):
            if K % S:
                continue
            xs = x.view(T, S, K // S).permute(1, 0, 2)                         # [S, T, K/S]

            def split(i, S=S, xs=xs):
                w = ws[i % COPIES].view(N, S, K // S).permute(1, 2, 0)          # [S, K/S, N], no copy
                return torch.bmm(xs, w, out_dtype=torch.float32)

            def split_sum(i, split=split):
                return split(i).sum(0)

            got = split(0).sum(0)
            err = ((got - ref).norm() / ref.norm()).item()
            assert err < 1e-3, (name, S, err)
            variants[f"split{S} fp32"] = split
            variants[f"split{S}+sum"] = split_sum
        base = None
        for v, fn in variants.items():
            us = time_graph(fn)
            base = base or us
            gbs = N * K * 2 / us / 1e3
            rows.append({"shape": name, "T": T, "K": K, "N": N, "variant": v, "us": us, "GBps": gbs})
            print(f"{name:16s} {T:3d} {K:5d} {N:5d} {v:14s} {us:7.2f} {gbs:6.0f} {us / base - 1:+7.1%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
