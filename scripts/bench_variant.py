"""bench.py with another decode kernel family for minimoe's int4 / int8 / fp8 weights (an A/B of the decode kernels).

    python scripts/bench_variant.py --decode-variant gemv -- --model mixtral --fused --bs 1 --quant int4

Sets kernels/fused_moe_quant_small.DECODE_VARIANT for int4, int8 and fp8 (MoE layers and dense linears at decode
sizes) to small | gemv | pair, prints which, then runs bench.py's main with the arguments after `--`.
"pair" serves bf16 / fp16 activations on a GPU only; elsewhere (CPU, fp32) decode_variant runs "gemv",
which this script says before it starts.
"""
import argparse
import sys

from minimoe.bench.cli import main as bench_main
from minimoe.kernels import fused_moe_quant_small


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s --decode-variant {small,gemv,pair} -- BENCH_ARGS ...",
                                epilog="example: %(prog)s --decode-variant gemv -- --model mixtral --fused --bs 1 "
                                       "--quant int4   (everything after -- goes to bench.py)")
    p.add_argument("--decode-variant", required=True, choices=["small", "gemv", "pair"])
    args = p.parse_args(ours)
    for bits in (4, 8, 0):
        fused_moe_quant_small.DECODE_VARIANT[bits] = args.decode_variant
    note = ""
    if args.decode_variant == "pair" and not fused_moe_quant_small.on_gpu():
        note = " (no GPU: decode_variant runs gemv instead, as it does for fp32 activations)"
    print(f"# int4 / int8 / fp8 decode kernels: {args.decode_variant}{note}", flush=True)
    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
