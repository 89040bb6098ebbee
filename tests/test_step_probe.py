"""scripts/step_probe.py's variant spelling: module knobs and RunSettings fields, and what it refuses."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
step_probe = pytest.importorskip("step_probe")


def test_a_settings_field_and_a_module_knob_in_one_variant():
    from minimoe.kernels import o_route
    name, sets = step_probe.parse_variant("fold:settings.fold_router='on',minimoe.kernels.o_route.REPLICAS=8")
    assert name == "fold"
    assert sets == [("settings", "fold_router", "on"), (o_route, "REPLICAS", 8)]
    assert step_probe.parse_variant("base") == ("base", [])


@pytest.mark.parametrize("text,match", [
    ("x:settings.no_such_switch=1", "RunSettings has no field no_such_switch"),
    ("x:minimoe.kernels.o_route.NO_SUCH=1", "has no attribute NO_SUCH"),
    ("x:fold_router", "module.ATTR=VALUE"),
    ("x:minimoe.kernels.fused_moe.OVERLAP_GEMMS='maybe'", "OVERLAP_GEMMS is one of 'auto', 'on', 'off'"),
])
def test_refused_spellings(text, match):
    with pytest.raises(ValueError, match=match):
        step_probe.parse_variant(text)
