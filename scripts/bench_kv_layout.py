"""Decode attention at batch 64 against the KV cache's layout: [B, S, Hkv, d] (minimoe's, flash-attn's) or
[B, Hkv, S, d] (vLLM's paged blocks keep a head's positions together; HF's DynamicCache too).

The split kernel takes any strides, so the second layout is a permuted view of a [B, Hkv, S, d] tensor: the same
kernel, the same values, the same tiles; only which bytes sit next to each other in HBM differs. In minimoe's layout
one program's 64-position K tile is 64 rows of d x 2 bytes (256 B for d = 128) spaced Hkv x d x 2 bytes apart (4 KB for
OLMoE's 16 heads); in the other it is one contiguous 16 KB block. At OLMoE bs 64 the attention ran at ~72% of its
bytes' time in the graphed step (thirty-eighth session, 34.7 µs at 202 entries). This times both layouts on the
decode shapes of OLMoE, Qwen3-30B-A3B and Mixtral at B = 64 and 138 / 202 / 256 cached entries: µs per call (CUDA
graph of ROT calls, each on its own copy of the cache so the 50 MB L2 holds none of it; median of replays), the
bytes' time at the measured stream bandwidth beside it, and the outputs checked equal (bit for bit: the same
arithmetic in the same order).

    python scripts/bench_kv_layout.py [--json out.json]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402

HBM = 4.2e12
ROT = 4                                  # cache copies, one per call in the graph: 4 x >= 72 MB defeats the L2
SHAPES = {"olmoe": (16, 16, 128), "qwen3-30b": (32, 4, 128), "mixtral": (32, 8, 128)}   # H, Hkv, d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--s-max", type=int, default=272, help="cache capacity (bench.py 128/128: 128 + 128 + 16)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kv_layout: times a CUDA kernel; no GPU is visible", file=sys.stderr)
        return 2
    dev, dt, B = torch.device("cuda"), torch.bfloat16, a.batch
    rows = []
    print(f"{'shape':10s} {'B':>3s} {'L':>4s} {'layout':6s} {'us':>7s} {'floor us':>8s} {'% floor':>7s} same")
    for name, (H, hkv, d) in SHAPES.items():
        g = torch.Generator(device=dev).manual_seed(H + hkv)
        q = torch.randn(B, H, d, device=dev, dtype=dt, generator=g) * 0.1
        bshd = [(torch.randn(B, a.s_max, hkv, d, device=dev, dtype=dt, generator=g),
                 torch.randn(B, a.s_max, hkv, d, device=dev, dtype=dt, generator=g)) for _ in range(ROT)]
        bhsd = [(k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2))
                for k, v in bshd]                                          # [B, S, Hkv, d] views of [B, Hkv, S, d]
        for L in (138, 202, 256):
            lens = torch.full((B,), L, device=dev, dtype=torch.int32)
            floor = B * L * hkv * d * 2 * 2 / HBM * 1e6
            outs = {}
            for layout, caches in (("bshd", bshd), ("bhsd", bhsd)):
                outs[layout] = decode_attention(q, *caches[0], lens, 0.1)
                us = graph_us([lambda c=c: decode_attention(q, c[0], c[1], lens, 0.1) for c in caches] * 3, 20)
                rows.append({"shape": name, "B": B, "L": L, "layout": layout, "us": round(us, 2),
                             "floor_us": round(floor, 2)})
            same = torch.equal(outs["bshd"], outs["bhsd"])
            for r in rows[-2:]:
                r["same"] = same
                print(f"{name:10s} {B:3d} {L:4d} {r['layout']:6s} {r['us']:7.2f} {floor:8.2f} "
                      f"{100 * floor / r['us']:6.0f}% {'yes' if same else 'NO'}", flush=True)
        del bshd, bhsd
        torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
