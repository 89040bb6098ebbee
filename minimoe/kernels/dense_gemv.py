"""The MoE decode down kernel as a dense GEMV: one launch for a dense layer at batch 1-2 (`--gemv stream`).

Shape legend: T tokens (1-2), K the reduction (the layer's input width), N outputs.

A dense projection x [T, K] @ W[N, K]ᵀ at decode reads W once and does almost no arithmetic per byte: the
same job as the MoE's GEMM2 (kernels/fused_moe_small.py), whose `_down_combine_kernel` streams [BLOCK_N,
BLOCK_K] weight tiles along the contiguous reduction axis with 16-byte loads. Its DENSE mode treats W as one
expert and each token as one slot of routing weight 1 (no id or weight loads), with two epilogue options for
layers that cuBLAS would otherwise run: a bias added to the fp32 accumulator (BIAS: Qwen's q/k/v), and a
second layer on the same input in the same launch (CAT: MLA's q and latent projections, `linear.linear_pair`).
Measured on the H200 against cuBLAS (scripts/bench_gemv.py, docs/results/2026-11-30-s5): faster on 15 of 16
projection shapes at T = 1; `linear.auto_gemv` says where it runs.
"""
import torch
import triton

from .fused_moe_small import SMALL_KEYS, _down_combine_kernel
from .moe_configs import device_name, on_gpu
from .pdl import launch_args


TILES: dict[tuple[int, int], dict] = {}   # (N, D) -> a tile over `dense_config`'s choice on a GPU (in-step A/B's,
                                          # scripts/step_probe.py variants; empty: STEP_TILES[this GPU], then the rule)
# Measured inside the graphed bs-1 step (per GPU, keyed by (N, D); read after TILES, before the rule). Twenty-second
# session (docs/results/2026-12-02-s22): Qwen3-30B-A3B's o projection (2048, 4096) on [2, 1024] tiles with one warp,
# -2.02% / -2.08% a step (calls 1-2; the rule's [4, 1024] x 4 warps). The same change on (2048, 2048) o projections was
# -0.95% on OLMoE (call 2) and -0.83% on Qwen1.5-MoE but +3.21% on DeepSeek-V2-Lite (call 3), and on Mixtral's
# (4096, 4096) -0.20% (call 2): one shape key cannot tell those steps apart, so only the shape one model owns is in the table.
STEP_TILES: dict[str, dict[tuple[int, int], dict]] = {
    "NVIDIA_H200": {(2048, 4096): {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 1}},
}


