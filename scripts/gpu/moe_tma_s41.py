"""Forty-first session, call 2: TMA weight tiles (`b_tma`) for the decode buckets (16 / 32 / 64 tokens) inside the
graphed step. No decode bucket was ever tuned with `tune_fused_moe.py --tma`; call 1 found b_tma on OLMoE's
T = 64 bucket -0.40% a step (GEMM1 alone -0.33%, GEMM2 alone -0.06%). Variants for one model, from its own tuned
table through `moe_configs.BUCKET_OVERRIDES`: tma (both GEMMs), g1tma (GEMM1 only), and for OLMoE a few deeper
TMA tiles at T = 64.

    python scripts/gpu/moe_tma_s41.py MODEL --batches 16 64 --json OUT.json [--steps 40 --rounds 3]
"""
import sys

from minimoe.kernels import moe_configs
from scripts.step_probe import main

SHAPES = {"olmoe": (64, 1024, 2048, 8), "qwen3": (128, 768, 2048, 8), "mixtral": (8, 14336, 4096, 2)}
BUCKETS = (16, 32, 64)


def table(model):
    E, I, D, K = SHAPES[model]
    path = moe_configs.CONFIG_DIR / moe_configs.config_file_name(E, I, D, K, "bfloat16", "NVIDIA_H200")
    return moe_configs.load_tuned(str(path))


def variants(model):
    t = table(model)
    tma = {b: dict(t[b], b_tma=True) for b in BUCKETS}
    g1 = {b: dict(t[b], b_tma=True, down=dict(t[b].get("down", {}), b_tma=False)) for b in BUCKETS}
    out = {"tma": tma, "g1tma": g1}
    if model == "olmoe":
        c = dict(t[64], b_tma=True)
        out["tma_w4"] = {64: dict(c, num_warps=4)}
        out["tma_d4"] = {64: dict(c, down={"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 4})}
        out["tma_d5w4"] = {64: dict(c, down={"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 5})}
    return out


if __name__ == "__main__":
    model, rest = sys.argv[1], sys.argv[2:]
    argv = ["--models", model, "--input-len", "128", "--variant", "base"]
    for name, over in variants(model).items():
        argv += ["--variant", f"{name}:minimoe.kernels.moe_configs.BUCKET_OVERRIDES={over!r}"]
    sys.exit(main(argv + rest))
