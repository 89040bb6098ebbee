"""Where each int4 (or int8) MoE path wins: one quantized layer at T tokens through the in-kernel GEMMs with plain byte
tiles ("off"), with biased operands on every tile size ("asm", int4 only), and through the prefill path that
dequantizes the experts and runs the bf16 kernels ("dequant", kernels/moe_dequant.py), on the GPU.

    python scripts/int4_paths.py [--bits 4|8] [--shape mixtral-8x7b] [--tokens 16 64 256 1024 4096] [--json OUT]

The biased path (kernels/quant_tiles.nibble_tiles) removes the int -> float conversions of the dequantization but
adds two dots a K step (A's row sums): decode tiles are bound by the conversions, prefill tiles by the tensor cores.
fused_moe_quant.BIASED_MAX_M and moe_dequant.DEQUANT_MIN_M / DEQUANT_MIN_ROWS are the cut-overs; this script lifts the first for the
"asm" rows and forces the in-kernel path for both of them ({"in_kernel": True}), so each T runs the same tile config
(fused_moe_quant.quant_config) both ways. The layer is timed as bench/layer.py times it (a CUDA graph over ROTATE
routings, medians), and each output is checked against "off" (relative norm error).
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
    from minimoe.kernels.moe_dequant import fused_moe_dequant
    from minimoe.qexperts import QuantExperts
    from minimoe.qweights import quantize_int4, quantize_int8
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="mixtral-8x7b", choices=list(SHAPES))
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    p.add_argument("--bits", type=int, choices=(4, 8), default=4)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this script times CUDA graphs and needs a CUDA GPU", file=sys.stderr)
        return 2
    E, D, I, K = SHAPES[a.shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    dense = Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", generator=gen).bfloat16() * 0.02,
                                 torch.randn(E, D, I, device="cuda", generator=gen).bfloat16() * 0.02)
    q = QuantExperts.quantize(dense, quantize_int4 if a.bits == 4 else quantize_int8)
    del dense
    rows = []
    print(f"# {a.shape} int{a.bits} (E={E}, D={D}, I={I}, K={K}), one layer, us (CUDA graph over {ROTATE} routings)")
    print(f"{'T':>6} {'BLOCK_M':>7} {'off':>9} {'asm':>9} {'dequant':>9} {'asm/off':>8} {'deq/off':>8} {'err asm':>8} "
          f"{'err deq':>8}")
    for T in a.tokens:
        x = torch.randn(T, D, device="cuda", generator=gen).bfloat16()
        routes = routings(T, E, K, ROTATE, "cuda")
        cfg = FQ.quant_config(q.w13, q.w2, E, I, D, K, T)
        res = {}
        for mode in ("off", "asm", "dequant") if a.bits == 4 else ("off", "dequant"):
            FQ.BIASED_TILES, FQ.BIASED_MAX_M = ("off" if mode == "off" else "asm"), 1 << 20

            def call(w, ids, mode=mode):
                if mode == "dequant":
                    return fused_moe_dequant(x, q.w13, q.w2, ids, w)
                return FQ.fused_moe_quant(x, q.w13, q.w2, ids, w, config={"variant": "aligned", "in_kernel": True})

            out = call(routes[0][0], routes[0][1])

            def run():
                for w, ids in routes:
                    call(w, ids)
            res[mode] = (time_graph(run, "cuda") * 1e3, out.float())
        # int8 has no biased operands (one code a byte, see fused_moe_quant): its "asm" columns are None / "-"
        err = {m: ((res[m][1] - res["off"][1]).norm() / res["off"][1].norm()).item() for m in res if m != "off"}
        asm = res["asm"][0] if "asm" in res else None
        row = {"shape": a.shape, "bits": a.bits, "T": T, "BLOCK_M": cfg["BLOCK_M"], "off_us": res["off"][0],
               "asm_us": asm, "dequant_us": res["dequant"][0], "rel_err_asm": err.get("asm"),
               "rel_err_dequant": err["dequant"]}
        rows.append(row)

        def cell(v, fmt, width):
            return f"{'-' if v is None else format(v, fmt):>{width}}"
        print(f"{T:>6} {cfg['BLOCK_M']:>7} {row['off_us']:>9.1f} {cell(asm, '.1f', 9)} {row['dequant_us']:>9.1f} "
              f"{cell(None if asm is None else asm / row['off_us'], '.3f', 8)} "
              f"{row['dequant_us'] / row['off_us']:>8.3f} {cell(err.get('asm'), '.1e', 8)} {err['dequant']:>8.1e}",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
