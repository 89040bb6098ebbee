"""scripts/sass_mix.py compiles the int4 GEMM1 for sm90 on any machine (Triton's wheel ships ptxas and nvdisasm) and
counts its main loop: the biased operands ("asm") must leave no int -> float conversion in the loop and fewer than
half the instructions of the 2^23 path ("off"), or the PTX no longer does what docs/quantization.md says it does."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sass_mix.py"
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "nvdisasm").exists(),
                    reason="this Triton wheel ships no ptxas / nvdisasm")
def test_biased_int4_loop_has_no_conversions_and_half_the_instructions():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--modes", "off", "asm"], capture_output=True, text=True,
                         timeout=600, env=env, cwd=SCRIPT.parents[1])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4))) for m in re.finditer(
        r"^\s*(off|asm):\s+(\d+) total \| integer pipe (\d+) \| conversions (\d+)", run.stdout, re.M)}
    assert set(rows) == {"off", "asm"}, run.stdout
    (off_total, off_int, off_conv), (asm_total, asm_int, asm_conv) = rows["off"], rows["asm"]
    assert off_conv > 0 and asm_conv == 0
    assert asm_total * 2 < off_total and asm_int * 2 < off_int


@pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "nvdisasm").exists(),
                    reason="this Triton wheel ships no ptxas / nvdisasm")
@pytest.mark.parametrize("args", [["--pair", "up", "--tile", "32", "256", "--warps", "4"],
                                  ["--pair", "down", "--tile", "16", "512", "--warps", "1", "--stages", "2"]])
def test_pair_chains_of_four_convert_a_quarter_as_often(args):
    """The pair kernels' chained PTX (pair_quads.py) converts an fp16 pair sum to fp32 once a quad: a quarter of the
    one-word chain's conversions, and fewer instructions in the loop (GEMM1 and GEMM2, int4)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env,
                         cwd=SCRIPT.parents[1])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^\s*c(1|4):\s+(\d+) total \|.*\| fp16->fp32 (\d+)$", run.stdout, re.M)}
    assert set(rows) == {"1", "4"}, run.stdout
    (t1, f1), (t4, f4) = rows["1"], rows["4"]
    assert f4 > 0 and 4 * f4 == f1 and t4 < t1
