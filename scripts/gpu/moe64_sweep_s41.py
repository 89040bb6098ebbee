"""Forty-first session: OLMoE's bs-64 decode MoE tiles inside the graphed step.

The T = 64 bucket of E=64,I=1024,D=2048,K=8 was tuned on 2026-11-28 (the first GPU session), before GEMM2 had its
own "down" overrides searched at decode sizes and before TMA weight tiles (`b_tma`) existed; its GEMM2 streams at
~4.07 TB/s against GEMM1's ~4.22 in the step (thirty-ninth session, call 2). Each variant replaces that bucket's
entry through `moe_configs.BUCKET_OVERRIDES` and is timed by scripts/step_probe.py (variants interleaved, same
greedy tokens required).

    python scripts/gpu/moe64_sweep_s41.py --json OUT.json [--steps 40 --rounds 3]
"""
import sys

from scripts.step_probe import main

B = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 8, "num_stages": 3}


def down(n, k, w, s, tma=False):
    return {"BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s, "b_tma": tma}


VARIANTS = {
    "tma": dict(B, b_tma=True),
    "g1tma": dict(B, b_tma=True, down={"b_tma": False}),
    "dtma": dict(B, down={"b_tma": True}),
    "d64": dict(B, down=down(64, 128, 4, 5)),
    "d64t": dict(B, down=down(64, 128, 4, 5, True)),
    "d128w4": dict(B, down=down(128, 128, 4, 4)),
    "d256": dict(B, down=down(256, 64, 8, 4)),
    "dk256": dict(B, down=down(64, 256, 4, 4)),
    "n64": dict(B, BLOCK_N=64, num_warps=4, num_stages=5),
    "n64t": dict(B, BLOCK_N=64, num_warps=4, num_stages=5, b_tma=True),
    "k64": dict(B, BLOCK_K=64, num_stages=5),
}

if __name__ == "__main__":
    argv = ["--models", "olmoe", "--batches", "64", "--input-len", "128", "--variant", "base"]
    for name, cfg in VARIANTS.items():
        argv += ["--variant", f"{name}:minimoe.kernels.moe_configs.BUCKET_OVERRIDES={{64: {cfg!r}}}"]
    sys.exit(main(argv + sys.argv[1:]))
