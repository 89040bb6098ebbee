"""Decode attention at full grids: the one-split kernel against the persistent kernel (kernels/decode_attention_persistent.py).

At OLMoE bs 64 the one-split kernel's time follows its tile count, not its bytes (thirty-eighth session, call 12:
66% / 78% / 91% of the bytes' time at 138 / 202 / 256 cached entries). The persistent kernel streams several
(sequence, kv head) items per program in one pipelined loop. This times both, and the persistent kernel's
(programs an SM, pipeline stages) variants, on the decode shapes of OLMoE, Qwen3-30B-A3B and Mixtral at B = 64 (and
128) over 138 / 202 / 256 cached entries of a 272-entry cache (bench.py 128 / 128) and 1,000 of 2,048: µs per call
(one CUDA graph of ROT x 3 calls, each call on its own cache copy so the L2 holds none of it; median of replays), the
bytes' time at HBM beside it, and every output checked against the split kernel's (max abs difference).

    python scripts/bench_attn_persistent.py [--json out.json] [--batches 64 128]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minimoe.kernels.decode_attention as dattn  # noqa: E402
from minimoe.bench.roofline import graph_us  # noqa: E402

HBM = 4.2e12
ROT = 4
SHAPES = {"olmoe": (16, 16, 128), "qwen3-30b": (32, 4, 128), "mixtral": (32, 8, 128)}   # H, Hkv, d
VARIANTS = {"split": None, "p2s3": (2, 3), "p2s2": (2, 2), "p3s2": (3, 2), "p1s4": (1, 4), "p2s4": (2, 4),
            "p4s2": (4, 2)}


def _set(variant):
    knobs = VARIANTS[variant]
    dattn.PERSISTENT = knobs is not None
    if knobs:
        dattn.PERSISTENT_PROGRAMS_PER_SM, dattn.PERSISTENT_STAGES = knobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    p.add_argument("--batches", type=int, nargs="+", default=[64])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attn_persistent: times a CUDA kernel; no GPU is visible", file=sys.stderr)
        return 2
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows, bad = [], 0
    print(f"{'shape':10s} {'B':>3s} {'L':>5s} {'variant':8s} {'us':>7s} {'floor':>7s} {'%':>4s} {'x split':>7s} maxdiff")
    for B in a.batches:
        for name, (H, hkv, d) in SHAPES.items():
            for s_max, lengths in ((272, (138, 202, 256)), (2048, (1000,))):
                g = torch.Generator(device=dev).manual_seed(H + hkv + s_max)
                q = torch.randn(B, H, d, device=dev, dtype=dt, generator=g) * 0.1
                caches = [(torch.randn(B, s_max, hkv, d, device=dev, dtype=dt, generator=g),
                           torch.randn(B, s_max, hkv, d, device=dev, dtype=dt, generator=g)) for _ in range(ROT)]
                for L in lengths:
                    lens = torch.full((B,), L, device=dev, dtype=torch.int32)
                    lens[::3] = max(1, L - 37)                                 # a little raggedness
                    floor = lens.sum().item() * hkv * d * 2 * 2 / HBM * 1e6
                    base_out, base_us = None, None
                    for variant in a.variants:
                        _set(variant)
                        try:
                            out = dattn.decode_attention(q, *caches[0], lens, 0.1)
                            us = graph_us([lambda c=c: dattn.decode_attention(q, c[0], c[1], lens, 0.1)
                                           for c in caches] * 3, 20)
                        finally:
                            _set("split")
                        if base_out is None:
                            base_out, base_us = out, us
                        diff = (out.float() - base_out.float()).abs().max().item()
                        bad += diff > 2e-2
                        rows.append({"shape": name, "B": B, "L": L, "s_max": s_max, "variant": variant,
                                     "us": round(us, 2), "floor_us": round(floor, 2), "x_split": round(base_us / us, 3),
                                     "maxdiff": diff})
                        print(f"{name:10s} {B:3d} {L:5d} {variant:8s} {us:7.2f} {floor:7.2f} {100 * floor / us:3.0f}% "
                              f"{base_us / us:7.3f} {diff:.1e}", flush=True)
                del caches
                torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
