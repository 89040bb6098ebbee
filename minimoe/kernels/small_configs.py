"""The batch-1/2 decode GEMVs' launch configs (kernels/fused_moe_small.py): the measured rule, tiles measured inside
the graphed step per GPU, shape and T, per-shape overrides for in-step A/B's, and a fused_moe config's "small" key.

Shape legend: E local experts, I expert FFN width, D hidden size, K experts per token, T tokens (1-4 here:
fused_moe.plan picks these kernels while T·K·SMALL_BATCH_RATIO <= E).

A config is two dicts of SMALL_KEYS, GEMM1's (gate + up, SiLU) and, under "down", GEMM2's (down + combine):
    {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 1,
     "down": {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3}}
Order, last wins: the rule (small_default_config), STEP_TILES (measured inside the graphed step, per GPU, shape, T and
whether a shared expert rides in the kernels; bf16 only), SMALL_TILES (in-step A/B's), a tuned config's "small" key.
"""
import torch
import triton

from .moe_configs import device_name, on_gpu

SMALL_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages")


def small_default_config(E: int, I: int, D: int, K: int, T: int, dtype: torch.dtype,
                         sms: int | None = None) -> dict:
    """Decode config. Measured on the H200 (scripts/bench_moe_small.py, 30 configs x 9 shapes, bf16):
    one pair of tiles was best or within 2% of the best for all five models at T = 1 and 2 --
    GEMM1 [4, 1024] (many thin programs, each streaming long rows of both halves), GEMM2 [8, 512]
    pipelined 3 deep (the loop steps are slots whose expert id is itself a load; Triton leaves such
    a load unpipelined at 2 stages). A per-shape rule that filled the SMs with wider tiles was
    9-50% slower. BLOCK_K never exceeds the reduction dim (rounded up to a power of 2).
    Re-swept in the eighth session (docs/results/2026-11-30-s8, call 2) with a split-K GEMM2 tried (2-8
    programs per column block, the last to arrive adding the partials): never faster than the best
    unsplit tile, so it was not kept. The sweep also put GEMM2 [16, 256] 2-9% ahead at T = 1 for the
    narrow experts, but inside the graphed OLMoE step that tile took 16.9 µs against [8, 512]'s 12.7
    (call 4): the sweep's back-to-back calls of one layer are not the step's context, so the default
    stays. Nineteenth session, inside the graphed bs-1 step (docs/results/2026-12-02-s19, call 4): at T = 1
    the narrow experts' GEMM2 (I < 4096) takes [4, 1024] with 2 warps, -4.3% a step on OLMoE-1B-7B, -5.1% on
    Qwen3-30B-A3B, -3.2% on DeepSeek-V2-Lite, -0.9% on Qwen1.5-MoE (whose 4 warps, -1.2%, STEP_TILES keeps):
    more programs, each streaming whole rows of the narrow h in one or two steps."""
    if not on_gpu() and sms is None:   # the interpreter pays per program and per element
        tile = {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
        return dict(tile, down=dict(tile))
    gate_up = {"BLOCK_N": 4, "BLOCK_K": min(1024, triton.next_power_of_2(D)), "num_warps": 4, "num_stages": 1}
    if T == 1 and I < 4096:
        down = {"BLOCK_N": 4, "BLOCK_K": min(1024, triton.next_power_of_2(I)), "num_warps": 2, "num_stages": 3}
    else:
        down = {"BLOCK_N": 8, "BLOCK_K": min(512, triton.next_power_of_2(I)), "num_warps": 4, "num_stages": 3}
    return dict(gate_up, down=down)


# (E, I, D, K) -> {"BLOCK_N": .., "down": {..}}: tiles over small_default_config's for one expert shape at every decode
# T of kernels/fused_moe_small.py (bf16 / fp16; not the quantized decode kernels). Key None: every shape without its
# own entry; empty: the sweep's rule. For in-step A/B's (scripts/step_probe.py variants set it; a tuned table's
# "small" key still wins): the eighth session's lesson is that a tile must win inside the graphed step. Keys other
# than SMALL_KEYS (and "down") raise ValueError, so a misspelt knob cannot measure the baseline twice.
SMALL_TILES: dict[tuple[int, int, int, int] | None, dict] = {}


# device_name() -> {(E, I, D, K, T, shared): tile}: tiles that beat the rule inside the graphed bs-1 step
# (scripts/step_probe.py, every variant interleaved with the rule's; docs/results/2026-12-02-s19), read for bf16 only.
# Only the T measured: the same tile can lose at T = 2 (the shared-expert models' GEMM1 [2, 2048] was -5 to -6% a step
# at T = 1 and +3 to +4% at T = 2). shared: the shared expert's programs ride in GEMM1 (--fuse-shared, the default
# with --fused); without them GEMM1 is another launch, not measured.
STEP_TILES: dict[str, dict[tuple[int, int, int, int, int, bool], dict]] = {
    "NVIDIA_H200": {
        # OLMoE-1B-7B and Qwen3-30B-A3B: the rule (GEMM2 4 x 1024, 2 warps at T = 1: -4.3% / -5.1% a step, call 4;
        # bench bs 1 970 -> 1,009 and 336 -> 354 tok/s, call 5)
        # DeepSeek-V2-Lite (2 shared experts folded into GEMM1): GEMM1 2 x 2048, 2 rows a program, each the whole of D
        # in one chunk (call 3: 2,268 -> 2,146 µs, -5.4%), and the rule's GEMM2 (-3.2% more, call 4); bench 451 -> 467
        # tok/s (calls 3, 5; 428 in the eighteenth session, another machine)
        (64, 1408, 2048, 6, 1, True): {"BLOCK_N": 2, "BLOCK_K": 2048},
        # Qwen1.5-MoE-A2.7B (its shared expert in GEMM1): GEMM1 2 x 2048 and a 4-stage GEMM2 (1,859 -> 1,717 µs,
        # -7.7%, call 3), then GEMM2 4 x 1024 with 4 warps (-1.2%, call 4; the rule's 2 warps -0.9%); bench 526 ->
        # 570 -> 576 tok/s
        (60, 1408, 2048, 4, 1, True): {"BLOCK_N": 2, "BLOCK_K": 2048, "down": {"num_warps": 4, "num_stages": 4}},
        # Qwen3-30B-A3B: the rule's GEMM2 with one warp at T = 1 (-1.11% a step, twentieth session call 1; bench bs 1
        # 353.1 -> 357.1 tok/s in the same call; OLMoE -0.28%, not taken), and at T = 2 GEMM2 4 x 1024 with 2 warps
        # (the rule's T = 1 tile: -3.44% a bs-2 step; OLMoE -0.23%, not taken)
        (128, 768, 2048, 8, 1, False): {"down": {"num_warps": 1}},
        (128, 768, 2048, 8, 2, False): {"down": {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 2}},
        # Mixtral-8x7B: GEMM1 4 x 2048, GEMM2 BLOCK_K 1024: 6,620 -> 6,514 µs (-1.6%, call 3); bench ITL 6.508 ms
        (8, 14336, 4096, 2, 1, False): {"BLOCK_N": 4, "BLOCK_K": 2048, "down": {"BLOCK_K": 1024}},
    },
}


def _over(base: dict, over: dict, source: str) -> dict:
    """base with a tile's keys (and its "down" keys) replaced; ValueError for a key that is not a tile's."""
    bad = (set(over) - set(SMALL_KEYS) - {"down"}) | (set(over.get("down", {})) - set(SMALL_KEYS))
    if bad:
        raise ValueError(f"{source}: unknown keys {sorted(bad)}; a tile takes {', '.join(SMALL_KEYS)} (and 'down')")
    return dict(base, **{k: v for k, v in over.items() if k != "down"}, down=dict(base["down"], **over.get("down", {})))


def small_configs(config: dict | None, E: int, I: int, D: int, K: int, T: int,
                  dtype: torch.dtype, shared: bool = False) -> tuple[dict, dict]:
    """(GEMM1, GEMM2) launch configs: config["small"] (and its "down") over SMALL_TILES[(E, I, D, K)] over
    STEP_TILES[this GPU][(E, I, D, K, T, shared)] (bf16 on a GPU only) over the heuristic. shared: a shared expert
    rides in the kernels. ValueError: a table's tile has a key outside SMALL_KEYS."""
    base = small_default_config(E, I, D, K, T, dtype)
    if on_gpu() and dtype == torch.bfloat16:
        base = _over(base, STEP_TILES.get(device_name(), {}).get((E, I, D, K, T, shared), {}), "STEP_TILES")
    base = _over(base, SMALL_TILES.get((E, I, D, K), SMALL_TILES.get(None, {})), "SMALL_TILES")
    given = (config or {}).get("small", {})
    gate_up = {k: given.get(k, base[k]) for k in SMALL_KEYS}
    down = {k: given.get("down", {}).get(k, base["down"][k]) for k in SMALL_KEYS}
    return gate_up, down
