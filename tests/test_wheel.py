"""Guards packaging: a wheel built from the checkout, installed into a fresh virtual environment, resolves the
model cards it ships (package data) and runs `python -m minimoe generate` from outside the checkout."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_generates_from_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("minimoe-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    shipped = {n for n in names if n.startswith("minimoe/kernels/configs/") and n.endswith(".json")}
    tuned = {f"minimoe/kernels/configs/{p.name}" for p in (ROOT / "minimoe" / "kernels" / "configs").glob("*.json")}
    assert tuned and shipped == tuned, sorted(tuned ^ shipped)    # the fused MoE's tuned launch tables ship
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the license text ships"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # torch and friends come from this interpreter's site-packages; .pth files there are not processed, so
    # the checkout's editable install of minimoe stays invisible and only the wheel can be imported
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import minimoe, minimoe.cards as c; print(minimoe.__file__); "
                            "print(c.cards_dir())"], cwd=outside, check=True, capture_output=True, text=True)
    module, cards = where.stdout.split()
    assert module.startswith(str(site)) and cards.startswith(str(site)), where.stdout
    run = subprocess.run([str(python), "-m", "minimoe", "generate", "--model", "olmoe-tiny", "--prompt-ids", "1,2,3",
                          "--max-new-tokens", "4", "--json", "-"], cwd=outside, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["prompt_ids"] == [1, 2, 3] and len(out["new_ids"][0]) == 4
