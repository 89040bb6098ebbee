"""The kernels that the interpreter cannot vouch for, compiled for the H200 (sm_90a) on the CPU by
scripts/compile_check.py in a process of its own (the test session runs Triton interpreted): the rank top-k (its int64
key constants must be constexpr: plain Python globals run in the interpreter and fail to compile, as the thirty-third
session's first device call found), the fused rope + split attention, the rope kernel's step-rows mode, and the aligned
fused MoE's GEMM1 at its prefill tile with pointer and TMA weight loads (pipelined either way once the launch's
16-byte specialization is given). Skipped where Triton's NVIDIA back end or its bundled cuobjdump is missing."""
import os
import re
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")):
    pytest.skip("no bundled cuobjdump: cannot read a cubin here", allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _compile(kernel: str, warps: int, const: dict, types: dict, extra: tuple = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "compile_check.py"), kernel, "--warps", str(warps),
           "--const", *(f"{k}={v}" for k, v in const.items()), "--type", *(f"{k}={v}" for k, v in types.items()),
           *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", run.stdout.split(":", 2)[-1])}


def test_rank_topk_compiles_with_fewer_barriers():
    types = {"logits_ptr": "*fp32", "w_ptr": "*fp32", "ids_ptr": "*i64"}
    const = dict(K=8, BLOCK_E=128, BLOCK_K=8, SOFTMAX_FIRST=True, RENORM=True, PDL=False)
    rounds = _compile("minimoe.kernels.route:_route_topk_kernel", 4, {**const, "RANK": False}, types)
    rank = _compile("minimoe.kernels.route:_route_topk_kernel", 4, {**const, "RANK": True}, types)
    assert rank["stack"] == 0 and rank["barriers"] < rounds["barriers"], (rank, rounds)


@pytest.mark.parametrize("qk_norm,early", [(2, True), (1, False)])
def test_fused_rope_attention_compiles(qk_norm, early):
    types = {"pos_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "seq_lens_ptr": "*i32", "o_ptr": "*fp32",
             "lse_ptr": "*fp32"}
    const = dict(H=32, HKV=4, G=8, D=128, BLOCK_H=16, BLOCK_HALL=32, BLOCK_HKV=4, BLOCK_N=64, QK_NORM=qk_norm,
                 CLIP=False, INTERLEAVE=False, DIRECT=False, EARLY=early, PRECISION="tf32", PDL=True)
    stats = _compile("minimoe.kernels.decode_rope_attention:_rope_split_kernel", 8, const, types)
    assert stats["stack"] == 0, stats


@pytest.mark.parametrize("residual", [True, False])
def test_norm_in_the_rope_gemv_compiles_without_spills(residual):
    """The q/k/v GEMV + rope kernel with the residual add + RMSNorm as its prologue (norm_fusion.WITH_ROPE), at
    Mixtral's head layout: no spills, and more instructions than without the norm (the prologue is there)."""
    types = {"pos_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32"}
    const = dict(H=32, HKV=8, HD=128, BLOCK_N=4, BLOCK_K=512, STAGES=3, INTERLEAVE=False, BIAS=False, RN_ASM=True,
                 PDL=True)
    name = "minimoe.kernels.qkv_gemv_rope:_qkv_gemv_rope_kernel"
    plain = _compile(name, 2, const, types)
    folded = _compile(name, 2, {**const, "NORM": True, "HAS_RESIDUAL": residual}, types)
    assert folded["stack"] == 0 and folded["instructions"] > plain["instructions"], (folded, plain)


def test_rope_rows_compiles():
    types = {"pos_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32"}
    const = dict(H=32, HKV=4, D=128, QG=4, BLOCK_QG=4, BLOCK_HKV=4, BLOCK_HALF=64, QK_NORM=2, CLIP=False,
                 INTERLEAVE=False, PDL=True, BLOCK_H=32, FULL_INV=False, ROWS=True)
    assert _compile("minimoe.kernels.rope:_qkv_rope_cache_split_kernel", 4, const, types)["stack"] == 0


def test_bad_arguments_get_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compile_check.py"),
                          "minimoe.kernels.route:_route_topk_kernel", "--const", "NOPE=1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "NOPE" in run.stderr


def test_fused_moe_gemm1_prefill_tile_pipelines_with_and_without_tma():
    """GEMM1 at the prefill tile (128 x 128 x 64, 8 warps, 3 stages) with the launch's 16-byte facts: the pointer loads
    become cp.async copies without spills; with `b_tma` the weight tiles come through TMA loads instead (fewer copies,
    fewer registers). Without --div16 the same kernel would show no pipeline at all (what the check once reported)."""
    types = {"topk_ids_ptr": "*i32", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "num_padded_ptr": "*i32",
             "w13_desc": "tensordesc<bf16[128, 64]>"}
    const = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=16, SMALL=False, SHARED=False, DOT_PRECISION="tf32",
                 PDL=False)
    extra = ("--stages", "3", "--div16", "I", "D", "stride_xt", "stride_we", "stride_wn", "stride_ht", "I_S")
    ptr = _compile("minimoe.kernels.fused_moe_gemms:_gate_up_kernel", 8, {**const, "B_TMA": False},
                   {**types, "w13_desc": "*bf16"}, extra)                      # the launch passes w13 itself there
    tma = _compile("minimoe.kernels.fused_moe_gemms:_gate_up_kernel", 8, {**const, "B_TMA": True}, types, extra)
    assert ptr["stack"] == 0 and ptr["ldgsts"] > 0 and ptr["tma_loads"] == 0, ptr
    assert tma["stack"] == 0 and tma["tma_loads"] > 0 and tma["ldgsts"] < ptr["ldgsts"], (tma, ptr)


