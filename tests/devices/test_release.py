"""On stop the daemon hands forced battery modes back to the device (``WriteQueue.release``).

Against the register-level simulator on a real pymodbus server: a Sungrow SH left in EMS forced
mode (13050 = 2) would keep charging or discharging at the last forced power without us, so the
release writes stop (0xCC), power 0 and EMS mode 0 (self-consumption), in that order; Huawei gets
its forcible stop. Bounded when a device does not answer; observe-only releases nothing.
"""

from __future__ import annotations

import asyncio

from powerctl.control.core import Commands
from powerctl.io.modbus import ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator, Fault
from powerctl.sim.plant.battery import Battery
from powerctl.writes import WriteQueue
from tests.devices.conftest import make_driver, served

SUNGROW_RELEASE = [(6, 13050, [0xCC]), (6, 13051, [0]), (6, 13049, [0])]


def _writes(sim: DeviceSimulator) -> list[tuple[int, int, list[int]]]:
    return [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]


async def _written(queue: WriteQueue, n: int) -> None:
    async with asyncio.timeout(10):
        while len(queue.written) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_release_hands_forced_modes_back() -> None:
    sg, hw, ss = load_profile("sungrow/sh_hybrid"), load_profile("huawei/sun2000_luna"), load_profile("sunspec/storage")
    battery = Battery("sg", capacity_kwh=50.0, max_charge_kw=10.0, max_discharge_kw=10.0)
    sim_sg = DeviceSimulator(sg, unit_id=1, on_write=lambda s, v: setattr(battery, "setpoint_kw", v) if s == "p_set_kw" else None)
    sim_hw, sim_ss = DeviceSimulator(hw, unit_id=2), DeviceSimulator(ss, unit_id=3)
    image = ProcessImage()
    async with served(sim_sg, sim_hw, sim_ss) as srv:
        devs: dict[str, ModbusDevice] = {
            "sg": make_driver("sg", sg, srv.port, 1, image),
            "hw": make_driver("hw", hw, srv.port, 2, image),
            "ss": make_driver("ss", ss, srv.port, 3, image),
        }
        try:
            for d in devs.values():
                assert await d.poll_once(), d.stats.last_error
            queue = WriteQueue(devs)
            queue.commands(Commands(t_s=0.0, battery_kw={"sg": 4.0, "hw": -2.0}))  # "ss" is never commanded
            await _written(queue, 2)
            hold = sim_sg.registers["holding"]
            assert (hold[13049], hold[13050], hold[13051]) == (2, 0xBB, 4000)  # forced discharge 4 kW
            assert battery.setpoint_kw == 4.0
            for s in (sim_sg, sim_hw, sim_ss):
                s.request_log.clear()

            released = await queue.release()

            assert sorted(released) == ["hw.p_set_kw", "sg.p_set_kw"]
            assert _writes(sim_sg) == SUNGROW_RELEASE  # stop, no power, then out of forced mode
            assert (hold[13049], hold[13050], hold[13051]) == (0, 0xCC, 0)  # self-consumption
            assert battery.setpoint_kw == 0.0  # the stop command took before the mode went
            assert _writes(sim_hw) == [(6, 47100, [0])]  # forcible stop
            assert _writes(sim_ss) == []  # nothing commanded, nothing released (and no release defined)
            assert "p_set_kw" not in devs["sg"]._keepalive  # the lease ended: no keep-alive re-forces it
        finally:
            for d in devs.values():
                d.close()


async def test_release_is_bounded_when_the_device_does_not_answer() -> None:
    sg = load_profile("sungrow/sh_hybrid")
    sim = DeviceSimulator(sg, unit_id=1)
    async with served(sim) as srv:
        dev = make_driver("sg", sg, srv.port, 1, ProcessImage(), timeout_s=0.2)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            queue = WriteQueue({"sg": dev})
            queue.commands(Commands(t_s=0.0, battery_kw={"sg": -3.0}))
            await _written(queue, 1)
            sim.fault = Fault.NO_ANSWER
            async with asyncio.timeout(10):  # the bound below, not this one, ends it
                released = await queue.release(timeout_s=0.5)
            assert released == []
            assert sim.registers["holding"][13049] == 2  # still forced: the device never heard us
        finally:
            dev.close()


async def test_observe_only_releases_nothing() -> None:
    sg = load_profile("sungrow/sh_hybrid")
    sim = DeviceSimulator(sg, unit_id=1)
    async with served(sim) as srv:
        dev = make_driver("sg", sg, srv.port, 1, ProcessImage())
        try:
            assert await dev.poll_once(), dev.stats.last_error
            queue = WriteQueue({"sg": dev}, observe_only=True)
            queue.commands(Commands(t_s=0.0, battery_kw={"sg": -3.0}))
            async with asyncio.timeout(10):
                while not queue.would_write:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert await queue.release() == []
            assert _writes(sim) == []
        finally:
            dev.close()
