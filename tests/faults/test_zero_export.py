"""Zero export held by the guard between plans (issue 15): the real daemon against the simulated
site over Modbus TCP on loopback (tests/faults/harness.py), with a meter that allows no export.

The plant has no export limiter (``Plant.export_limiter = False``): the grid takes any surplus, so
only the controller keeps the meter at or below zero export. The plan is made once (a 600 s planner
period) with PV at 60 kW; then the sky clears (PV 60 -> 220 kW, far above the site's load). The
plan cannot react in the window; the guard must (powerctl.control.export_hold): from one meter
poll plus one guard period after the jump (plus the write's round trip), the meter exports at
most EXPORT_BOUND_KW, and the surplus is curtailed at the inverter (SunSpec 704 limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from powerctl.config import parse_config
from powerctl.control.export_hold import ExportHold
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from tests.faults.harness import FaultRig, fault_config
from tests.servers import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

METER_POLL_S = 0.5
# one plant tick (0.05 s) and the Modbus write's round trip on a busy loopback
WRITE_SLACK_S = 0.3
EXPORT_BOUND_KW = 0.5  # the hold's noise tolerance (0.2 kW) plus the plant's GPU-lag wobble


async def test_zero_export_held_within_one_meter_poll_when_pv_jumps(tmp_path: Path) -> None:
    base = fault_config(tmp_path, control={"mpc_period_s": 600.0})
    d = base.model_dump(mode="json", exclude_none=True)
    d["devices"] = [x for x in d["devices"] if x["nature"] != Nature.GENSET.value]
    for x in d["devices"]:
        if x["nature"] == Nature.PV.value:
            x["profile"] = "huawei/sun2000_pv"  # an active power limit, and 220 kW fits its int32 power
    d["devices"].append({
        "name": "grid", "nature": "meter", "profile": "huawei/sun2000_meter", "poll_period_s": METER_POLL_S,
        "transport": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": free_port(), "unit_id": 1,
                      "timeout_s": 1.0},
        "limits": {"max_import_kw": 100.0, "max_export_kw": 0.0},
    })
    cfg = parse_config(d, tmp_path / "site.toml")
    rig = FaultRig(cfg, pv_kw=60.0)
    rig.plant.export_limiter = False  # physics only: nothing but the controller stops export
    grid: list[tuple[float, float, float]] = []  # (monotonic t, meter kW + = import, PV delivered kW)
    meter_ts: list[float] = []  # the daemon's meter reading time (its clock), as seen while recording

    async def record() -> None:
        while True:
            pv = sum(p.p_kw for p in rig.plant.pvs.values())
            grid.append((time.monotonic(), rig.plant.grid_kw, pv))
            meter_ts.append(rig.daemon.image.get("grid", "p_kw", rig.clock()).ts)
            await asyncio.sleep(0.02)

    async with rig:
        rec = asyncio.create_task(record())
        try:
            await rig.settled(timeout_s=20.0)
            # the start's hold (PV above the safe caps' load) lets go once the GPUs take the PV
            t_free = await rig.wait_for(lambda: rig.daemon.loop.export_hold.limit_kw is None, 20.0, "no export hold")
            await rig.sleep(1.0)
            t_jump, t_jump_clock = rig.mark("PV 60 -> 220 kW"), rig.clock()
            rig.pv_kw = 220.0
            await rig.sleep(4.0)
            plans = rig.daemon.loop.stats.plans
        finally:
            rec.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rec
    assert plans == 1, f"{plans} plans: the planner must not be the one that curtails here"
    before = [g for t, g, _pv in grid if t_free <= t < t_jump]
    assert min(before) > -EXPORT_BOUND_KW, "exported before the jump"
    # one meter poll + one guard period after the jump; a busy machine may poll late, and then
    # the guard has one guard period from the first reading after the jump
    first_read = min(ts for ts in meter_ts if ts > t_jump_clock) - t_jump_clock + t_jump
    deadline = max(t_jump + METER_POLL_S, first_read) + cfg.control.guard_period_s + WRITE_SLACK_S
    during = [(t - t_jump, -g) for t, g, _pv in grid if t_jump <= t < deadline]
    after = [(t - t_jump, -g, pv) for t, g, pv in grid if t >= deadline]
    worst = max(e for _t, e, _pv in after)
    print(f"peak export {max(e for _t, e in during):.1f} kW before {deadline - t_jump:.2f} s, "
          f"{worst:.2f} kW after; PV delivered {after[-1][2]:.1f} kW of 220")
    assert max(e for _t, e in during) > 10.0, "the jump never exported: the test would not see a hold"
    assert worst <= EXPORT_BOUND_KW, [(round(t, 2), round(e, 1)) for t, e, _pv in after if e > EXPORT_BOUND_KW][:5]
    assert after[-1][2] < 200.0, "PV was not curtailed"
    limits = [v for _t, dev, sig, v in rig.writes if dev == "pv1" and sig == "p_limit_pct"]
    assert limits and min(limits) < 100.0, limits


def test_hold_leaves_a_meter_at_zero_alone_and_bounds_pv_when_the_meter_goes_stale() -> None:
    """A meter that reads 0 kW (an island without a voltage register, or a balanced site) never
    ratchets PV down; a meter that goes stale bounds PV by the load seen (battery, genset as read)."""
    cfg = fault_config(Path("/nonexistent"))  # paths are not touched
    d = cfg.model_dump(mode="json", exclude_none=True)
    d["devices"] = [x for x in d["devices"] if x["nature"] != Nature.GENSET.value]
    d["devices"].append({"name": "grid", "nature": "meter", "profile": "tasmota/energy_mqtt",
                         "transport": {"kind": "mqtt"}, "limits": {"max_import_kw": 100.0, "max_export_kw": 0.0}})
    cfg = parse_config(d, "hold")
    hold = ExportHold(cfg)
    img = ProcessImage()
    for dev, nat, sig in (("pv1", Nature.PV, "p_kw"), ("bess", Nature.BATTERY, "p_kw"), ("grid", Nature.METER, "p_kw")):
        img.declare(dev, nat, sig, 2.0)
    t = 0.0
    for _ in range(20):  # balanced: PV 50 kW, meter 0 kW, every reading new
        t += 0.5
        img.update("pv1", "p_kw", 50.0, t)
        img.update("bess", "p_kw", 0.0, t)
        img.update("grid", "p_kw", 0.0, t)
        assert hold.update(img, t, 50.0) == {}
    img.update("grid", "p_kw", -10.0, t + 0.5)  # 10 kW export: cut to PV - export - margin
    img.update("pv1", "p_kw", 50.0, t + 0.5)
    pct = hold.update(img, t + 0.5, 40.0)["pv1"]
    assert hold.limit_kw == pytest.approx(50.0 - 10.0 - hold.margin_kw)
    assert pct == pytest.approx(round(100.0 * hold.limit_kw / 230.0, 1))
    # the meter goes stale: PV bounded by the load seen less the battery's discharge as read
    img.update("pv1", "p_kw", hold.limit_kw, t + 1.0)
    img.update("bess", "p_kw", 5.0, t + 4.0)
    hold.update(img, t + 4.0, 30.0)
    assert hold.limit_kw == pytest.approx(30.0 - 5.0 - hold.margin_kw)
