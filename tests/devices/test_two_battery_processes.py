"""A two-battery site as two real processes on loopback: ``powerctl sim serve`` serves the plant,
``powerctl run`` controls it, and this test reads both batteries over Modbus as a third client.

Both batteries are MW-class SunSpec DER storage (device_profiles/sunspec/der_storage.yaml) with
different limits (examples/grid-site.toml without its genset). Grid-tied, the grid balances and
each plant battery follows its own setpoint; islanded (no meter), the first battery forms the grid
and takes the residual while the second follows its own (sim/plant/site.py). What is checked is
on the wire: the 704 WSet each battery was written (and enabled) and the 701 W it reports.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from powerctl.config import load_config
from powerctl.io.modbus import ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from tests.devices.conftest import at_any_hour, cheaper_to_wear, make_driver, on_loopback
from tests.restart.test_kill9 import dump_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
BATS = {"bess": 60.0, "bess2": 8.0}  # max charge/discharge kW: the plan gives them different powers


def _site(tmp_path: Path, *, grid: bool) -> Path:
    d: dict[str, Any] = load_config(ROOT / "examples" / "grid-site.toml").model_dump(mode="json", exclude_none=True)
    drop = {"genset"} if grid else {"genset", "meter"}  # no meter: the site is islanded
    d["devices"] = [x for x in d["devices"] if x["nature"] not in drop]
    bess = next(x for x in d["devices"] if x["name"] == "bess")
    bess.update(profile="sunspec/der_storage")
    bess["transport"]["unit_id"] = 1
    bess2 = {**bess, "name": "bess2", "transport": dict(bess["transport"]), "limits": dict(bess["limits"])}
    bess2["limits"].update(max_charge_kw=BATS["bess2"], max_discharge_kw=BATS["bess2"], capacity_kwh=40.0)
    cheaper_to_wear(bess2, bess)
    d["devices"].append(bess2)
    on_loopback(d, tmp_path)
    d.pop("telemetry", None)
    # `sim serve` runs its own sun (noon-like, 20x), the daemon forecasts with pvlib's for the
    # real clock (a site where it is noon now); grid-tied, prices give the batteries a reason to move
    at_any_hour(d, tmp_path, prices=grid)
    path = tmp_path / "site.toml"
    path.write_text(dump_toml(d))
    path.chmod(0o600)
    return path


def _start(tmp_path: Path, argv: list[str], log: str) -> subprocess.Popen[bytes]:
    with open(tmp_path / log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "powerctl.cli", *argv], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)


async def _read(devs: dict[str, ModbusDevice], image: ProcessImage) -> dict[str, tuple[float, float, float]] | None:
    """Per battery: (written WSet kW, WSetEna, reported p_kw), read over Modbus now; None if a
    poll failed (a busy machine: the caller retries until its deadline)."""
    out: dict[str, tuple[float, float, float]] = {}
    for name, dev in devs.items():
        if not await dev.poll_once():
            print(f"{name}: poll failed ({dev.stats.last_error}); retrying")
            return None
        wset, ena = dev.readings["WSet"].value, dev.readings["WSetEna"].value
        p = image.get(name, "p_kw", dev.clock()).value
        assert wset is not None and ena is not None and p is not None
        out[name] = (float(wset) / 1000.0, float(ena), float(p))
    return out


@pytest.mark.parametrize("grid", [True, False], ids=["grid-tied", "island"])
async def test_two_batteries_follow_their_own_setpoints_across_processes(tmp_path: Path, grid: bool) -> None:
    # grid-tied: the grid balances, both batteries follow; island: bess (the first battery) forms
    # the grid and takes the residual, bess2 follows its own setpoint (sim/plant/site.py)
    followers = list(BATS) if grid else ["bess2"]
    cfg_path = _site(tmp_path, grid=grid)
    cfg = load_config(cfg_path)
    profile = load_profile("sunspec/der_storage")
    sim = _start(tmp_path, ["sim", "serve", str(cfg_path)], "sim.log")
    daemon = None
    devs: dict[str, ModbusDevice] = {}
    try:
        deadline = time.monotonic() + 60
        while "serving" not in (tmp_path / "sim.log").read_text():
            assert sim.poll() is None and time.monotonic() < deadline, (tmp_path / "sim.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        image = ProcessImage()
        for name in BATS:
            t = cfg.device(name).transport
            devs[name] = make_driver(name, profile, t.port, t.unit_id, image, timeout_s=2.0)  # type: ignore[union-attr]
        before = None
        while before is None:
            assert time.monotonic() < deadline, "the simulator never answered both batteries"
            before = await _read(devs, image)
        assert all(ena == 0 for _w, ena, _p in before.values())  # nothing commanded before the daemon runs
        daemon = _start(tmp_path, ["run", str(cfg_path)], "daemon.log")
        deadline = time.monotonic() + 180
        got: dict[str, tuple[float, float, float]] | None = {}
        # each follower seen running at a written setpoint of its own that is not 0 W (0 W would
        # follow trivially), not necessarily at the same moment: which battery the plan moves when
        # depends on the plant's sun and GPUs, and a grid-tied plan may rest one while the other works
        moved: dict[str, tuple[float, float]] = {}
        distinct = False
        while True:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert sim.poll() is None, (tmp_path / "sim.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"batteries never each at a setpoint of their own: {got}, moved {moved}"
            got = await _read(devs, image)
            if got is None:
                await asyncio.sleep(0.5)
                continue
            for name, (w, _e, _p) in got.items():
                assert abs(w) <= BATS[name] + 1e-6, (name, w)  # within each battery's own limit, always
            if all(ena == 1 for _w, ena, _p in got.values()):
                # each plant battery runs at the setpoint on its own wire (701 W has 100 W steps: W_SF 2)
                for n in followers:
                    if abs(got[n][0] - got[n][2]) <= 0.1 and abs(got[n][0]) > 0.5:
                        moved.setdefault(n, (got[n][0], got[n][2]))
                distinct = distinct or abs(got["bess"][0] - got["bess2"][0]) > 0.5
            if set(moved) == set(followers) and (distinct or not grid):
                break
            await asyncio.sleep(0.5)
        print("first setpoint (written, reported kW) each battery followed:", moved)
    finally:
        for dev in devs.values():
            dev.close()
        for p in (daemon, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(60)  # a bound: a loaded machine stops the daemon (safe caps, releases) slowly
