"""Guards the examples/ scripts: each runs as a new user would and prints what it promises."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generate_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py")], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("loop experts:") and len(lines[0].split(",")) == 16
    assert "(identical)" in lines[1]
    assert lines[3].startswith("ragged batch:") and "(each as when run alone)" in lines[3]
    again = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py")], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert again.stdout == out.stdout                                   # seeded: the sampled line too
