"""bench.py with another decode kernel family for minimoe's int4 / int8 weights (an A/B of issue 12's kernels).

    python scripts/bench_variant.py --decode-variant pair -- --model mixtral --fused --bs 1 --quant int4

Sets kernels/fused_moe_quant_small.DECODE_VARIANT for int4 and int8 (MoE layers and dense linears at decode
sizes) to small | gemv | pair, prints which, then runs bench.py's main with the arguments after `--`.
"""
import argparse
import sys

from minimoe.bench.cli import main as bench_main
from minimoe.kernels import fused_moe_quant_small


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decode-variant", required=True, choices=["small", "gemv", "pair"])
    args = p.parse_args(ours)
    for bits in (4, 8):
        fused_moe_quant_small.DECODE_VARIANT[bits] = args.decode_variant
    print(f"# int4 / int8 decode kernels: {args.decode_variant}", flush=True)
    return bench_main(rest)


if __name__ == "__main__":
    sys.exit(main())
