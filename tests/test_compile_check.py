"""The kernels that the interpreter cannot vouch for, compiled for the H200 (sm_90a) on the CPU by
scripts/compile_check.py in a process of its own (the test session runs Triton interpreted): the rank top-k (its int64
key constants must be constexpr: plain Python globals run in the interpreter and fail to compile, as the thirty-third
session's first device call found), the fused rope + split attention, the rope kernel's step-rows mode. Skipped where
Triton's NVIDIA back end or its bundled cuobjdump is missing."""
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


def _compile(kernel: str, warps: int, const: dict, types: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "compile_check.py"), kernel, "--warps", str(warps),
           "--const", *(f"{k}={v}" for k, v in const.items()), "--type", *(f"{k}={v}" for k, v in types.items())]
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