def test_fused_moe_overlap_flags_keep_their_acquire_and_release():
    """`OVERLAP_GEMMS` at OLMoE's bs-64 tile with TMA weights: GEMM1 (FLAGS) releases its M-block's counter, GEMM2
    (FLAGS, no gdc_wait) reads it with acquires that survive lowering (their values feed the spin loop; an acquire
    whose result is unused was dropped by Triton 3.6), and both compile without spills."""
    types = {"topk_ids_ptr": "*i32", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "num_padded_ptr": "*i32",
             "flags_ptr": "*i32"}
    const = dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=1, SMALL=False, SHARED=False, DOT_PRECISION="tf32",
                 PDL=False, B_TMA=True)
    g1 = _compile("minimoe.kernels.fused_moe_gemms:_gate_up_kernel", 4, {**const, "FLAGS": True},
                  {**types, "w13_desc": "tensordesc<bf16[128, 128]>"},
                  ("--stages", "3", "--div16", "I", "D", "stride_xt", "stride_we", "stride_wn", "stride_ht", "I_S"))
    g2 = _compile("minimoe.kernels.fused_moe_gemms:_down_kernel", 4, {**const, "FLAGS": True, "SHARED_GATE": False},
                  {**types, "weights_ptr": "*fp32", "w2_desc": "tensordesc<bf16[128, 128]>"},
                  ("--stages", "3", "--div16", "I", "D", "stride_ht", "stride_we", "stride_wn", "stride_yt", "I_S"))
    off = _compile("minimoe.kernels.fused_moe_gemms:_down_kernel", 4, {**const, "FLAGS": False, "SHARED_GATE": False},
                   {**types, "weights_ptr": "*fp32", "w2_desc": "tensordesc<bf16[128, 128]>"},
                   ("--stages", "3", "--div16", "I", "D", "stride_ht", "stride_we", "stride_wn", "stride_yt", "I_S"))
    assert g1["releases"] >= 1 and g1["stack"] == 0, g1
    assert g2["acquires"] >= 2 and g2["stack"] == 0 and g2["tma_loads"] > 0, g2
    assert off["acquires"] == 0 and off["releases"] == 0, off


def test_pdl_mark_compiles():
    """The empty PDL kernel that graphs.PrefillGraph.run launches after its replay (no arguments, PDL constexpr)."""
    out = _compile("minimoe.kernels.pdl:_pdl_mark_kernel", 1, {"PDL": True}, {})
    assert out["stack"] == 0 and out["shared"] == 0, out
