"""scripts/pdl_order_check.py's SASS check (compiled for sm90 with Triton's ptxas / nvdisasm; no GPU): a kernel that
loads before its PDL wait is flagged, minimoe's RMSNorm is not, and a kernel without the wait is reported as such.
The compiler runs in a subprocess without TRITON_INTERPRET (conftest.py sets it, and interpreted kernels do not
compile)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from minimoe.kernels.pdl import wait_then_release  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = pytest.mark.skipif(not (_BIN / "ptxas").exists() or not (_BIN / "nvdisasm").exists(),
                                reason="Triton's ptxas / nvdisasm are not in this install")


@triton.jit
def _load_then_wait(x_ptr, y_ptr, PDL: tl.constexpr, EARLY: tl.constexpr):
    offs = tl.arange(0, 128)
    if EARLY:
        v = tl.load(x_ptr + offs)                   # the bug the check exists for: read before the wait
        wait_then_release(PDL)
    else:
        wait_then_release(PDL)
        v = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, v + 1.0)


def _results() -> dict:
    """Run in the subprocess: (globals before the wait, waited) for each case."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pdl_order_check as chk
    from minimoe.kernels import rmsnorm
    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "PDL": "constexpr", "EARLY": "constexpr"}
    out = {}
    for name, pdl, early in (("early", True, True), ("waits_first", True, False), ("no_wait", False, False)):
        sass = chk.compile_sass(_load_then_wait, sig, {"PDL": pdl, "EARLY": early}, {"num_warps": 4})
        out[name] = chk.globals_before_wait(sass)
    fn = rmsnorm._rms_norm_kernel
    consts = {"BLOCK": 2048, "HAS_RESIDUAL": True, "PDL": True}
    sig = {n: "constexpr" if n in consts else ("*bf16" if n.endswith("_ptr") else "fp32" if n == "eps" else "i32")
           for n in fn.arg_names}
    out["rmsnorm"] = chk.globals_before_wait(chk.compile_sass(fn, sig, consts, {"num_warps": 8}))
    return out


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; sys.path.insert(0, %r); import test_pdl_order as t; print(json.dumps(t._results()))"
            % str(ROOT / "tests"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_load_before_the_wait_is_flagged(results):
    before, waited = results["early"]
    assert waited and any(ins.startswith("LDG") for ins in before), before
    assert results["waits_first"] == [[], True]


def test_no_wait_is_reported(results):
    before, waited = results["no_wait"]
    assert not waited and any(ins.startswith(("LDG", "STG")) for ins in before), before


def test_rmsnorm_waits_first(results):
    assert results["rmsnorm"] == [[], True]
