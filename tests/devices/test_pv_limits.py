"""PV active power limits for every PV profile that can curtail, through the write queue.

Against the register-level simulator on a real pymodbus server: the dispatcher's limit (the nature
signal ``p_limit_pct``) goes through ``WriteQueue.commands`` (deadband, re-send, range checks) to
the vendor's registers; the exact write PDUs are checked, the simulated array (sim/plant/pv.py)
delivers no more than the limit, 100 % releases it, and a limit outside the profile's range is
refused before anything is sent. The SunSpec DER inverter's end-to-end case is in
test_curtailment.py.
"""

from __future__ import annotations

import asyncio

import pytest

from powerctl.control.core import Commands
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.pv import PvArray
from powerctl.writes import WriteQueue
from tests.devices.conftest import make_driver, served

# key, unit, limit %, write PDUs for it (fc, address, registers), write PDUs for 100 % (released)
CASES = [
    # 40125 int16, gain 10 (0.1 %): 37.5 % = 375
    ("huawei/sun2000_pv", 1, 37.5, [(6, 40125, [375])], [(6, 40125, [1000])]),
    # doc 5007 switch 0xAA, then doc 5008 setting in 0.1 %
    ("sungrow/sg_string", 1, 42.0, [(6, 5006, [0xAA]), (6, 5007, [420])], [(6, 5006, [0xAA]), (6, 5007, [1000])]),
]


def _writes(sim: DeviceSimulator) -> list[tuple[int, int, list[int]]]:
    return [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]


async def _written(queue: WriteQueue, key: str, value: float) -> None:
    async with asyncio.timeout(10):
        while queue.written.get(key) != value:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("key", "unit", "pct", "want", "released"), CASES, ids=[c[0] for c in CASES])
async def test_pv_limit_on_the_wire(key: str, unit: int, pct: float, want: list[tuple[int, int, list[int]]],
                                    released: list[tuple[int, int, list[int]]]) -> None:
    profile = load_profile(key)
    array = PvArray("pv", kwp=120.0, max_ac_kw=100.0, available_kw=90.0)
    sim = DeviceSimulator(profile, unit_id=unit, on_write=lambda s, v: setattr(array, "limit_pct", v) if s == "p_limit_pct" else None)
    async with served(sim) as srv:
        dev = make_driver("pv", profile, srv.port, unit, ProcessImage())
        try:
            assert await dev.poll_once(), dev.stats.last_error
            assert dev.supports("p_limit_pct")
            queue = WriteQueue({"pv": dev})
            sim.request_log.clear()
            queue.commands(Commands(t_s=0.0, pv_limit_pct={"pv": pct}))
            await _written(queue, "pv.p_limit_pct", pct)
            assert _writes(sim) == want
            assert array.limit_pct == pytest.approx(pct)
            assert array.headroom_kw() == pytest.approx(pct)  # % of a 100 kW rating, below the 90 kW sun
            assert queue.errors == 0

            sim.request_log.clear()
            queue.commands(Commands(t_s=1.0, pv_limit_pct={"pv": 100.0}))
            await _written(queue, "pv.p_limit_pct", 100.0)
            assert _writes(sim) == released
            assert array.headroom_kw() == pytest.approx(90.0)  # the whole sun again

            # outside the profile's range: refused by the range check, nothing on the wire
            sim.request_log.clear()
            queue.commands(Commands(t_s=2.0, pv_limit_pct={"pv": 150.0}))
            async with asyncio.timeout(10):
                while queue.errors == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert _writes(sim) == [] and queue.written["pv.p_limit_pct"] == 100.0
        finally:
            dev.close()

