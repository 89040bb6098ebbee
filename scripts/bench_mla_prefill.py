"""MLA prefill's pieces one at a time, at DeepSeek-V2-Lite's shapes: where a layer's non-GEMM time goes.

    python scripts/bench_mla_prefill.py [--bs 64] [--input-len 128] [--json OUT]     # CUDA GPU

For B prompts of S tokens (16 heads, nope 128, rope 64, v 128, latent rank 512, bf16) it times, as the median of
CUDA-event timings of 20 calls replayed from a CUDA graph (GPU time alone, as in the captured prefill):
  rope_cache      kernels/mla_rope.py (one program a token), and with `mla_rope.WARPS` = 1 / 2 / 8, with the
                  "rotate half" pairs instead of DeepSeek's interleaved ones (same bytes, other access pattern), and
                  with the interleaved pairs read and written as stride-2 halves (`mla_rope.SPLIT_PAIRS` False)
  wkv_b strided   F.linear over the cache's strided latent rows
  wkv_b contig    F.linear over a contiguous copy of them (the copy not timed)
  k cat           torch.cat([k_nope, k_pe.expand(...)]) (ops.mla_expand_k_torch)
  k expand        kernels/mla_expand.py
  sdpa            the causal attention itself, for scale
  o reshape       its output as wo reads it ([B, S, H·v]): a copy when SDPA's output is not laid out [B, S, H, v]
and the bytes each moves at the measured read bandwidth's speed, so a row far from its bytes stands out. The
key's two paths are checked bit for bit first. (The twenty-fifth session's call 1 ran an earlier version, with a
contiguous latent copy written by the rope kernel: it cost 3.8 µs and saved 0.5 µs in wkv_b, so it was dropped.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from minimoe.kernels.mla_expand import mla_expand_k
from minimoe.kernels import mla_rope
from minimoe.kernels.mla_rope import mla_rope_cache
from minimoe.ops import mla_expand_k_torch

H, NOPE, ROPE, V, R = 16, 128, 64, 128, 512
CALLS, SAMPLES = 20, 15


def graphed_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(SAMPLES):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--read-gbps", type=float, default=4100.0, help="the bandwidth ceiling for the bytes column")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_mla_prefill: times kernels on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    B, S, dt, dev = a.bs, a.input_len, torch.bfloat16, "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, S, H, NOPE + ROPE, device=dev, dtype=dt, generator=g)
    kv_a = torch.randn(B, S, R + ROPE, device=dev, dtype=dt, generator=g)
    pos = torch.arange(S, device=dev).expand(B, S).contiguous()
    ang = torch.rand(S + 64, ROPE // 2, device=dev, generator=g) * 6
    cos, sin = ang.cos(), ang.sin()
    latent = torch.zeros(B, S + 64, R + ROPE, device=dev, dtype=dt)
    w_norm = torch.ones(R, device=dev, dtype=dt)
    c = torch.empty(B, S, R, device=dev, dtype=dt)
    wkv_b = torch.randn(H * (NOPE + V), R, device=dev, dtype=dt, generator=g) * 0.04
    kv = torch.randn(B, S, H, NOPE + V, device=dev, dtype=dt, generator=g)
    k_pe = latent[:, :S, R:]

    def rope(warps=None, interleave=True, split_pairs=True):
        def call():
            mla_rope.WARPS, mla_rope.SPLIT_PAIRS = warps, split_pairs
            try:
                mla_rope_cache(q, kv_a, pos, cos, sin, latent, w_norm, 1e-6, nope=NOPE, interleave=interleave,
                               q_pe_out=q[..., NOPE:])
            finally:
                mla_rope.WARPS, mla_rope.SPLIT_PAIRS = None, True
        return call

    c.copy_(latent[:, :S, :R])
    assert torch.equal(mla_expand_k(kv, k_pe, NOPE), mla_expand_k_torch(kv, k_pe, NOPE)), "expand differs from cat"
    k = mla_expand_k(kv, k_pe, NOPE)

    def sdpa():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), kv[..., NOPE:].transpose(1, 2),
                                              is_causal=True, scale=(NOPE + ROPE) ** -0.5)

    o = sdpa()
    o_bshd = o.transpose(1, 2)                                       # [B, S, H, v] as mla.py hands it to wo
    print(f"# SDPA output strides {tuple(o.stride())}: [B, S, H, v] view contiguous: {o_bshd.is_contiguous()} "
          "(False: wo's reshape copies it)")
    T, e = B * S, 2
    rows = [  # name, fn, bytes moved
        ("rope_cache", rope(), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("rope_cache w1", rope(1), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("rope_cache w2", rope(2), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("rope_cache w8", rope(8), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("rope_cache half", rope(interleave=False), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("rope_cache stride2", rope(split_pairs=False), T * (2 * H * ROPE + 2 * (R + ROPE)) * e),
        ("wkv_b strided", lambda: F.linear(latent[:, :S, :R], wkv_b), (T * R * 3 + T * H * (NOPE + V)) * e),
        ("wkv_b contig", lambda: F.linear(c, wkv_b), (T * R + T * H * (NOPE + V)) * e),
        ("k cat", lambda: mla_expand_k_torch(kv, k_pe, NOPE), T * (H * NOPE * 2 + ROPE + H * ROPE) * e),
        ("k expand", lambda: mla_expand_k(kv, k_pe, NOPE), T * (H * NOPE * 2 + ROPE + H * ROPE) * e),
        ("sdpa", sdpa, T * H * (2 * (NOPE + ROPE) + 2 * V) * e),
        ("o reshape", lambda: o_bshd.reshape(B, S, H * V), (2 * T * H * V * e) if not o_bshd.is_contiguous() else 1),
    ]
    out = []
    print(f"# MLA prefill pieces, B {B} x S {S} ({T} tokens), bf16, {torch.cuda.get_device_name()}, "
          f"graphed median of {SAMPLES} x {CALLS} calls")
    print(f"{'piece':18s} {'us':>8s} {'MB':>7s} {'bytes us':>9s} {'% of bytes':>10s}")
    for name, fn, nbytes in rows:
        us = graphed_us(fn)
        floor = nbytes / (a.read_gbps * 1e3)
        out.append({"piece": name, "us": us, "bytes": nbytes, "bytes_us": floor})
        print(f"{name:18s} {us:8.1f} {nbytes / 1e6:7.1f} {floor:9.1f} {100 * floor / us:9.0f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"bs": B, "input_len": S, "rows": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
