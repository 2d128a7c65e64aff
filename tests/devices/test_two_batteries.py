"""A two-battery site: the real daemon against the simulated site over Modbus TCP on loopback.

Two batteries of different vendors (SMA Sunny Island: one setpoint register; Sungrow SH: the
EMS-mode / command / power sequence) behind a grid connection, so the plant's batteries follow
their setpoints (sim/plant/site.py). The daemon's plan gives each its own power; each simulated
battery receives its own setpoint over Modbus and runs at it. When the daemon stops, the
Sungrow's registers show it handed back to self-consumption.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from powerctl.config import load_config, parse_config
from tests.devices.conftest import at_any_hour, cheaper_to_wear, on_loopback
from tests.faults.harness import FaultRig

ROOT = Path(__file__).resolve().parents[2]


def _two_battery_site(tmp_path: Path) -> Any:
    d = load_config(ROOT / "examples" / "grid-site.toml").model_dump(mode="json", exclude_none=True)
    d["devices"] = [x for x in d["devices"] if x["nature"] != "genset"]
    bess = next(x for x in d["devices"] if x["name"] == "bess")
    bess2 = copy.deepcopy(bess)
    bess2.update(name="bess2", profile="sungrow/sh_hybrid")
    bess2["transport"]["unit_id"] = 1
    bess2["limits"].update(max_charge_kw=8.0, max_discharge_kw=8.0, capacity_kwh=40.0)  # ForcedPower <= 10 kW
    cheaper_to_wear(bess2, bess)
    d["devices"].append(bess2)
    on_loopback(d, tmp_path)
    at_any_hour(d, tmp_path)  # the plan moves the batteries whatever the hour (tests/devices/conftest.py)
    d["telemetry"] = {"period_s": 1.0, "file": str(tmp_path / "run" / "telemetry.lp")}
    return parse_config(d, tmp_path / "site.toml")


async def test_each_battery_follows_its_own_setpoint(tmp_path: Path) -> None:
    cfg = _two_battery_site(tmp_path)
    rig = FaultRig(cfg, pv_kw=40.0, soc0_pct=70.0)
    async with rig:
        written = rig.daemon.writes.written
        await rig.wait_for(lambda: any(c.mode == "plan" and not c.stale for c in rig.cycles), 60.0, "a planned cycle")
        t_plan = rig.mark("planned")
        await rig.wait_for(lambda: {"bess.p_set_kw", "bess2.p_set_kw"} <= written.keys(), 60.0, "both batteries written")
        await rig.sleep(2.0)  # a few dispatch cycles on the plan

        def following() -> bool:
            bats = rig.plant.batteries
            return all(
                abs(bats[n].setpoint_kw - written[f"{n}.p_set_kw"]) < 0.05 and abs(bats[n].p_kw - bats[n].setpoint_kw) < 0.05
                for n in ("bess", "bess2")
            )

        # grid-tied: each plant battery takes its own written setpoint and runs at it (the next tick)
        await rig.wait_for(following, 30.0, "each plant battery at its own written setpoint")
        got = {n: (written[f"{n}.p_set_kw"], rig.plant.batteries[n].p_kw) for n in ("bess", "bess2")}
        plan = rig.daemon.core.plan_result
    assert plan is not None and t_plan > 0 and plan.battery_kw.shape[0] == 2  # one row per battery
    # each battery got its own power (the plan and the dispatch move on every cycle, so the
    # check is what each device was last written and what its plant battery runs at)
    assert got["bess"][0] != pytest.approx(got["bess2"][0])
    # the Sungrow one got its setpoint through the sequence (EMS mode 2, command, power) on the wire
    seq = [(fc, a) for fc, a, _n, v in rig.sim("bess2").request_log if v is not None]
    assert (6, 13049) in seq and (6, 13050) in seq and (6, 13051) in seq
    for n, (sp, p_kw) in got.items():
        assert p_kw == pytest.approx(sp, abs=0.05), n
    assert rig.daemon.writes.errors == 0
    # the daemon stopped: the Sungrow is out of forced mode (stop 0xCC, power 0, EMS mode 0 =
    # self-consumption) in its registers, the last writes it saw (powerctl/writes.py release)
    hold = rig.sim("bess2").registers["holding"]
    assert (hold[13049], hold[13050], hold[13051]) == (0, 0xCC, 0)
    assert [(fc, a) for fc, a, _n, v in rig.sim("bess2").request_log if v is not None][-3:] == [(6, 13050), (6, 13051), (6, 13049)]
