"""Launch configs for `fused_moe`: tuned data when we have it, a tokens-per-expert rule otherwise.

A config is a plain dict:

    {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 5,
     "down": {"BLOCK_N": 64, ...}}

The top-level keys drive GEMM1 (gate+up: N = 2I in two halves, reduction over D). The optional
"down" dict overrides them for GEMM2 (N = D, reduction over I), whose shape differs; BLOCK_M is
shared because both GEMMs walk the same M-blocks from one alignment. An optional "variant"
("small" | "small_dot" | "aligned") forces the path `fused_moe.plan` would otherwise choose, and an
optional "small" dict sets the decode variant's own tiles (fused_moe_small.py; it reads nothing else).
An optional "b_tma": true has the aligned variant read its weight tiles through host TMA descriptors (Hopper's
tensor memory accelerator, fused_moe_gemms.py) instead of pointer loads: at the top level for both GEMMs, and "down":
{"b_tma": ...} overrides it for GEMM2 alone. Like the tiles it is a launch parameter the tuner picks per bucket
(scripts/tune_fused_moe.py --tma), not a user switch: the H200 tables carry it, and the rule below sets it from
PREFILL_TMA_MIN_ROWS routed rows an expert.
The gathered activation rows keep pointer loads, and where the unit cannot serve (a shared expert's blocks at decode
batches, small_dot, weights not 16-byte aligned) the launch keeps the pointer path (`fused_moe._b_tma`): same result.

What size of tile is right depends on tokens per expert, tpe = T·K/E, not on T: an expert sees
about tpe rows, so BLOCK_M past tpe only multiplies padding. At decode (tpe of a few) the layer is
a stream of weights: BLOCK_M = 16 (the smallest tl.dot), long BLOCK_K and deep pipelines so many
bytes are in flight. At prefill it is a GEMM: 128-row tiles, 8 warps, GROUP_M ordering for L2 reuse.
Sources: vLLM's default rule (PR #34846) and its tuned H100/H200 tables (peers.md §1.4).

Tuned files live in configs/ and are written by scripts/tune_fused_moe.py, one per
(E, I, D, K, device, dtype), mapping a token bucket to a config; the nearest bucket (in log T)
is used, as vLLM does with nearest-M.
"""

import functools
import json
import math
import os
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"
GEMM_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

# Shared memory one program may use for its software pipeline. Hopper allows 227 KB per block;
# leave room for Triton's epilogue layout conversions.
SMEM_BUDGET = 200 * 1024

# A probe knob, empty in normal runs: {token bucket: config} taken instead of a tuned table's entry for that bucket
# (every (E, I, D, K) shape with a table, the quantized tables of fused_moe_quant too), so scripts/step_probe.py and
# scripts/bench_knob.py can time a candidate inside the graphed step before it is written into configs/ (a tile that
# wins alone can lose in the step). A key must be one of the table's buckets (the bucket nearest T is looked up first,
# then replaced); tables are read on a GPU only, so on a CPU or under the interpreter it changes nothing.
BUCKET_OVERRIDES: dict[int, dict] = {}


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"


@functools.lru_cache(maxsize=None)
def device_name() -> str:
    return torch.cuda.get_device_name().replace(" ", "_") if torch.cuda.is_available() else "cpu"


def dtype_name(dtype: torch.dtype | str) -> str:
    """torch.bfloat16 -> "bfloat16"; a string (a quantized table's "fp8_w8a8") as it is."""
    return str(dtype).removeprefix("torch.")


def config_file_name(E: int, I: int, D: int, K: int, dtype: torch.dtype | str,
                     device: str | None = None) -> str:
    """K is in the key because it sets tokens per expert for a given T."""
    device = device or device_name()
    return f"E={E},I={I},D={D},K={K},device_name={device},dtype={dtype_name(dtype)}.json"


