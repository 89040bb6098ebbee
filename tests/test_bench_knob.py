"""scripts/bench_knob.py: help, refused settings (one line, non-zero), and the settings recorded in bench.py's JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_knob.py"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_exits_0():
    r = _run("--help")
    assert r.returncode == 0 and "NAME=VALUE" in r.stdout


@pytest.mark.parametrize("item, message", [
    ("minimoe.generate.GREEDY_RAW_LOGITS=1", "holds True of type bool; 1 is of type int"),
    ("minimoe.generate.NO_SUCH=1", "minimoe.generate has no attribute NO_SUCH"),
    ("minimoe.no_such_module.X=1", "cannot import minimoe.no_such_module"),
    ("GREEDY_RAW_LOGITS=True", "is not module.ATTR=VALUE"),
    ("minimoe.kernels.greedy.TARGET_PROGRAMS=2.5", "holds 256 of type int; 2.5 is of type float"),
    ("minimoe.kernels.fused_moe.OVERLAP_GEMMS='maybe'", "is one of 'auto', 'on', 'off', not 'maybe'"),
])
def test_bad_settings_are_refused_in_one_line(item, message):
    r = _run(item, "--", "--model", "olmoe-tiny")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and message in lines[0], r.stderr


def test_settings_are_recorded_in_the_json(tmp_path):
    out = tmp_path / "b.json"
    r = _run("minimoe.generate.STOP_CHECK_EVERY=8", "minimoe.kernels.greedy.TARGET_PROGRAMS=512", "--",
             "--model", "olmoe-tiny", "--bs", "1", "--output-len", "4", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    knobs = json.loads(out.read_text())["knobs"]
    assert knobs == {"minimoe.generate.STOP_CHECK_EVERY": 8, "minimoe.kernels.greedy.TARGET_PROGRAMS": 512}
