"""The watchdog judges the heartbeat by changes it sees on its own monotonic clock (issue 12):
an mtime set in the future cannot blind it, and a daemon that cannot write the heartbeat file
(full disk, file gone and not re-creatable) keeps the watchdog quiet through its directory instead
of being fought every 30 s. Real watchdog process where the old behaviour was a process-level one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from powerctl.config import load_config
from powerctl.gpu.simulated import SimulatedGpus
from powerctl.watchdog import Watchdog, touch_heartbeat
from tests.gpu.test_failsafe import _caps, _toml, _wait
from tests.procs import reap, start_watchdog, stop_cleanly


def test_future_mtime_does_not_blind_the_watchdog(tmp_path: Path) -> None:
    cfg_path = _toml(tmp_path)
    cfg = load_config(cfg_path)
    (tmp_path / "gpus.json").write_text(json.dumps({"caps_w": [400.0] * cfg.gpu.count}))
    hb = Path(cfg.control.heartbeat_path)
    hb.write_text("")
    future = time.time() + 10 * 365 * 86400.0
    os.utime(hb, (future, future))  # a dead daemon's heartbeat, stamped ten years ahead
    dog = start_watchdog(cfg_path, stale_after_s=1.0, poll_s=0.05)
    try:
        assert _wait(lambda: _caps(tmp_path) == [150.0] * cfg.gpu.count, 60.0), "the watchdog never tripped"
        stop_cleanly(dog)
    finally:
        reap(dog)


def test_a_heartbeat_that_keeps_changing_holds_the_watchdog_off_whatever_its_mtime(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path))
    sim = SimulatedGpus.from_pool(cfg.gpu)
    hb = Path(cfg.control.heartbeat_path)
    dog = Watchdog(cfg, sim, stale_after_s=5.0, started_s=0.0)
    hb.touch()
    assert not dog.step(0.0)
    for k in range(1, 40):  # 40 s of the watchdog's clock; then the wall clock steps back a year
        past = time.time() - 365 * 86400.0 + k
        os.utime(hb, (past, past))
        assert not dog.step(float(k)), f"tripped at {k} s with a live (if mis-clocked) daemon"
    assert dog.step(46.0)  # and silence still trips it


def test_a_daemon_that_cannot_make_its_heartbeat_file_is_not_fought(tmp_path: Path) -> None:
    """The heartbeat file is gone and cannot be made again (here: its path is a dangling link, as
    good as a full disk for ``open(O_CREAT)``): the daemon touches the directory instead, which needs no
    space, and the watchdog counts that as alive."""
    cfg = load_config(_toml(tmp_path))
    hb = Path(cfg.control.heartbeat_path)
    hb.unlink(missing_ok=True)
    os.symlink(tmp_path / "no" / "such" / "dir", hb)
    sim = SimulatedGpus.from_pool(cfg.gpu)
    for i in range(sim.count):
        sim.set_cap_w(i, 400.0)
    dog = Watchdog(cfg, sim, stale_after_s=3.0, started_s=0.0)
    for k in range(30):
        assert touch_heartbeat(hb)  # fell back to the directory
        assert not dog.step(float(k)), f"watchdog fought a live daemon at {k} s"
        time.sleep(0.002)  # let the directory's mtime move on coarse clocks
    assert all(sim.read_limits_w(i)[0] == 400.0 for i in range(sim.count))
    assert dog.step(40.0) and sim.read_limits_w(0)[0] == 150.0  # the daemon stopped: trip


def test_an_observe_only_site_s_watchdog_reports_and_caps_nothing(tmp_path: Path) -> None:
    # observe-only means powerctl writes nothing, its watchdog included: the GPUs are another
    # controller's to cap while a site is commissioned
    path = _toml(tmp_path)
    path.write_text(path.read_text().replace("[control]\n", "[control]\nobserve_only = true\n", 1))
    cfg = load_config(path)
    sim = SimulatedGpus.from_pool(cfg.gpu)
    for i in range(sim.count):
        sim.set_cap_w(i, 400.0)
    dog = Watchdog(cfg, sim, stale_after_s=3.0, started_s=0.0)
    assert not dog.step(10.0) and not dog.step(60.0)
    assert dog.trips == 1  # the silence is seen (and logged once), not acted on
    assert [sim.enforced_w(i) for i in range(sim.count)] == [400.0] * sim.count
    live = Watchdog(load_config(_toml(tmp_path)), sim, stale_after_s=3.0, started_s=0.0)
    assert live.step(10.0) and {sim.enforced_w(i) for i in range(sim.count)} == {150.0}  # the same silence, live
