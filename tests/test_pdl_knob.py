"""kernels/pdl.py's launch arguments and its bisection knob OFF_IN (no GPU needed: only the arguments are checked)."""
import types

from minimoe.kernels import pdl


def _launcher_in(module_name: str):
    """A launcher function whose globals say it lives in `module_name`, as a kernel module's launchers do."""
    mod = types.ModuleType(module_name)
    exec("from minimoe.kernels.pdl import launch_args, release_args\n"
         "def launch(p):\n    return launch_args(p)\n"
         "def release(p):\n    return release_args(p)\n", mod.__dict__)
    return mod


def test_launch_args_follow_the_setting_unless_the_module_is_off(monkeypatch):
    att, moe = _launcher_in("minimoe.kernels.decode_attention"), _launcher_in("minimoe.kernels.fused_moe")
    for m in (att, moe):
        assert m.launch(True) == {"PDL": True, "launch_pdl": True}
        assert m.launch(False) == {"PDL": False, "launch_pdl": False}
        assert m.release(True) == {"PDL": True, "launch_pdl": False}       # stream order, releases its successor
    monkeypatch.setattr(pdl, "OFF_IN", {"minimoe.kernels.decode_attention"})
    assert att.launch(True) == {"PDL": False, "launch_pdl": False}
    assert att.release(True) == {"PDL": False, "launch_pdl": False}
    assert moe.launch(True) == {"PDL": True, "launch_pdl": True}            # other modules untouched
    monkeypatch.setattr(pdl, "OFF_IN", set())
    assert att.launch(True) == {"PDL": True, "launch_pdl": True}


def test_trigger_early_off_waits_only(monkeypatch):
    """TRIGGER_EARLY False: the PDL constexpr becomes 2 (wait, no early release) wherever PDL was on; off stays off."""
    moe = _launcher_in("minimoe.kernels.fused_moe")
    monkeypatch.setattr(pdl, "TRIGGER_EARLY", False)
    assert moe.launch(True) == {"PDL": 2, "launch_pdl": True}
    assert moe.release(True) == {"PDL": 2, "launch_pdl": False}
    assert moe.launch(False) == {"PDL": False, "launch_pdl": False}


def test_late_trigger_in_waits_only_for_the_named_modules(monkeypatch):
    """LATE_TRIGGER_IN: a named module's launches keep PDL (launch flag and wait) but drop the early release (2);
    other modules keep True; a module also in OFF_IN stays off; launches without pdl stay off."""
    att, moe = _launcher_in("minimoe.kernels.decode_attention"), _launcher_in("minimoe.kernels.fused_moe")
    monkeypatch.setattr(pdl, "LATE_TRIGGER_IN", {"minimoe.kernels.decode_attention"})
    assert att.launch(True) == {"PDL": 2, "launch_pdl": True}
    assert att.release(True) == {"PDL": 2, "launch_pdl": False}
    assert att.launch(False) == {"PDL": False, "launch_pdl": False}
    assert moe.launch(True) == {"PDL": True, "launch_pdl": True}
    monkeypatch.setattr(pdl, "OFF_IN", {"minimoe.kernels.decode_attention"})
    assert att.launch(True) == {"PDL": False, "launch_pdl": False}
