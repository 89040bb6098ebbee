"""Session 35 probe: the aligned fused MoE (tuned tables) against torch's grouped GEMM (`torch._grouped_mm`, CUTLASS
on sm90) at prefill sizes: rows gathered in expert order, GEMM1, SiLU*up, GEMM2, rows back in (token, slot) order.
Times each piece by CUDA-graph replay (median of CUDA events); checks the grouped path against fused_moe first.
(Call 2 ran it with its own copy of the graph timer; it now uses minimoe.bench.roofline.graph_us, the same method:
10 calls a graph, a median of 7 replays.)

    python scripts/gpu/session35_probe_grouped_mm.py [--shape 64,2048,1408,6] [--tokens 8192]
"""
import argparse

import torch
import torch.nn.functional as F

from minimoe.bench import roofline
from minimoe.kernels.fused_moe import fused_moe

p = argparse.ArgumentParser()
p.add_argument("--shape", default="64,2048,1408,6")
p.add_argument("--tokens", type=int, default=8192)
a = p.parse_args()
E, D, I, K = map(int, a.shape.split(","))
T = a.tokens
torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
w13 = torch.randn(E, 2 * I, D, device=dev, dtype=dt) / D ** 0.5
w2 = torch.randn(E, D, I, device=dev, dtype=dt) / I ** 0.5
x = torch.randn(T, D, device=dev, dtype=dt)
w, ids = torch.randn(T, E, device=dev).softmax(-1).topk(K, -1)
ids32 = ids.to(torch.int32)
ALIGN = 16
flat = ids.reshape(-1)
order = torch.sort(flat, stable=True).indices                      # flat pair indices in expert order
counts = torch.bincount(flat, minlength=E)
padded = (counts + ALIGN - 1) // ALIGN * ALIGN
M = int(padded.sum())
starts = torch.cumsum(padded, 0) - padded
rank = torch.arange(T * K, device=dev) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
dest = starts.repeat_interleave(counts) + rank                      # row of each sorted pair in the padded buffer
src_tok = torch.zeros(M, dtype=torch.long, device=dev)
src_tok[dest] = order // K
offs = torch.cumsum(padded, 0).to(torch.int32)
pair_row = torch.empty(T * K, dtype=torch.long, device=dev)
pair_row[order] = dest                                              # padded-buffer row of flat pair i
B13, B2 = w13.transpose(1, 2), w2.transpose(1, 2)                  # [E, D, 2I], [E, I, D] (K-major views)


def gather():
    return x.index_select(0, src_tok)


def gmm1(xs):
    return torch._grouped_mm(xs, B13, offs=offs)


def act(g):
    return F.silu(g[:, :I]) * g[:, I:]


def gmm2(h):
    return torch._grouped_mm(h, B2, offs=offs)


def back(y):
    return (y.index_select(0, pair_row).view(T, K, D).float() * w[..., None]).sum(1).to(dt)


def grouped():
    return back(gmm2(act(gmm1(gather()))))


ref = fused_moe(x, w13, w2, ids32, w)
got = grouped()
err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
print(f"E={E} D={D} I={I} K={K} T={T}: padded rows {M} ({M / (T * K):.3f}x), rel err grouped vs fused {err:.2e}")


def graph_us(fn, n=10, reps=7):
    """Median µs a call of fn, n calls captured in one CUDA graph (minimoe.bench.roofline.graph_us)."""
    return roofline.graph_us([fn] * n, reps)


xs, g1 = gather(), gmm1(gather())
h = act(g1)
y = gmm2(h)
flops1, flops2 = 2 * T * K * D * 2 * I, 2 * T * K * I * D
rows = [("fused_moe (tuned tables)", lambda: fused_moe(x, w13, w2, ids32, w), flops1 + flops2),
        ("grouped: gather", gather, 0), ("grouped: GEMM1", lambda: gmm1(xs), flops1),
        ("grouped: silu*up", lambda: act(g1), 0), ("grouped: GEMM2", lambda: gmm2(h), flops2),
        ("grouped: back + weights", lambda: back(y), 0), ("grouped: all", grouped, flops1 + flops2)]
print(f"{'piece':28s} {'us':>9s} {'TFLOP/s':>8s}")
for name, fn, fl in rows:
    us = graph_us(fn)
    print(f"{name:28s} {us:9.1f} {fl / us / 1e6 if fl else 0:8.1f}")
