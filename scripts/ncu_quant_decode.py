"""Run one quantized decode MoE layer a few times, for Nsight Compute to profile (issue 12).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats -k regex:pair \\
        python scripts/ncu_quant_decode.py --shape mixtral-8x7b --format int4 --variant pair

Random weights with the shape's real sizes, T tokens routed by softmax-top-k of random logits; the
layer runs `--repeat` times after one warm-up call (ncu's --launch-skip picks which).
"""
import argparse
import sys

import torch

from minimoe.bench import layer
from minimoe.experts import Experts
from minimoe.kernels.fused_moe_quant import fused_moe_quant
from minimoe.quant import quantize_experts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="mixtral-8x7b", choices=list(layer.SHAPES))
    p.add_argument("--format", default="int4", choices=["int4", "int8", "fp8"])
    p.add_argument("--variant", default="gemv", choices=["small", "gemv", "pair"])
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this needs a CUDA GPU", file=sys.stderr)
        return 2
    E, D, I, K = layer.SHAPES[args.shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    dense = Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", generator=gen).bfloat16() * 0.02,
                                 torch.randn(E, D, I, device="cuda", generator=gen).bfloat16() * 0.02)
    q = quantize_experts(dense, args.format)
    del dense
    x = torch.randn(args.tokens, D, device="cuda", generator=gen).bfloat16()
    w, ids = layer.routings(args.tokens, E, K, 1, torch.device("cuda"))[0]
    cfg = {"variant": args.variant}
    for _ in range(1 + args.repeat):
        fused_moe_quant(x, q.w13, q.w2, ids, w, config=cfg)
    torch.cuda.synchronize()
    print(f"ran {args.shape} {args.format} {args.variant} T={args.tokens} x{1 + args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
