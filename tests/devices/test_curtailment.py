"""PV curtailment reaches the inverter: sunny noon, battery full, compute capped.

The real optimizer plans (HiGHS), the controller core turns the plan's curtailed PV into an
active power limit, the write queue sends it to a SunSpec DER inverter (model 704 ``WMaxLimPct``
+ ``WMaxLimPctEna``) served by the register-level simulator, whose PV array (sim/plant/pv.py)
then delivers no more than the limit. When the load comes back the limit is released (100 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import PvDevice, parse_config
from powerctl.control.core import ControllerCore
from powerctl.control.curtail import RELEASED_PCT, limit_pct, rating_kw
from powerctl.control.split import slots_from_pool
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.pv import PvArray
from powerctl.writes import WriteQueue
from tests.devices.conftest import make_driver, served

ROOT = Path(__file__).resolve().parents[2]
PV_FORECAST_KW = 120.0  # below what the GPUs can take at full power (3 x 64 x 700 W x 1.08)


def _site():  # type: ignore[no-untyped-def]
    data = tomllib.loads((ROOT / "examples" / "demo-site.toml").read_text())
    data["control"]["horizon"] = [{"step_s": 60, "count": 10}]
    data["control"]["solver"] = "HIGHS"
    for d in data["devices"]:
        if d["name"] == "pv1":
            d["profile"] = "sunspec/der_inverter"
    return parse_config(data)


def _image(cfg, now: float) -> ProcessImage:  # type: ignore[no-untyped-def]
    img = ProcessImage()
    for d in cfg.devices:
        for sig in SIGNALS[d.nature]:
            img.declare(d.name, d.nature, sig, 60.0)
    img.update("pv1", "p_kw", PV_FORECAST_KW, now)
    img.update("bess", "soc_pct", cfg.device("bess").limits.soc_max_pct, now)  # full
    img.update("gen1", "running", 0.0, now)
    img.update("gen1", "p_kw", 0.0, now)
    return img


async def _written(queue: WriteQueue, key: str, value: float) -> None:
    async with asyncio.timeout(10):
        while queue.written.get(key) != value:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_sunny_noon_full_battery_capped_compute_curtails_at_the_inverter() -> None:
    cfg = _site()
    pv_cfg = cfg.device("pv1")
    assert isinstance(pv_cfg, PvDevice)
    demand_kw = [13.0]  # per GPU class: compute capped (just above the classes' floors, 64 x 200 W)

    def forecast(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.full((1, n), PV_FORECAST_KW), np.full((3, n), demand_kw[0]), np.zeros(n)

    core = ControllerCore(cfg, slots_from_pool(cfg.gpu), forecast)
    profile = load_profile("sunspec/der_inverter")
    array = PvArray("pv1", kwp=pv_cfg.limits.kwp, max_ac_kw=rating_kw(pv_cfg), available_kw=PV_FORECAST_KW)
    sim = DeviceSimulator(profile, on_write=lambda s, v: setattr(array, "limit_pct", v) if s == "p_limit_pct" else None)
    lim, ena = profile.setpoint("WMaxLimPct"), profile.setpoint("WMaxLimPctEna")
    now = 1000.0
    async with served(sim) as srv:
        dev = make_driver("pv1", profile, srv.port, 1, ProcessImage())
        try:
            assert await dev.poll_once(), dev.stats.last_error  # SunSpec discovery + WMaxLimPct_SF
            queue = WriteQueue({"pv1": dev})

            img = _image(cfg, now)
            plan = core.plan(now, img)
            cmd = core.dispatch(now + 0.5, img)
            # the plan keeps PV out of the site (curtailed, or sent to a dump load the site does not have)
            planned_kw = float(plan.pv_kw[0, 0]) - float(plan.spill_kw[0])
            assert planned_kw < PV_FORECAST_KW - 10, "the plan should curtail: battery full, compute capped"
            pct = cmd.pv_limit_pct["pv1"]
            assert pct == limit_pct(pv_cfg, planned_kw, PV_FORECAST_KW, cfg.control.supply_margin_kw) < RELEASED_PCT
            queue.commands(cmd)
            await _written(queue, "pv1.p_limit_pct", pct)
            # on the wire: revert timer 120 s to released (100 %, disabled), FC16 WMaxLimPct (SF -1:
            # tenths of a percent), then FC16 WMaxLimPctEna = 1
            writes = [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]
            assert writes[-5:] == [
                (16, 40295, [0, 120]), (16, 40293, [1000]), (16, 40294, [0]),
                (16, lim.address, [round(pct * 10)]), (16, ena.address, [1]),
            ]
            # the inverter delivers no more than the limit: the plan's PV plus the margin, not the sun's
            assert array.limit_pct == pytest.approx(pct)
            taken_kw = float(np.sum(plan.gpu_kw[:, 0])) * (1 + cfg.gpu.facility_overhead) - float(np.sum(plan.battery_kw[:, 0]))
            assert array.headroom_kw() == pytest.approx(pct / 100 * rating_kw(pv_cfg))
            assert array.headroom_kw() - taken_kw <= cfg.control.supply_margin_kw + 0.3  # rounding of pct
            assert array.headroom_kw() < PV_FORECAST_KW

            # the load comes back: the limit is released, the whole sun reaches the site
            demand_kw[0] = 44.8
            img = _image(cfg, now + 10)
            plan = core.plan(now + 10, img)
            cmd = core.dispatch(now + 10.5, img)
            assert float(plan.pv_kw[0, 0]) - float(plan.spill_kw[0]) == pytest.approx(PV_FORECAST_KW, abs=0.5)
            assert cmd.pv_limit_pct["pv1"] == RELEASED_PCT
            queue.commands(cmd)
            await _written(queue, "pv1.p_limit_pct", RELEASED_PCT)
            writes = [(fc, a, v) for fc, a, _n, v in sim.request_log if v is not None]
            assert writes[-2:] == [(16, lim.address, [1000]), (16, ena.address, [1])]
            assert array.headroom_kw() == pytest.approx(PV_FORECAST_KW)
        finally:
            dev.close()


def test_no_plan_releases_every_pv_limit() -> None:
    cfg = _site()

    def forecast(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.full((1, n), PV_FORECAST_KW), np.full((3, n), 5.0), np.zeros(n)

    core = ControllerCore(cfg, slots_from_pool(cfg.gpu), forecast)
    cmd = core.dispatch(0.0, _image(cfg, 0.0))
    assert cmd.mode == "safe" and cmd.pv_limit_pct == {"pv1": RELEASED_PCT}


Events = list[tuple[str, dict[str, object], str | None]]


@contextlib.asynccontextmanager
async def _polled_der_inverter(*, observe_only: bool = False) -> AsyncIterator[tuple[DeviceSimulator, WriteQueue, Events]]:
    """A SunSpec DER inverter simulator on loopback, its driver polled once (WMaxLimPct_SF known:
    only the range can refuse), and a write queue over it that records its events."""
    profile = load_profile("sunspec/der_inverter")
    sim = DeviceSimulator(profile)
    events: Events = []
    async with served(sim) as srv:
        dev = make_driver("pv1", profile, srv.port, 1, ProcessImage())
        try:
            assert await dev.poll_once(), dev.stats.last_error
            yield sim, WriteQueue({"pv1": dev}, on_event=lambda k, f, d: events.append((k, f, d)),
                                  observe_only=observe_only), events
        finally:
            dev.close()


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("pct", "why"), [
    (150.0, "WMaxLimPct: 150 % is outside the allowed range [0, 100] %"),
    (-5.0, "WMaxLimPct: -5 % is outside the allowed range [0, 100] %"),
    (float("nan"), "refusing non-finite p_limit_pct nan"),
])
async def test_an_out_of_range_limit_through_the_write_queue_puts_nothing_on_the_wire(pct: float, why: str) -> None:
    # p_limit_pct is a five-step sequence (revert timer, revert limit, ..., WMaxLimPct, enable):
    # the WMaxLimPct step's range [0, 100] % is checked before the first step is sent
    async with _polled_der_inverter() as (sim, queue, events):
        before = len(sim.request_log)
        queue.queue("pv1", "p_limit_pct", pct, deadband=0.0)
        await _until(lambda: queue.errors > 0)
        assert [r for r in sim.request_log[before:] if r[3] is not None] == []  # not one write request
        assert queue.written == {} and sim.writes == []
        assert [(k, d) for k, _f, d in events] == [("write_error", "pv1")]
        assert why in str(events[0][1]["message"])
        # the queue is not stuck: an in-range limit after it is written
        queue.queue("pv1", "p_limit_pct", 40.0, deadband=0.0)
        await _written(queue, "pv1.p_limit_pct", 40.0)


async def test_observe_only_shows_what_a_live_daemon_would_refuse_and_writes_nothing() -> None:
    # commissioning: an out-of-range value is a "would refuse" with the reason, not a "would write"
    async with _polled_der_inverter(observe_only=True) as (sim, queue, events):
        queue.queue("pv1", "p_limit_pct", 150.0, deadband=0.0)
        await _until(lambda: bool(events))
        assert [(k, d) for k, _f, d in events] == [("write_error", "pv1")]
        assert "outside the allowed range" in str(events[0][1]["message"])
        queue.queue("pv1", "p_limit_pct", 40.0, deadband=0.0)
        await _until(lambda: queue.would_write.get("pv1.p_limit_pct") == 40.0)
        assert len(events) == 1  # the in-range value is a plain "would write"
        assert queue.would_refuse == {} and sim.writes == [] and queue.written == {}


@pytest.mark.parametrize(("planned_kw", "forecast_kw"), [(float("nan"), 200.0), (50.0, float("nan")), (float("inf"), 200.0)])
def test_a_plan_or_forecast_that_is_not_a_number_releases_rather_than_cuts_the_array(
        planned_kw: float, forecast_kw: float) -> None:
    pv_cfg = _site().device("pv1")
    assert isinstance(pv_cfg, PvDevice)
    assert limit_pct(pv_cfg, 50.0, 200.0, 3.0) < RELEASED_PCT  # the same call with numbers curtails
    assert limit_pct(pv_cfg, planned_kw, forecast_kw, 3.0) == RELEASED_PCT
