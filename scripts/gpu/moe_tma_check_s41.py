"""Forty-first session, call 3: the tables with b_tma on (this session's change) against the tables before it, in the
graphed step, plus three more TMA tiles for OLMoE's T = 64 bucket. The baseline is the new table; "old" puts the
previous entries back through `moe_configs.BUCKET_OVERRIDES`; "overlap" turns on `fused_moe.OVERLAP_GEMMS` (GEMM2
launched early with PDL, its programs waiting on GEMM1's per-M-block arrival flags).

    python scripts/gpu/moe_tma_check_s41.py MODEL --batches 16 64 --json OUT.json [--steps 40 --rounds 3]
"""
import sys

from scripts.step_probe import main

_T = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1}
OLD = {   # the entries this session replaced (tuned 2026-11-28)
    "olmoe": {16: {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 5},
              64: dict(_T, num_warps=8, num_stages=3)},
    "qwen3": {64: dict(_T, num_warps=4, num_stages=3,
                       down={"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4})},
    "mixtral": {16: dict(_T, num_warps=4, num_stages=3)},
}
NEW64 = dict(_T, num_warps=4, num_stages=3, b_tma=True)


def variants(model):
    out = {"old": OLD[model]}
    if model == "olmoe":
        out["d256t"] = {64: dict(NEW64, down={"BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4})}
        out["d4"] = {64: dict(NEW64, down={"num_stages": 4})}
        out["k256"] = {64: dict(NEW64, BLOCK_N=64, BLOCK_K=256, num_stages=2)}
    return out


if __name__ == "__main__":
    model, rest = sys.argv[1], sys.argv[2:]
    argv = ["--models", model, "--input-len", "128", "--variant", "base"]
    for name, over in variants(model).items():
        argv += ["--variant", f"{name}:minimoe.kernels.moe_configs.BUCKET_OVERRIDES={over!r}"]
    # GEMM2 from GEMM1's flags (call 3 ran it as OVERLAP_GEMMS=True, the knob's spelling then)
    argv += ["--variant", "overlap:minimoe.kernels.fused_moe.OVERLAP_GEMMS='on'"]
    sys.exit(main(argv + rest))
