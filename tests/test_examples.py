"""Guards the examples/ scripts: each runs as a new user would and prints what it promises."""
import subprocess
import sys
from pathlib import Path

import pytest

from minimoe.loader import ram_bytes

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


def test_generate_example_shows_text_for_a_trained_model():
    """A checkpoint with a tokenizer gets text prompts and shows text, not ids (the stdlib models add no BOS: the
    prompt opens with <|endoftext|> as their training documents did, so the first new tokens read as Python)."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--model", "olmoe-stdlib"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("loop experts:    'import os\\n' -> '"), lines[0]
    assert "(identical)" in lines[1] and lines[1].split(" -> ")[1] == lines[0].split(" -> ")[1] + " (identical)"
    assert "(each as when run alone)" in lines[3]


def test_generate_example_refuses_a_model_too_big_in_one_line():
    """Mixtral-8x7B in fp32 (~175 GiB) fits no CI machine: the loader's MemoryError was a traceback here."""
    if ram_bytes() is None or ram_bytes()[0] > 150 * 2**30:
        pytest.skip("needs a machine with less than 150 GiB of free RAM")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--model", "mixtral"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: the weights need"), out.stderr