def dense_config(N: int, D: int) -> dict:
    """dense_gemv's tile for W [N, D] at batch 1, from the H200 sweep (scripts/bench_gemv.py, 10 tiles x 16
    projection shapes of Qwen3-0.6B / 1.7B, OLMoE, Mixtral, Qwen3-30B-A3B; docs/results/2026-11-30-s5):
    always 4096 weights a step (8 KB in a 16-bit dtype), 4 warps, 3 stages; short rows (D <= 1024, checked
    first) or wide outputs (2.5 D < N < 16 D) take [BLOCK_N, BLOCK_K] = [16, 256], long reductions (D >= 2N)
    and vocabulary heads (N >= 16 D) [4, 1024], the rest [8, 512]; BLOCK_K at most D's next power of two.
    TILES (in-step probes) and then STEP_TILES[this GPU] replace the rule's keys for their (N, D)."""
    if not on_gpu():
        return {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
    if D <= 1024 or 2.5 * D < N < 16 * D:
        block_k = 256
    elif 2 * N <= D or N >= 16 * D:
        block_k = 1024
    else:
        block_k = 512
    block_k = min(block_k, triton.next_power_of_2(D))
    rule = {"BLOCK_N": 4096 // block_k, "BLOCK_K": block_k, "num_warps": 4, "num_stages": 3}
    return {**rule, **(TILES.get((N, D)) or STEP_TILES.get(device_name(), {}).get((N, D)) or {})}


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, config: dict | None = None, pdl: bool = False,
               prefetch_bytes: int = 0, bias: torch.Tensor | None = None,
               second: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """A dense layer at decode through the down kernel above: x [T, K] @ W[N, K]ᵀ (+ bias [N]) -> [T, N] in x.dtype,
    W a plain [N, K] weight seen as one expert, each token one slot of routing weight 1 (an exact
    no-op on the fp32 partial). The kernel streams [BLOCK_N, BLOCK_K] tiles along the contiguous
    reduction axis with 16-byte loads, as for the experts (DENSE: no id or weight loads, no buffers).
    config: the "down" keys (SMALL_KEYS). bias: added to the fp32 accumulator. second (Wb [N2, K], no bias):
    a second layer on the same x in the same launch -> [T, N + N2] = [x Wᵀ, x Wbᵀ] (the two outputs side by
    side: slice them). out_dtype (float32 for an LM head whose logits are wanted in float32): the output rounded to
    x's dtype first, then stored in out_dtype: y.float()'s bits without its copy launch. prefetch_bytes (with pdl, on an sm90+ GPU; measured slower than
    PDL alone, docs/results/2026-12-01-s9 call 4): the L2 prefetch of each weight row's first bytes before
    the kernel waits for its predecessor (rounded down to 16, at most the row). Raises ValueError for an x
    and W that are not 2-D with the same K, dtype and device and a unit last stride; for prefetch_bytes
    without pdl, off a GPU, or with rows that are not 16-byte aligned; for a bias that is not [N]; for a
    second weight with another K, dtype or device, or beside a bias."""
    if (x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or x.dtype != weight.dtype
            or x.device != weight.device or x.stride(1) != 1 or weight.stride(1) != 1):
        raise ValueError(f"dense_gemv: x {tuple(x.shape)} {x.dtype} and W {tuple(weight.shape)} {weight.dtype} need "
                         "the same K, dtype and device, and unit last strides")
    T, K = x.shape
    N = weight.shape[0]
    if bias is not None and (bias.shape != (N,) or not bias.is_contiguous() or bias.device != x.device):
        raise ValueError(f"dense_gemv: bias {tuple(bias.shape)} is not a contiguous [{N}] on x's device")
    if second is not None and (second.dim() != 2 or second.shape[1] != K or second.dtype != weight.dtype
                               or second.device != weight.device or second.stride(1) != 1 or bias is not None):
        raise ValueError(f"dense_gemv: second weight {tuple(second.shape)} does not join W {tuple(weight.shape)} "
                         "(same K, dtype and device, unit last stride, no bias)")
    if prefetch_bytes and not (pdl and on_gpu() and weight.data_ptr() % 16 == 0
                               and weight.stride(0) * weight.element_size() % 16 == 0):
        raise ValueError("dense_gemv: prefetch_bytes needs pdl=True on a GPU and 16-byte aligned weight rows")
    N2 = 0 if second is None else second.shape[0]
    base = dense_config(N + N2, K)
    cfg = {k: (config or {}).get(k, base[k]) for k in SMALL_KEYS}
    out = x.new_empty(T, N + N2, dtype=out_dtype or x.dtype)
    if T == 0:
        return out
    w3 = weight.unsqueeze(0)                                                # [1, N, K]
    wb = w3 if second is None else second
    grid = (T * (triton.cdiv(N, cfg["BLOCK_N"]) + triton.cdiv(N2, cfg["BLOCK_N"])),)
    _down_combine_kernel[grid](
        x, w3, out, x, x if bias is None else bias, 1, 0, 1, N, K,          # ids: never read; weights: the bias
        x.stride(0), w3.stride(0), w3.stride(1), out.stride(0),
        x, w3, x, x, 0, 0, 0, 0,                                            # no shared expert: never read
        wb, N2, wb.stride(0),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], DENSE=True, BIAS=bias is not None,
        CAT=second is not None,
        PREFETCH_BYTES=min(int(prefetch_bytes), K * weight.element_size()) // 16 * 16, **launch_args(pdl))
    return out
