"""The plan's battery power reaches every battery profile in the vendor's write sequence.

Against the register-level simulator on a real pymodbus server: the exact write PDUs (function
code, address, registers) seen on the server, the read-back requests, the keep-alive renewal,
and a simulated battery (sim/plant/battery.py) whose power follows the decoded setpoint and is
read back by the driver. Plus: the write queue commands each battery of a two-battery site.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from powerctl.control.core import Commands
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.profiles.model import Profile
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.battery import Battery
from powerctl.writes import WriteQueue
from tests.devices.conftest import make_driver, served

# key, unit, kW (+ = discharge), the write PDUs the server must see (fc, address, registers)
CASES = [
    ("sma/sunny_island", 3, -12.5, [(16, 40149, [0xFFFF, 0xCF2C]), (16, 40151, [0, 802])]),
    ("sungrow/sh_hybrid", 1, -3.0, [(6, 13049, [2]), (6, 13050, [0xAA]), (6, 13051, [3000])]),
    ("sungrow/sh_hybrid", 1, 4.2, [(6, 13049, [2]), (6, 13050, [0xBB]), (6, 13051, [4200])]),
    (
        "huawei/sun2000_luna",
        1,
        2.5,
        [(6, 47246, [0]), (6, 47083, [5]), (16, 47247, [0, 0]), (16, 47249, [0, 2500]), (6, 47100, [2])],
    ),
    (
        "huawei/sun2000_luna",
        1,
        -70.0,
        [(6, 47246, [0]), (6, 47083, [5]), (16, 47247, [0x0001, 0x1170]), (16, 47249, [0, 0]), (6, 47100, [1])],
    ),
    # Hub4Mode on unit 100, then the VE.Bus unit (227): charge allowed, feed-in allowed, L1 setpoint
    ("victron/gx_modbus", 100, 1.5, [(6, 2902, [3]), (6, 38, [0]), (6, 39, [0]), (6, 37, [(-1500) & 0xFFFF])]),
    ("victron/gx_modbus", 100, -2.0, [(6, 2902, [3]), (6, 38, [0]), (6, 39, [0]), (6, 37, [2000])]),
    # WChaMax 10000 W (SF 0), InOutWRte_SF -1: 5 kW = 50.0 % = raw 500
    ("sunspec/storage", 1, 5.0, [(16, 40085, [60]), (16, 40082, [500]), (16, 40083, [(-500) & 0xFFFF]), (16, 40075, [3])]),
    ("sunspec/storage", 1, -2.5, [(16, 40085, [60]), (16, 40082, [(-250) & 0xFFFF]), (16, 40083, [250]), (16, 40075, [3])]),
    # containerised BESS (OpenEMS' FENECON/BYD driver): RUN (6) to 0x0500, then P in kW to 0x0501, fc16
    ("fenecon/byd_container", 100, 95.0, [(16, 0x0500, [6]), (16, 0x0501, [95])]),
    ("fenecon/byd_container", 100, -80.0, [(16, 0x0500, [6]), (16, 0x0501, [(-80) & 0xFFFF])]),
    # MW-class 700-series PCS: revert timer 60 s (uint32), revert to 0 W, released, WATTS mode, WSet (int32 W, SF 0), enable
    (
        "sunspec/der_storage",
        1,
        95.5,
        [(16, 40308, [0, 60]), (16, 40303, [0, 0]), (16, 40307, [0]), (16, 40300, [1]), (16, 40301, [0x0001, 0x750C]), (16, 40299, [1])],
    ),
    (
        "sunspec/der_storage",
        1,
        -80.0,
        [(16, 40308, [0, 60]), (16, 40303, [0, 0]), (16, 40307, [0]), (16, 40300, [1]), (16, 40301, [0xFFFE, 0xC780]), (16, 40299, [1])],
    ),
]


def _writes(sim: DeviceSimulator) -> list[tuple[int, int, list[int]]]:
    return [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]


@pytest.mark.parametrize(("key", "unit", "p_kw", "want"), CASES, ids=[f"{c[0]}:{c[2]:g}" for c in CASES])
async def test_battery_power_in_vendor_sequence(key: str, unit: int, p_kw: float, want: list[tuple[int, int, list[int]]]) -> None:
    profile = load_profile(key)
    battery = Battery("b", capacity_kwh=500.0, max_charge_kw=100.0, max_discharge_kw=100.0)
    sim = DeviceSimulator(profile, unit_id=unit, on_write=lambda s, v: setattr(battery, "setpoint_kw", v) if s == "p_set_kw" else None)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("bat", profile, srv.port, unit, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            sim.request_log.clear()
            res = await dev.write_signal("p_set_kw", p_kw)
            assert res.ok, res.message
            assert _writes(sim) == want
            # read back where the profile offers it: a read of each step's read-back register after its write
            reads = [(fc, a) for fc, a, _n, v in sim.request_log if v is None]
            steps = profile.sequences.get("p_set_kw")
            names = [st.setpoint for st in steps.steps] if steps else ["p_set_kw"]
            for name in names:
                sp = profile.setpoint(name)
                if sp.readback and sp.value_map is None:
                    rb = profile.point(sp.readback)
                    assert (3 if rb.table == "holding" else 4, rb.address) in reads, name
            # the simulated battery follows the decoded setpoint; its power is what the driver reads
            assert battery.setpoint_kw == pytest.approx(p_kw)
            battery.p_kw = battery.apply(battery.setpoint_kw, 1.0)
            sim.set_signal("p_kw", battery.p_kw)
            assert await dev.poll_once()
            assert image.get("bat", "p_kw", dev.clock()).value == pytest.approx(p_kw, abs=0.01)
        finally:
            dev.close()


def _short_keepalive(profile: Profile, period_s: float) -> Profile:
    seq = profile.sequences.get("p_set_kw")
    if seq is not None:
        return dataclasses.replace(profile, sequences={"p_set_kw": dataclasses.replace(seq, keepalive_s=period_s)})
    sps = tuple(dataclasses.replace(s, keepalive_s=period_s) if s.signal == "p_set_kw" else s for s in profile.setpoints)
    return dataclasses.replace(profile, setpoints=sps)


@pytest.mark.parametrize(("key", "unit"), [("sma/sunny_island", 3), ("huawei/sun2000_luna", 1), ("sunspec/storage", 1), ("victron/gx_modbus", 100),
     ("sunspec/der_storage", 1)]
)
async def test_keepalive_renews_the_whole_sequence(key: str, unit: int) -> None:
    shipped = load_profile(key)
    seq = shipped.sequences.get("p_set_kw")
    shipped_period = seq.keepalive_s if seq else shipped.setpoint("p_set_kw").keepalive_s
    assert shipped_period, f"{key} needs a keep-alive (its device forgets the setpoint)"
    profile = _short_keepalive(shipped, 0.3)  # the same sequence, renewed fast enough for a test
    sim = DeviceSimulator(profile, unit_id=unit)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("bat", profile, srv.port, unit, image)
        task = asyncio.create_task(dev.run())
        try:
            async with asyncio.timeout(10):
                while not dev.stats.polls:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await dev.write_signal("p_set_kw", 1.0)
            first = _writes(sim)
            async with asyncio.timeout(10):
                while dev.stats.keepalive_writes < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            again = _writes(sim)[len(first):]
            n = len(first)
            # each renewal repeats the sequence exactly, in order
            assert again[:n] == first and again[n : 2 * n] == first
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_sequence_range_refused_before_any_write() -> None:
    profile = load_profile("sungrow/sh_hybrid")  # ForcedPower tops out at 10000 W
    sim = DeviceSimulator(profile, unit_id=1)
    async with served(sim) as srv:
        dev = make_driver("bat", profile, srv.port, 1, ProcessImage())
        try:
            from powerctl.profiles.values import SetpointRangeError

            with pytest.raises(SetpointRangeError, match="ForcedPower"):
                await dev.write_signal("p_set_kw", 12.0)
            assert _writes(sim) == []  # not even the mode register: a half-written sequence is worse than none
        finally:
            dev.close()


async def test_each_battery_of_a_two_battery_site_gets_its_own_setpoint() -> None:
    a_prof, b_prof = load_profile("sungrow/sh_hybrid"), load_profile("sunspec/storage")
    got: dict[str, list[float]] = {"a": [], "b": []}
    sim_a = DeviceSimulator(a_prof, unit_id=1, on_write=lambda s, v: got["a"].append(v) if s == "p_set_kw" else None)
    sim_b = DeviceSimulator(b_prof, unit_id=2, on_write=lambda s, v: got["b"].append(v) if s == "p_set_kw" else None)
    image = ProcessImage()
    async with served(sim_a, sim_b) as srv:
        devs = {"a": make_driver("a", a_prof, srv.port, 1, image), "b": make_driver("b", b_prof, srv.port, 2, image)}
        try:
            for d in devs.values():
                assert await d.poll_once(), d.stats.last_error
            queue = WriteQueue(devs)
            queue.commands(Commands(t_s=0.0, battery_kw={"a": -2.0, "b": 3.5}))
            async with asyncio.timeout(10):
                while len(queue.written) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert queue.written == {"a.p_set_kw": -2.0, "b.p_set_kw": 3.5} and queue.errors == 0
            assert got["a"][-1] == pytest.approx(-2.0) and got["b"][-1] == pytest.approx(3.5)
        finally:
            for d in devs.values():
                d.close()