# Another Hopper GPU (sm90: an H100, an H800, ...) with no table of its own reads this device's tables (the tiles were
# tuned on an H200, which has the same SMs, clocks and shared memory, only more and faster HBM); None: such a GPU runs
# the rule (default_config) for every shape, as it always has. Measured on an H100 (forty-seventh session, graphed
# steps, 3-5 rounds, docs/results/2026-12-05-s47/): the H200's tables won at bs 64 on three of four models (OLMoE
# -0.18%, Qwen3-30B-A3B -0.74%, Qwen1.5-MoE -0.22%; DeepSeek-V2-Lite +0.06%) and at OLMoE's bs-64 prefill (-0.36%), and
# lost at bs 16 on three of four (OLMoE +0.20% / +0.26%, DeepSeek-V2-Lite +0.36%, Qwen1.5-MoE +0.21%; Qwen3-30B-A3B
# -1.88%): no default either way, so off (the rule the H100 has always run). OLMoE's table tuned on the H100 itself
# gave at most 0.17% at decode: the rule is near that card's best there.
HOPPER_FALLBACK: str | None = None


@functools.lru_cache(maxsize=None)
def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def tuned_table(E: int, I: int, D: int, K: int, dtype: torch.dtype | str,
                config_dir: str | Path | None = None) -> dict[int, dict] | None:
    """The tuned table of (E, I, D, K, dtype) in config_dir (default CONFIG_DIR) for this GPU: its own file, else on
    another Hopper GPU the HOPPER_FALLBACK device's file, else None (the rule)."""
    folder = Path(config_dir if config_dir is not None else CONFIG_DIR)
    own = load_tuned(str(folder / config_file_name(E, I, D, K, dtype)))
    if own is not None or not HOPPER_FALLBACK or device_name() == HOPPER_FALLBACK or not _hopper():
        return own
    return load_tuned(str(folder / config_file_name(E, I, D, K, dtype, HOPPER_FALLBACK)))


