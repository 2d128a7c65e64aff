"""Genset up/down times survive a restart (issue 16): kept in the state directory, read bounded and
validated; a bad file is logged and the times count from first sight."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import load_config
from powerctl.control.core import ControllerCore
from powerctl.control.split import slots_from_pool
from powerctl.genset_times import GensetTimes

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "examples" / "demo-site.toml", check_secrets=False)


def _core(path: Path) -> ControllerCore:
    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.zeros((1, n)), np.zeros((3, n)), np.zeros(n)

    core = ControllerCore(CFG, slots_from_pool(CFG.gpu), fc)
    core.gen_times = GensetTimes(path)
    return core


def test_down_time_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gensets.json"
    off = np.array([False])
    first = _core(path)
    assert first.genset_state_s(1000.0, off)[0] == 0.0
    assert first.genset_state_s(1100.0, off)[0] == pytest.approx(100.0)
    # kill -9 here: a new controller reads what the first one stored
    second = _core(path)
    assert second.genset_state_s(1400.0, off)[0] == pytest.approx(400.0)
    # the genset changed state while no controller watched: first sight again
    third = _core(path)
    assert third.genset_state_s(1500.0, np.array([True]))[0] == 0.0


@pytest.mark.parametrize("content", [b"{not json", b'{"gen1": {"on": "yes", "since_s": 5}}',
                                     b'{"gen1": {"on": false, "since_s": 1e12}}', b"[1, 2]", b"x" * (2 << 20)])
def test_a_bad_file_is_logged_and_unknown(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gensets.json"
    path.write_bytes(content)
    caplog.set_level(logging.WARNING, logger="powerctl.genset_times")
    core = _core(path)
    assert core.genset_state_s(1000.0, np.array([False]))[0] == 0.0
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_a_symlink_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "elsewhere.json"
    real.write_text('{"gen1": {"on": false, "since_s": 10.0}}')
    path = tmp_path / "gensets.json"
    path.symlink_to(real)
    caplog.set_level(logging.WARNING, logger="powerctl.genset_times")
    assert _core(path).genset_state_s(1000.0, np.array([False]))[0] == 0.0
    assert any("symlink" in r.getMessage() for r in caplog.records)
