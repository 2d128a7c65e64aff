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
from powerctl.genset_times import GensetTimes, since_from_counter

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


@pytest.mark.parametrize(
    ("stored", "on", "run_s", "since_s"),
    [
        ((True, 1000.0, 5000.0), False, 5300.0, 1300.0),  # ran 300 s more, then stopped: down since 1300
        ((False, 1000.0, 5000.0), True, 5200.0, 1800.0),  # started while none watched: up 200 s
        ((True, 1000.0, 5000.0), True, 5400.0, 1600.0),  # stopped and ran again: the run is 400 s at most
        ((True, 1000.0, 5000.0), True, 6000.0, 1000.0),  # ran on (the counter grew as the clock)
        ((False, 1000.0, 5000.0), False, 5100.0, 1100.0),  # ran 100 s between, rests again
        ((False, 1000.0, 5000.0), False, 5000.0, 1000.0),  # rested all along
        ((True, 1000.0, None), False, 5300.0, None),  # no counter then: first sight
        ((True, 1000.0, 5000.0), False, 10.0, None),  # the counter went back (reset): first sight
        ((False, 1000.0, 5000.0), False, None, 1000.0),  # no counter now, same state: as stored
        (None, True, 5000.0, None),  # nothing stored: first sight
    ],
)
def test_the_run_time_counter_times_what_nobody_watched(
    stored: tuple[bool, float, float | None] | None, on: bool, run_s: float | None, since_s: float | None
) -> None:
    got = since_from_counter(on, 2000.0, stored, run_s)
    assert got == (None if since_s is None else pytest.approx(since_s))


def test_counter_carries_the_down_time_over_a_restart_in_another_state(tmp_path: Path) -> None:
    """kill -9 while running; the genset stops by itself 300 s later (its counter says so): the
    restarted daemon counts its down time from that stop, not from first sight."""
    path = tmp_path / "gensets.json"
    first = _core(path)
    assert first.genset_state_s(1000.0, np.array([True]), [7200.0])[0] == 0.0
    assert first.genset_state_s(1100.0, np.array([True]), [7300.0])[0] == pytest.approx(100.0)
    second = _core(path)
    # at 2000 s: stopped, counter 7500 (ran until 1300 s) -> down 700 s
    assert second.genset_state_s(2000.0, np.array([False]), [7500.0])[0] == pytest.approx(700.0)
    # and the next restart, still stopped, keeps that stop time
    third = _core(path)
    assert third.genset_state_s(2100.0, np.array([False]), [7500.0])[0] == pytest.approx(800.0)
    # a genset whose profile has no counter still counts from first sight after a change
    fourth = _core(path)
    assert fourth.genset_state_s(2200.0, np.array([True]), [None])[0] == 0.0
