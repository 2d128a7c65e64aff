"""Fail-safe paths: planner dead, SIGTERM (real subprocess), heartbeat loss (real watchdog process),
boot-time safe caps. The simulated GPUs keep their caps in a JSON file, like a driver would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from powerctl.config import load_config
from powerctl.control.guard import Guard, GuardDecision
from powerctl.control.split import slots_from_pool
from powerctl.gpu.failsafe import apply_safe_caps, apply_safe_caps_to
from powerctl.gpu.simulated import SimulatedGpus
from powerctl.guard_task import guard_loop, run_guard
from powerctl.watchdog import Watchdog, touch_heartbeat
from tests.gpu.site import image_for, site
from tests.procs import reap, start_watchdog, stop_cleanly

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("guard_runner.py")


def _toml(tmp: Path, safe_cap_w: float = 150.0) -> Path:
    text = f"""
[site]
id = "t"
module = "m1"

[control]
guard_period_s = 0.1
dispatch_period_s = 0.5
heartbeat_path = "{tmp / 'heartbeat'}"

[[devices]]
name = "pv1"
nature = "pv"
profile = "sunspec/inverter_103"
transport = {{ kind = "modbus_tcp", host = "127.0.0.1", port = 15020 }}
limits = {{ kwp = 30.0 }}

[[devices]]
name = "bat1"
nature = "battery"
profile = "sma/sunny_island"
transport = {{ kind = "modbus_tcp", host = "127.0.0.1", port = 15021 }}
limits = {{ capacity_kwh = 50.0, max_charge_kw = 10.0, max_discharge_kw = 10.0 }}

