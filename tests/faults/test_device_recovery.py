"""A device that is back is fresh again within its poll period + the backoff cap (issue 12: a PV
inverter stayed stale 40-180 s after its fault cleared on a loaded machine).

The real Modbus driver (powerctl/io/modbus.py) against a register-level simulator on a real
pymodbus server on loopback (sim/devices.py); faults injected there. Waits are on conditions with
generous bounds: the bound under test is poll period + ``BACKOFF_MAX_S`` + 10 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from powerctl.config import ModbusTcp
from powerctl.io.modbus import BACKOFF_MAX_S, ModbusDevice
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.profiles.library import site_profile
from powerctl.sim.devices import DeviceSimulator, Fault, SimServer
from tests.servers import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

PERIOD_S = 0.5
SLACK_S = 10.0  # a loaded machine: late polls, a timeout or two


@asynccontextmanager
async def polled_inverter() -> AsyncIterator[tuple[DeviceSimulator, ModbusDevice, ProcessImage]]:
    prof = site_profile("sunspec/inverter_103", None)
    sim = DeviceSimulator(prof, unit_id=1)
    sim.set_signal("p_kw", 42.0)
    img = ProcessImage()
    for p in prof.points:
        if p.signal:
            img.declare("pv1", Nature.PV, p.signal, 4 * PERIOD_S)
    async with SimServer([sim], free_port()) as srv:
        dev = ModbusDevice("pv1", prof, ModbusTcp(kind="modbus_tcp", host="127.0.0.1", port=srv.port, timeout_s=0.5),
                           img, poll_period_s=PERIOD_S)
        task = asyncio.create_task(dev.run())
        try:
            yield sim, dev, img
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def fresh(img: ProcessImage) -> bool:
    return img.get("pv1", "p_kw", time.time()).good


async def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``cond`` held (checked every 50 ms: the image has no change notification)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def test_a_refusing_inverter_is_fresh_within_a_poll_period_of_answering_again() -> None:
    """Exception responses mean the device is alive: no backoff, so nothing to wait out."""
    async with polled_inverter() as (sim, dev, img):
        await wait_for(lambda: fresh(img), 30.0, "first good poll")
        sim.fault = Fault.EXCEPTION
        # long enough that a backoff on refusals would be 16 s by now (3 failures stale, then 1, 2, 4, 8)
        await wait_for(lambda: dev.stats.consecutive_failures >= 8, 60.0, "eight refused polls")
        assert not fresh(img) and "not answering" in img.get("pv1", "p_kw", time.time()).reason
        sim.fault = Fault.NONE
        took_s = await wait_for(lambda: fresh(img), PERIOD_S + SLACK_S, "fresh again after the refusals ended")
        print(f"refusing inverter: fresh {took_s:.1f} s after it answered again")


async def test_a_silent_inverter_is_fresh_within_poll_period_plus_backoff_cap() -> None:
    async with polled_inverter() as (sim, dev, img):
        await wait_for(lambda: fresh(img), 30.0, "first good poll")
        sim.fault = Fault.NO_ANSWER
        # silent long enough for the backoff to reach its cap
        await wait_for(lambda: dev.next_delay_s() >= BACKOFF_MAX_S, 120.0, "backoff at its cap")
        assert not fresh(img)
        sim.fault = Fault.NONE
        sim.set_signal("p_kw", 77.0)
        took_s = await wait_for(lambda: fresh(img), PERIOD_S + BACKOFF_MAX_S + SLACK_S,
                                "fresh again after the inverter came back")
        assert img.get("pv1", "p_kw", time.time()).value == pytest.approx(77.0, abs=0.1)
        assert dev.stats.consecutive_failures == 0
        print(f"silent inverter: fresh {took_s:.1f} s after it came back (cap {BACKOFF_MAX_S:g} s)")