@functools.lru_cache(maxsize=None)
def load_tuned(path: str) -> dict[int, dict] | None:
    """{token bucket: config} from a tuned JSON file, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return {int(t): cfg for t, cfg in data["configs"].items()}


def nearest_bucket(table: dict[int, dict], T: int) -> dict:
    """Config of the bucket closest to T in log scale (buckets are roughly geometric); BUCKET_OVERRIDES first."""
    best = min(table, key=lambda b: (abs(math.log2(b) - math.log2(max(T, 1))), b))
    return dict(BUCKET_OVERRIDES.get(best, table[best]))


def pipeline_stages(block_m, block_n, block_k, n_b_tiles, elem_bytes, max_stages) -> int:
    """Deepest pipeline whose A and B tiles fit the shared-memory budget (at least 2)."""
    per_stage = (block_m * block_k + n_b_tiles * block_k * block_n) * elem_bytes
    return max(2, min(max_stages, SMEM_BUDGET // per_stage))


# The rule's TMA prefill tiles, from PREFILL_TMA_MIN_ROWS routed rows an expert (tokens per expert T·K / E; None:
# never): the tuner's winners at prefill on every shipped table and on the unseen shapes of issue 16
# (docs/results/2026-12-05-s45), i.e. GEMM1 128 x 128 x 32 tiles 5 deep, GEMM2 128 x 256 x 64 tiles 4 deep (fp32: 4
# and 2), both reading their weight tiles through TMA (`b_tma`; pointer loads with these tiles where the GPU or Triton
# has no TMA; a fused shared expert, which never takes TMA, is fused up to 64 tokens only, far below these sizes).
# Below it, the 128 x 128 x 64 pointer tiles every earlier rule gave. Measured against those
# (scripts/default_rule_ab.py, H100, docs/results/2026-12-05-s46, calls 6-7: 3 rounds, ABBA; old time / new): from 512
# rows a win in all nine cells, 1.005x-1.090x (median 1.041x: Qwen2-57B-A14B 1.090 / 1.042 at 4,096 / 8,192 tokens,
# Qwen3-235B-A22B 1.041 at 8,192, Phi-3.5-MoE 1.018 / 1.005, granite-3.0-3b 1.017 / 1.063, a 4-expert Mixtral chunk as
# the int4 / int8 prefill runs it 1.086 / 1.014); at 256 rows a loss (Qwen3-235B-A22B 0.981 at 4,096 tokens; call 2,
# one timing each: Qwen2-57B-A14B 0.999, Phi-3.5-MoE 0.981 at 2,048).
PREFILL_TMA_MIN_ROWS: int | None = 512


def default_config(E: int, I: int, D: int, K: int, T: int, dtype: torch.dtype, prefill_tma: bool | None = None) -> dict:
    """Heuristic config from tokens per expert T·K / E (thresholds follow vLLM's tuned H200 tables; the prefill
    tiles, PREFILL_TMA_MIN_ROWS, this engine's tuner's): {BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[,
    b_tma], down: GEMM2's overrides}. prefill_tma None follows PREFILL_TMA_MIN_ROWS; True takes the TMA prefill tiles
    wherever the rule groups M-blocks (more than 128 rows an expert; scripts/default_rule_ab.py); False never (the
    quantized path, whose B tiles are codes, builds on the pointer tiles)."""
    tpe = T * K / E
    block_m = 16 if tpe < 12 else 32 if tpe < 24 else 64 if tpe < 48 else 128
    block_n = 64 if block_m == 16 else 128
    block_k = 128 if block_m == 16 else 64
    max_stages = 5 if block_m <= 32 else 4
    elem = torch.finfo(dtype).bits // 8
    cfg = {
        "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
        # Grouped ordering pays only when an expert has many M-blocks to share its weight tiles.
        "GROUP_M": 16 if tpe > 128 else 1,
        "num_warps": 4 if block_m <= 32 else 8,
        # GEMM1 loads a gate and an up tile per step: two B tiles.
        "num_stages": pipeline_stages(block_m, block_n, block_k, 2, elem, max_stages),
    }
    # GEMM2 has one accumulator, so at prefill it can afford the 128x256 tile GEMM1 cannot.
    down_n = 256 if block_m == 128 else block_n
    cfg["down"] = {"BLOCK_N": down_n,
                   "num_stages": pipeline_stages(block_m, down_n, block_k, 1, elem, max_stages)}
    if prefill_tma is None:
        prefill_tma = PREFILL_TMA_MIN_ROWS is not None and tpe >= PREFILL_TMA_MIN_ROWS
    if prefill_tma and tpe > 128:
        cfg.update(BLOCK_K=32, num_stages=pipeline_stages(128, 128, 32, 2, elem, 5), b_tma=True)
        cfg["down"] = {"BLOCK_N": 256, "BLOCK_K": 64, "num_stages": pipeline_stages(128, 256, 64, 1, elem, 4),
                       "b_tma": True}
    return cfg


def interpreter_config() -> dict:
    """Small tiles for TRITON_INTERPRET / CPU runs, where numpy pays for every element."""
    return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1,
            "num_warps": 4, "num_stages": 1}


def get_config(E: int, N: int, D: int, K: int, T: int, dtype: torch.dtype) -> dict:
    """Launch config for fused_moe with E local experts, N = I (the expert FFN width, w2.shape[2],
    vLLM's naming), hidden D, top-K, T tokens. Tuned file first (tuned_table: this GPU's, or on another Hopper GPU
    the H200's), then the heuristic."""
    if not on_gpu():
        return interpreter_config()
    table = tuned_table(E, N, D, K, dtype)
    if table:
        return nearest_bucket(table, T)
    return default_config(E, N, D, K, T, dtype)


def down_config(config: dict) -> dict:
    """GEMM2's config: the shared keys with the "down" overrides applied (never BLOCK_M)."""
    merged = {k: config[k] for k in GEMM_KEYS}
    if "b_tma" in config:
        merged["b_tma"] = config["b_tma"]
    merged.update({k: v for k, v in config.get("down", {}).items() if k != "BLOCK_M"})
    return merged
