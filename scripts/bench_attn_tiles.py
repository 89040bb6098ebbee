"""Decode attention on the H200: the split kernel's tile (BLOCK_N, warps, stages) swept per shape and batch.

At batch 64 the decode attention of OLMoE reads its KV cache at ~60% of bandwidth (26.6 µs a layer for
~68 MB, docs/results/2026-11-30-s7/call4): 1,024 programs (sequence x KV head) each stream one
sequence's K and V in BLOCK_N-position tiles. This times every (BLOCK_N, num_warps, num_stages) of a small
grid against the launch `decode_attention` picks today, at B in {16, 64} and contexts 192 / 1,024 in
caches of 256 / 2,048 entries, for the GQA shapes of OLMoE, Qwen3-30B-A3B and Mixtral: µs per call (CUDA-
graph replay of 10 calls, median), the KV bytes' time at 4.25 TB/s beside it; every output checked
against the oracle first.

    python scripts/bench_attn_tiles.py [--json out.json]
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.decode_attention_ref import decode_attention_ref  # noqa: E402

HBM = 4.25e12
SHAPES = {"olmoe": (16, 16), "qwen3-30b": (32, 4), "mixtral": (32, 8)}   # (H, Hkv), head dim 128
GRID = ([dict(BLOCK_N=n, num_warps=w, num_stages=st) for n, w, st in itertools.product((32, 64, 128), (4, 8), (2, 3, 4))]
        + [dict(BLOCK_N=n, num_warps=2, num_stages=3) for n in (32, 64)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attn_tiles: times decode attention on a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    rows, dev, d = [], "cuda", 128
    for (name, (H, hkv)), B, (L, cache) in itertools.product(SHAPES.items(), a.batches, ((192, 256), (1024, 2048))):
        g = torch.Generator(device=dev).manual_seed(B + L)
        q = torch.randn(B, H, d, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(B, cache, hkv, d, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(B, cache, hkv, d, device=dev, dtype=torch.bfloat16, generator=g)
        lens = torch.randint(L - 16, L + 1, (B,), device=dev, dtype=torch.int32, generator=g)
        want = decode_attention_ref(q, k, v, lens, d ** -0.5).float()
        floor = float(lens.sum()) * hkv * d * 2 * 2 / HBM * 1e6
        base = graph_us([lambda: decode_attention(q, k, v, lens, d ** -0.5)] * 10)
        best = (base, "today")
        for t in GRID:
            try:
                got = decode_attention(q, k, v, lens, d ** -0.5, tiles=t).float()
            except Exception as e:                        # out of shared memory and the like
                print(f"  {name} B{B} L{L} {t}: {type(e).__name__}", flush=True)
                continue
            if not torch.allclose(got, want, atol=2e-2, rtol=2e-2):
                print(f"  {name} B{B} L{L} {t}: WRONG (max err {(got - want).abs().max():.3g})", flush=True)
                continue
            us = graph_us([lambda t=t: decode_attention(q, k, v, lens, d ** -0.5, tiles=t)] * 10)
            rows.append({"shape": name, "B": B, "L": L, "tiles": t, "us": us, "today_us": base, "floor_us": floor})
            if us < best[0]:
                best = (us, t)
        print(f"{name:10s} B={B:3d} L={L:5d} floor {floor:6.1f} us  today {base:6.1f} us ({100 * floor / base:3.0f}%)  "
              f"best {best[0]:6.1f} us ({100 * floor / best[0]:3.0f}%) {best[1]}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