[gpu]
backend = "simulated"
sim_state_file = "{tmp / 'gpus.json'}"
min_w = 100.0
max_w = 400.0
safe_cap_w = {safe_cap_w}
classes = [{{ name = "prod", gpus = 4, priority = 0 }}, {{ name = "batch", gpus = 4, priority = 1 }}]
"""
    path = tmp / "site.toml"
    path.write_text(text)
    return path


def _caps(tmp: Path) -> list[float]:
    return json.loads((tmp / "gpus.json").read_text())["caps_w"]


def _wait(cond, timeout_s: float = 90.0) -> bool:  # a bound for failures: a busy 2-core machine takes ~20 s to start a runner
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    return False


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def test_guard_cuts_with_the_planner_task_killed() -> None:
    """Planner crashes, then a cloud takes 60 % of the PV in 1 s: the guard alone holds the battery."""
    cfg = site(gpu={"safe_cap_w": 350.0})
    t0 = time.monotonic()

    def pv_kw(t: float) -> float:
        x = t - t0
        return 18.0 if x < 1.0 else 18.0 * (1 - 0.6 * min(1.0, x - 1.0))

    sim = SimulatedGpus.from_pool(cfg.gpu, clock=time.monotonic, demand_w=lambda _i, _t: 390.0)
    slots = slots_from_pool(cfg.gpu, sim.list_gpus())
    guard = Guard(cfg, slots)
    img = image_for(cfg)
    plan = {s.index: 400.0 for s in slots}

    async def planner() -> None:
        await asyncio.sleep(0.5)
        raise RuntimeError("solver blew up")

    battery_kw: list[float] = []

    async def plant() -> None:
        n = 0
        while True:
            now = time.monotonic()
            gpu_w = sum(sim.read_power_w(i) for i in range(sim.count))
            battery_kw.append(gpu_w / 1000 * 1.08 - pv_kw(now))
            if n % 10 == 0:
                img.update("pv1", "p_kw", pv_kw(now), now)
                img.update("bat1", "soc_pct", 60.0, now)
            n += 1
            await asyncio.sleep(0.01)

    decisions: list[GuardDecision] = []
    planner_task = asyncio.create_task(planner())
    plant_task = asyncio.create_task(plant())
    await asyncio.sleep(0.05)
    guard_task = asyncio.create_task(run_guard(
        guard_loop(cfg, slots, img, sim, plan, guard=guard, clock=time.monotonic), sim,
        planner=planner_task, clock=time.monotonic,
        on_decision=decisions.append))
    await asyncio.sleep(4.0)
    assert planner_task.done() and isinstance(planner_task.exception(), RuntimeError)
    guard_task.cancel()
    plant_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await guard_task
    with contextlib.suppress(asyncio.CancelledError):
        await plant_task
    limit = cfg.devices[1].limits.max_discharge_kw
    print(f"battery peak {max(battery_kw):.2f} kW of {limit} kW")
    assert max(battery_kw) <= limit, f"battery peaked at {max(battery_kw):.2f} kW > {limit} kW"
    late = [d for d in decisions if d.safe]
    assert late, "the guard never noticed the planner had died"
    assert all(max(d.caps_w.values()) <= 350.0 for d in late)
    assert any(d.cut for d in late)  # the cloud needed cuts below the safe cap
    assert sum(_s for _s in decisions[-1].caps_w.values()) < 40 * 350.0 - 2000
    # on cancellation the guard left every GPU at or below the safe cap
    assert all(sim.read_limits_w(i)[0] <= 350.0 for i in range(sim.count))


def test_sigterm_leaves_gpus_at_safe_cap(tmp_path: Path) -> None:
    cfg_path = _toml(tmp_path)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(cfg_path), str(ready)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: ready.exists() and _caps(tmp_path) == [400.0] * 8), "runner never came up"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert _caps(tmp_path) == [150.0] * 8


def test_watchdog_applies_safe_cap_when_heartbeat_stops(tmp_path: Path) -> None:
    cfg_path = _toml(tmp_path)
    ready = tmp_path / "ready"
    daemon = subprocess.Popen([sys.executable, str(RUNNER), str(cfg_path), str(ready)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dog = start_watchdog(cfg_path, stale_after_s=4.0, poll_s=0.05)
    try:
        assert _wait(lambda: ready.exists() and _caps(tmp_path) == [400.0] * 8), "runner never came up"
        # longer than stale_after_s: a live heartbeat must not trip the watchdog (4 s, not 1 s: on a
        # loaded machine the runner itself can be off the CPU for over a second)
        time.sleep(4.5)
        assert _caps(tmp_path) == [400.0] * 8
        daemon.kill()  # SIGKILL: no cleanup, caps stay high, heartbeat stops
        daemon.wait(timeout=10)
        assert _caps(tmp_path) == [400.0] * 8
        assert _wait(lambda: _caps(tmp_path) == [150.0] * 8, 60.0), "watchdog did not apply the safe cap"
        stop_cleanly(dog)
    finally:
        reap(daemon, dog)


def test_watchdog_steps(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path))
    sim = SimulatedGpus.from_pool(cfg.gpu)
    hb = Path(cfg.control.heartbeat_path)
    dog = Watchdog(cfg, sim, stale_after_s=5.0, reapply_s=30.0, started_s=1000.0)
    assert not dog.step(1004.0)  # no heartbeat yet, but within the grace time
    assert dog.step(1006.0)  # never appeared: trip
    assert sim.read_limits_w(0)[0] == 150.0
    assert not dog.step(1010.0)  # tripped; re-apply only every 30 s
    assert dog.step(1037.0)
    touch_heartbeat(hb)  # the watchdog's clock is its own (monotonic): only the change counts
    assert not dog.step(1038.0) and dog.tripped_at is None  # re-armed
    assert not dog.step(1042.0)
    assert dog.step(1043.5) and dog.trips == 2


def test_safe_caps_never_raise_a_gpu(tmp_path: Path) -> None:
    sim = SimulatedGpus(4, 100, 400)
    sim.set_cap_w(0, 120.0)
    sim.set_cap_w(1, 300.0)
    results = apply_safe_caps_to(sim, 150.0)
    assert all(r.ok for r in results)
    assert [sim.read_limits_w(i)[0] for i in range(4)] == [120.0, 150.0, 150.0, 150.0]


def test_apply_safe_caps_at_boot(tmp_path: Path, capsys) -> None:
    cfg = load_config(_toml(tmp_path, safe_cap_w=180.0))
    assert apply_safe_caps(cfg) == 0  # GPUs come up at default (max): all go to the safe cap
    assert _caps(tmp_path) == [180.0] * 8
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "GPU 0: safe cap 180 W (enforced 180 W)" and len(out) == 8
