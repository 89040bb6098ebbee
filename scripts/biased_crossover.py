"""Where the int4 biased operands stop paying: one quantized MoE layer at T tokens, BIASED_TILES "asm" on every tile
size against "off", on the GPU.

    python scripts/biased_crossover.py [--shape mixtral-8x7b] [--tokens 16 64 256 1024 4096] [--json OUT]

The biased path (kernels/quant_tiles.nibble_tiles) removes the int -> float conversions of the dequantization but
adds two dots a K step (A's row sums): decode tiles are bound by the conversions, prefill tiles by the tensor cores.
fused_moe_quant.BIASED_MAX_M is the cut-over; this script lifts it for the "asm" rows, so each T runs the same tile
config (fused_moe_quant.quant_config) both ways. The layer is timed as bench/layer.py times it (a CUDA graph over
ROTATE routings, medians), and each output is checked against the other (relative norm error).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    from minimoe.bench.layer import SHAPES, ROTATE, routings, time_graph
    from minimoe.experts import Experts
    from minimoe.kernels import fused_moe_quant as FQ
    from minimoe.qexperts import QuantExperts
    from minimoe.qweights import quantize_int4
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="mixtral-8x7b", choices=list(SHAPES))
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this script times CUDA graphs and needs a CUDA GPU", file=sys.stderr)
        return 2
    E, D, I, K = SHAPES[a.shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    dense = Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", generator=gen).bfloat16() * 0.02,
                                 torch.randn(E, D, I, device="cuda", generator=gen).bfloat16() * 0.02)
    q = QuantExperts.quantize(dense, quantize_int4)
    del dense
    rows = []
    print(f"# {a.shape} int4 (E={E}, D={D}, I={I}, K={K}), one layer, us (CUDA graph over {ROTATE} routings)")
    print(f"{'T':>6} {'BLOCK_M':>7} {'off':>9} {'asm':>9} {'asm/off':>8} {'rel err':>8}")
    for T in a.tokens:
        x = torch.randn(T, D, device="cuda", generator=gen).bfloat16()
        routes = routings(T, E, K, ROTATE, "cuda")
        cfg = FQ.quant_config(q.w13, q.w2, E, I, D, K, T)
        res = {}
        for mode in ("off", "asm"):
            FQ.BIASED_TILES, FQ.BIASED_MAX_M = mode, 1 << 20
            out = FQ.fused_moe_quant(x, q.w13, q.w2, routes[0][1], routes[0][0], config={"variant": "aligned"})

            def run():
                for w, ids in routes:
                    FQ.fused_moe_quant(x, q.w13, q.w2, ids, w, config={"variant": "aligned"})
            res[mode] = (time_graph(run, "cuda") * 1e3, out.float())
        err = ((res["asm"][1] - res["off"][1]).norm() / res["off"][1].norm()).item()
        row = {"shape": a.shape, "T": T, "BLOCK_M": cfg["BLOCK_M"], "off_us": res["off"][0], "asm_us": res["asm"][0],
               "rel_err": err}
        rows.append(row)
        print(f"{T:>6} {cfg['BLOCK_M']:>7} {row['off_us']:>9.1f} {row['asm_us']:>9.1f} "
              f"{row['asm_us'] / row['off_us']:>8.3f} {err:>8.1e}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
