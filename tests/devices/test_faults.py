"""Fault handling of the driver against simulated devices on real pymodbus servers.

Timing figures here are loose bounds on behaviour (a cadence that holds, a reconnect that
happens), not benchmarks; bench/modbus_poll.py measures.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from pathlib import Path

import pytest
import yaml

from powerctl.io.modbus import BACKOFF_MAX_S, ModbusDevice
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles import load_profile
from powerctl.profiles.model import parse_profile
from powerctl.profiles.values import SetpointRangeError
from powerctl.sim.devices import DeviceSimulator, Fault, RegisterDevice, SimServer
from powerctl.sunspec.encode import ImageSpec, build_image
from tests.devices.conftest import make_driver, served
from tests.servers import free_port

DSE = "dse/gencomm"
PV = "sunspec/inverter_103"


def custom_profile(tmp_path: Path, doc: dict) -> object:
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(doc))
    return parse_profile(yaml.safe_load(path.read_text()), "test/custom", path)


async def test_one_dead_device_of_five_others_keep_cadence_dead_goes_stale_and_comes_back() -> None:
    profile = load_profile(PV)
    sims = [DeviceSimulator(profile, unit_id=1) for _ in range(5)]
    for i, s in enumerate(sims):
        s.set_signal("p_kw", 50 + i)
    servers = [SimServer([s], free_port()) for s in sims]
    image = ProcessImage()
    period = 0.1
    devs = [
        make_driver(f"g{i}", profile, srv.port, 1, image, poll_period_s=period, stale_after_failures=3, timeout_s=0.2)
        for i, srv in enumerate(servers)
    ]
    for srv in servers:
        await srv.start()
    try:
        assert all([await d.poll_once() for d in devs])
        sims[0].fault = Fault.NO_ANSWER
        t_fault = time.monotonic()
        tasks = [asyncio.create_task(d.run()) for d in devs]
        await asyncio.sleep(2.0)
        # the four healthy devices kept their own cadence while the dead one timed out
        for d in devs[1:]:
            times = [t for t in d.stats.poll_times_s if t > t_fault + 0.05]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert len(times) >= 15, (d.name, len(times))
            assert statistics.median(gaps) == pytest.approx(period, abs=0.03), (d.name, gaps)
            assert max(gaps) < 3 * period, (d.name, max(gaps))
            assert image.get(d.name, "p_kw", time.time()).good
        dead = devs[0]
        assert dead.stats.consecutive_failures >= 3
        sig = image.get("g0", "p_kw", time.time())
        assert sig.quality is Quality.STALE and "not answering" in sig.reason
        # backoff: the dead device is polled less and less often (growing delay)
        assert dead.next_delay_s() > period
        # it comes back: the driver reconnects by itself and the signals are good again
        reconnects = dead.stats.reconnects
        sims[0].fault = Fault.NONE
        sims[0].set_signal("p_kw", 77)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and not image.get("g0", "p_kw", time.time()).good:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the process image has no change notification to wait on
        sig = image.get("g0", "p_kw", time.time())
        assert sig.good and sig.value == 77
        assert dead.stats.reconnects > reconnects
        assert dead.stats.consecutive_failures == 0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for srv in servers:
            await srv.stop()


async def test_stale_exactly_at_the_configured_count() -> None:
    profile = load_profile(DSE)
    sim = DeviceSimulator(profile, unit_id=1)
    sim.set_signal("fuel_pct", 60)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("g", profile, srv.port, 1, image, stale_after_failures=4, timeout_s=0.1)
        assert await dev.poll_once()
        sim.fault = Fault.NO_ANSWER
        for n in range(1, 5):
            assert not await dev.poll_once()
            sig = image.get("g", "fuel_pct", time.time())
            assert (sig.quality is Quality.STALE) == (n >= 4), (n, sig)
        sim.fault = Fault.NONE
        dev.close()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.EXCEPTION, "exception response"),
        (Fault.SHORT, "short reply"),
        (Fault.DISCONNECT, ""),
        (Fault.SLOW, "timeout"),
    ],
)
async def test_bad_answers_fail_the_poll_then_recover(fault: Fault, reason: str) -> None:
    profile = load_profile(DSE)
    sim = DeviceSimulator(profile, unit_id=1)
    sim.slow_s = 0.5
    sim.set_signal("fuel_pct", 61)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("g", profile, srv.port, 1, image, stale_after_failures=2, timeout_s=0.15)
        assert await dev.poll_once()
        sim.fault = fault
        assert not await dev.poll_once()
        assert reason in dev.stats.last_error
        if fault is Fault.DISCONNECT:  # the connection really dropped: no answer at all, not an exception reply
            assert "exception response" not in dev.stats.last_error, dev.stats.last_error
        assert not await dev.poll_once()
        assert image.get("g", "fuel_pct", time.time()).quality is Quality.STALE
        sim.fault = Fault.NONE
        await asyncio.sleep(0.6)  # let a slow answer to a request the client gave up on drain
        sim.set_signal("fuel_pct", 62)
        assert await dev.poll_once(), dev.stats.last_error
        assert image.value("g", "fuel_pct", time.time()) == 62
        dev.close()


async def test_server_gone_and_back_on_the_same_port() -> None:
    profile = load_profile(DSE)
    sim = DeviceSimulator(profile, unit_id=1)
    sim.set_signal("fuel_pct", 40)
    image = ProcessImage()
    srv = SimServer([sim], free_port())
    await srv.start()
    dev = make_driver("g", profile, srv.port, 1, image, stale_after_failures=1, timeout_s=0.2)
    assert await dev.poll_once()
    await srv.stop()
    assert not await dev.poll_once()
    assert "connect" in dev.stats.last_error or "Connection" in dev.stats.last_error or dev.stats.last_error
    assert image.get("g", "fuel_pct", time.time()).quality is Quality.STALE
    await srv.start()
    sim.set_signal("fuel_pct", 41)
    try:
        assert await dev.poll_once(), dev.stats.last_error
        assert image.value("g", "fuel_pct", time.time()) == 41
    finally:
        dev.close()
        await srv.stop()


async def test_slow_but_in_time_answers_are_fine() -> None:
    profile = load_profile(DSE)
    sim = DeviceSimulator(profile, unit_id=1)
    sim.fault, sim.slow_s = Fault.SLOW, 0.05
    sim.set_signal("fuel_pct", 33)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("g", profile, srv.port, 1, image, timeout_s=0.5)
        assert await dev.poll_once()
        assert image.value("g", "fuel_pct", time.time()) == 33
        dev.close()


async def test_sentinels_out_of_range_and_garbage_never_pass_as_good_numbers() -> None:
    profile = load_profile(DSE)
    sim = DeviceSimulator(profile, unit_id=1)
    sim.set_signal("fuel_pct", 50)
    sim.set_signal("p_kw", 120)
    sim.set_sentinel("TotalPower")  # DSE: raw -1 masked to int32 = "unimplemented"
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("g", profile, srv.port, 1, image)
        assert await dev.poll_once()
        sig = image.get("g", "p_kw", time.time())
        assert sig.quality is Quality.INVALID and "not implemented" in sig.reason
        assert image.value("g", "fuel_pct", time.time()) == 50
        sim.set_point("FuelLevel", 150)  # above valid_max 100
        assert await dev.poll_once()
        sig = image.get("g", "fuel_pct", time.time())
        assert sig.quality is Quality.INVALID and "above valid maximum" in sig.reason
        sim.fault = Fault.GARBAGE
        for _ in range(20):
            await dev.poll_once()
            fuel = image.get("g", "fuel_pct", time.time())
            assert not fuel.good or 0 <= fuel.value <= 100  # type: ignore[operator]
            running = image.get("g", "running", time.time())
            assert not running.good or running.value in (0.0, 1.0)
        dev.close()


async def test_nan_and_inf_floats_become_invalid(tmp_path: Path) -> None:
    profile = custom_profile(
        tmp_path,
        {
            "vendor": "Test", "model": "float meter", "nature": "pv",
            "points": [{"name": "P", "address": 10, "type": "float32", "unit": "kW", "signal": "p_kw"}],
        },
    )
    sim = DeviceSimulator(profile, unit_id=1)  # type: ignore[arg-type]
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("m", profile, srv.port, 1, image)  # type: ignore[arg-type]
        for regs, ok in (([0x4148, 0x0000], True), ([0x7FC0, 0x0000], False), ([0x7F80, 0x0000], False), ([0xFF80, 0], False)):
            sim.set_raw("holding", 10, regs)
            assert await dev.poll_once()
            sig = image.get("m", "p_kw", time.time())
            assert sig.good == ok, (regs, sig)
            if ok:
                assert sig.value == 12.5
            else:
                assert "non-finite" in sig.reason
        dev.close()


async def test_exception_on_one_block_invalidates_only_its_signals(tmp_path: Path) -> None:
    profile = load_profile("sma/sunny_island")
    sim = DeviceSimulator(profile, unit_id=3)
    sim.set_signal("soc_pct", 70)
    sim.set_signal("p_kw", 2.0)
    del sim.registers["input"][31393]  # the device lacks one block: it answers exception 2 there
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("b", profile, srv.port, 3, image)
        assert await dev.poll_once()
        assert image.value("b", "soc_pct", time.time()) == 70
        assert image.value("b", "p_kw", time.time()) == 2.0
        assert "exception" in dev.readings["BatChrg_CurBatCha"].reason or dev.readings["BatChrg_CurBatCha"].value is None
        dev.close()


async def test_write_outside_range_is_refused_before_anything_is_sent() -> None:
    profile = load_profile("sma/sunny_island")
    sim = DeviceSimulator(profile, unit_id=3)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("b", profile, srv.port, 3, image)
        before = sim.requests
        with pytest.raises(SetpointRangeError, match=r"WSpt: 250000 W is outside the allowed range \[-200000, 200000\] W"):
            await dev.write_signal("p_set_kw", 250.0)
        with pytest.raises(SetpointRangeError, match="non-finite"):
            await dev.write_signal("p_set_kw", float("nan"))
        assert sim.requests == before and sim.writes == []
        res = await dev.write_signal("p_set_kw", -12.5)
        assert res.ok and sim.writes == [("p_set_kw", -12.5)]
        # exact PDUs: FC16 WSpt int32 at 40149, then FC16 40151 [0, 802] (WCtlComAct = active)
        writes = [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]
        assert writes == [(16, 40149, [0xFFFF, 0xCF2C]), (16, 40151, [0, 802])]
        dev.close()


async def test_exact_write_pdus_of_vendor_profiles() -> None:
    cases = [
        ("dse/gencomm", 1, "start_cmd", 1.0, [(16, 4104, [35732, 29803])]),
        ("comap/intelilite4", 1, "start_cmd", 1.0, [(5, 4700, [1])]),
        ("victron/gx_modbus", 100, "AcPowerSetPoint", -1500.0, [(6, 2700, [(-1500) & 0xFFFF])]),
        ("huawei/sun2000_luna", 1, "MaxChargingPower", 70000.0, [(16, 47075, [0x0001, 0x1170])]),
        ("sungrow/sh_hybrid", 1, "ChargeCommand", -1.0, [(6, 13050, [0xBB])]),
    ]
    for key, unit, signal, value, want in cases:
        profile = load_profile(key)
        sim = DeviceSimulator(profile, unit_id=unit)
        profile_image = ProcessImage()
        async with served(sim) as srv:
            dev = make_driver("d", profile, srv.port, unit, profile_image)
            await dev.write_signal(signal, value)
            got = [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]
            assert got == want, key
            dev.close()


async def test_read_back_mismatch_is_reported(tmp_path: Path) -> None:
    profile = load_profile("victron/gx_modbus")
    sim = DeviceSimulator(profile, unit_id=100)
    # a device that clamps the setpoint to 1000 W whatever is written
    sim.on_write = lambda s, v: sim.set_point("AcPowerSetPoint", min(v, 1000.0))
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("v", profile, srv.port, 100, image)
        assert await dev.poll_once()
        ok = await dev.write_signal("AcPowerSetPoint", 800.0)
        assert ok.ok and ok.readback == 800.0
        res = await dev.write_signal("AcPowerSetPoint", 3000.0)
        assert not res.ok and res.readback == 1000.0
        assert "read-back mismatch: wrote 3000 W, device reports 1000" in res.message
        dev.close()


async def test_keep_alive_rewrites_before_the_timeout(tmp_path: Path) -> None:
    profile = custom_profile(
        tmp_path,
        {
            "vendor": "Test", "model": "leased battery", "nature": "battery",
            "points": [{"name": "Soc", "address": 0, "type": "uint16", "unit": "%", "signal": "soc_pct"}],
            "setpoints": [{"name": "P", "address": 5, "type": "int16", "unit": "W", "signal": "p_set_kw",
                           "range": [-5000, 5000], "write": "fc6", "keepalive_s": 0.3}],
        },
    )
    sim = DeviceSimulator(profile, unit_id=1)  # type: ignore[arg-type]
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("k", profile, srv.port, 1, image, poll_period_s=5.0)  # type: ignore[arg-type]
        task = asyncio.create_task(dev.run())
        await asyncio.sleep(0.1)
        await dev.write_signal("p_set_kw", 1.5)
        t0 = time.monotonic()
        await asyncio.sleep(1.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        times = [v for s, v in sim.writes]
        assert times and all(v == 1.5 for v in times)
        # written once by hand, then every 0.8 x 0.3 s = 0.24 s although polling is every 5 s
        assert 1 + int((time.monotonic() - t0) / 0.3) <= len(sim.writes) <= 8, len(sim.writes)
        assert dev.stats.keepalive_writes >= 4


async def test_backoff_grows_and_is_capped() -> None:
    profile = load_profile(DSE)
    from tests.devices.conftest import tcp

    dev = ModbusDevice("x", profile, tcp(1, 1), ProcessImage(), poll_period_s=0.5, stale_after_failures=3)
    delays = []
    for n in range(0, 12):
        dev.stats.consecutive_failures = n
        delays.append(dev.next_delay_s())
    assert delays[:3] == [0.5, 0.5, 0.5]
    assert delays[3:6] == [1.0, 2.0, 4.0]
    assert delays[-1] == BACKOFF_MAX_S == 5.0  # documented in powerctl/io/modbus.py
    assert delays == sorted(delays)


async def test_sunspec_profile_follows_discovery_when_the_common_model_is_short() -> None:
    """A SolarEdge-style L = 65 common model shifts model 103 by one: the fixed map would read
    the wrong registers; the driver moves the profile to where discovery found the model."""
    specs = [ImageSpec(1, {"Mn": "SolarEdge", "SN": "7E0001"}, length=65),
             ImageSpec(103, {"W_SF": 0, "W": 4321, "WH_SF": 0, "WH": 5000000, "St": 4, "Hz_SF": -2, "Hz": 50.0, "A_SF": 0, "A": 7})]
    dev_sim = RegisterDevice({"holding": build_image(specs)}, unit_id=1)
    profile = load_profile("sunspec/inverter_103")
    image = ProcessImage()
    async with served(dev_sim) as srv:
        dev = make_driver("pv", profile, srv.port, 1, image)
        assert await dev.poll_once(), dev.stats.last_error
        assert dev.profile.point("W").address == 40083
        assert image.value("pv", "p_kw", time.time()) == pytest.approx(4.321)
        assert image.value("pv", "e_kwh", time.time()) == pytest.approx(5000.0)
        assert image.value("pv", "state", time.time()) == 4
        assert dev.readings["SN"].value == "7E0001"
        dev.close()
