"""Decode attention on the H200: the split plan's K tiles per split (min_tiles), swept per shape.

At decode a sequence's cache is read once; split-K buys parallelism at small batch, and each split
writes an fp32 partial [G, Dv] that the merge kernel reads back. `_plan_splits` bounds splits by
`min_tiles` K tiles each: this script times min_tiles in {1, 2, 4} for the absorbed MLA of
DeepSeek-V2-Lite (H = 16, one 576-wide latent head) and V3 (H = 128), and the GQA shapes of OLMoE,
Qwen3-30B-A3B and Mixtral, at B in {1, 16, 64} and L in {256, 2048}: µs per call (CUDA-graph replay of
10 calls, median), the bytes' time at 4.25 TB/s beside it; every output checked against the oracle.

    python scripts/bench_attn_splits.py [--json out.json]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.decode_attention_ref import decode_attention_ref  # noqa: E402

HBM = 4.25e12
SHAPES = {  # name: (H, Hkv, Dk, Dv, MLA: V is a prefix view of the latent)
    "dsv2-lite": (16, 1, 576, 512, True), "dsv3": (128, 1, 576, 512, True),
    "olmoe": (16, 16, 128, 128, False), "qwen3-30b": (32, 4, 128, 128, False), "mixtral": (32, 8, 128, 128, False),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    a = p.parse_args(argv)
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows = []
    print(f"{'shape':10s} {'B':>3s} {'L':>5s} {'tiles':>5s} {'us':>7s} {'floor us':>8s} {'% floor':>7s}")
    for name, (H, Hkv, dk, dv, mla) in SHAPES.items():
        for B in (1, 16, 64):
            for L in (256, 2048):
                g = torch.Generator(device=dev).manual_seed(B * L + H)
                k = torch.randn(B, L + 64, Hkv, dk, device=dev, dtype=dt, generator=g)
                v = k[..., :dv] if mla else torch.randn(B, L + 64, Hkv, dv, device=dev, dtype=dt, generator=g)
                q = torch.randn(B, H, dk, device=dev, dtype=dt, generator=g) * 0.1
                lens = torch.full((B,), L, device=dev, dtype=torch.int32)
                ref = decode_attention_ref(q, k, v, lens, 0.1)
                floor = B * L * Hkv * (dk + (0 if mla else dv)) * 2 / HBM * 1e6
                for tiles in (1, 2, 4):
                    out = decode_attention(q, k, v, lens, 0.1, min_tiles=tiles)
                    err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                    assert err < 2e-2, (name, B, L, tiles, err)
                    us = graph_us([lambda t=tiles: decode_attention(q, k, v, lens, 0.1, min_tiles=t)] * 10, 10)
                    rows.append({"shape": name, "B": B, "L": L, "min_tiles": tiles, "us": round(us, 2),
                                 "floor_us": round(floor, 2)})
                    print(f"{name:10s} {B:3d} {L:5d} {tiles:5d} {us:7.2f} {floor:8.2f} {100 * floor / us:6.0f}%",
                          flush=True)
                del k, v
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
