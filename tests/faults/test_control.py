"""Control-path faults: the solver failing or running past its deadline, the planner hanging, a
sudden 60 % PV drop, a genset that does not start, a battery at its SoC floor, NTP clock steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.faults.harness import FaultRig, fault_config, persistence_forecaster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


def caps_after(rig: FaultRig, t0: float) -> list[float]:
    return [c.cap_w for c in rig.caps if c.t >= t0]


async def test_solver_fails_down_the_ladder(tmp_path: Path) -> None:
    """Both solvers fail: rule-based plan; the rules fail too: safe plan, the dispatcher goes to the
    safe cap; solvers back: primary again."""
    rig = FaultRig(fault_config(tmp_path), pv_kw=60.0)
    problem = rig.daemon.core.problem
    mpc_s = rig.cfg.control.mpc_period_s
    async with rig:
        await rig.settled()
        problem.force_fail = {"primary", "secondary"}
        rig.mark("solvers fail")
        await rig.wait_for(lambda: rig.daemon.status.plan_rung == "rule", mpc_s + 2, "rule-based plan")
        problem.force_fail = {"primary", "secondary", "rule"}
        t_safe = rig.mark("rules fail too")
        await rig.wait_for(lambda: rig.cycles[-1].mode == "safe", 2 * mpc_s + 2, "dispatcher in safe mode")
        t_mode = rig.cycles[-1].t
        await rig.sleep(2.0)
        problem.force_fail = set()
        t_ok = rig.mark("solvers back")
        await rig.wait_for(lambda: rig.daemon.status.plan_rung == "primary" and rig.cycles[-1].mode == "plan",
                           mpc_s + 3, "back on the primary solver")
        await rig.sleep(1.0)
    rig.check_all()
    assert t_mode - t_safe <= 2 * mpc_s + 1.5
    # in safe mode (one guard period after the dispatcher said so) no GPU is above the safe cap
    safe_window = [c.cap_w for c in rig.caps if t_mode + rig.cfg.control.guard_period_s <= c.t <= t_ok]
    assert safe_window and max(safe_window) <= rig.cfg.gpu.safe_cap_w + 1e-6


async def test_solver_past_its_deadline(tmp_path: Path) -> None:
    """A solver that takes 3 s against a 1 s deadline: the problem abandons it and plans by rules
    within the deadline; the loop keeps its cadence."""
    rig = FaultRig(fault_config(tmp_path), pv_kw=60.0)
    backend = rig.daemon.core.problem.backend
    real_solve = backend.solve
    slow = {"on": False}

    def solve(*args: Any, **kwargs: Any) -> Any:
        if slow["on"]:
            time.sleep(3.0)  # a solver stuck in the worker thread (it cannot be interrupted)
        return real_solve(*args, **kwargs)

    backend.solve = solve  # type: ignore[method-assign]
    deadline_s = rig.cfg.control.solve_deadline_s
    async with rig:
        await rig.settled()
        slow["on"] = True
        rig.mark("solver slow")
        await rig.wait_for(lambda: rig.daemon.status.plan_rung == "rule", 5.0, "rule-based plan after the deadline")
        for _ in range(3):
            await rig.sleep(rig.cfg.control.mpc_period_s)
            st = rig.daemon.status
            assert st.plan_rung == "rule" and st.last_solve_ms is not None
            assert st.last_solve_ms <= 1000 * deadline_s + 100, st.last_solve_ms
            assert rig.cycles[-1].mode == "plan"  # a rule-based plan is a plan: no fall to safe
        slow["on"] = False
        await rig.wait_for(lambda: rig.daemon.status.plan_rung == "primary", 8.0, "primary solver again")
    rig.check_all()


async def test_planner_hangs(tmp_path: Path) -> None:
    """The planner thread hangs (a forecaster stuck for 30 s): the daemon keeps the last plan until
    it is three planner periods old, then dispatches the safe cap; the guard and dispatcher keep
    their cadence; when the planner is back so is the plan."""
    cfg = fault_config(tmp_path, control={"mpc_period_s": 1.0})
    inner = persistence_forecaster(cfg)
    hang = {"until": 0.0}

    def forecaster(now_s: float, image: Any, steps_s: np.ndarray) -> Any:
        while time.monotonic() < hang["until"]:
            time.sleep(0.05)
        return inner(now_s, image, steps_s)

    rig = FaultRig(cfg, pv_kw=60.0, forecaster=forecaster)
    async with rig:
        await rig.settled()
        hang["until"] = time.monotonic() + 30.0
        t_hang = rig.mark("planner hangs")
        await rig.wait_for(lambda: rig.cycles[-1].mode == "safe", 6.0, "safe mode once the plan is too old")
        await rig.sleep(1.5)
        hang["until"] = 0.0
        t_release = rig.mark("planner back")
        await rig.wait_for(lambda: rig.cycles[-1].mode == "plan", 5.0, "planning again")
        await rig.sleep(0.5)
    rig.check_all()
    # times from the recorded cycles, not from when this test happened to look (a busy machine
    # wakes the test late: issue 12 saw `safe` come out empty that way)
    t_safe = next(c.t for c in rig.cycles if c.t >= t_hang and c.mode == "safe")
    t_back = next(c.t for c in rig.cycles if c.t >= t_release and c.mode == "plan")
    assert t_safe - t_hang <= 3 * cfg.control.mpc_period_s + 2.5
    # while in safe mode no cap rose above the safe cap, and by the time the planner was back
    # every GPU held the safe cap or less (the last cap each was sent before t_back)
    assert all(c.cap_w <= cfg.gpu.safe_cap_w + 1e-6 for c in rig.caps if t_safe + cfg.control.guard_period_s < c.t <= t_back)
    held = {c.index: c.cap_w for c in rig.caps if c.t <= t_back}
    assert held and max(held.values()) <= cfg.gpu.safe_cap_w + 1e-6, held


async def test_pv_drops_60_percent(tmp_path: Path) -> None:
    """PV falls from 120 to 48 kW in one step: within one poll and one guard period the caps fit
    what is left; after the GPUs' power lag the load is within supply minus margin again."""
    rig = FaultRig(fault_config(tmp_path), pv_kw=120.0)
    c = rig.cfg.control
    async with rig:
        await rig.settled()
        await rig.sleep(1.5)
        rig.pv_kw = 48.0
        t_drop = rig.mark("PV -60 %")
        await rig.sleep(6.0)
    pv_poll_s = rig.cfg.device("pv1").poll_period_s
    react_s = pv_poll_s + c.guard_period_s + 0.25  # measurement + one guard period (+ loop jitter)
    settle_s = react_s + 4 * rig.gpu_tau_s
    unserved_kwh = rig.check_all(transients=[(t_drop, t_drop + settle_s)])
    # the caps fit the supply left (PV now + battery limit) within one guard period of the measurement
    bat = rig.cfg.device("bess").limits.max_discharge_kw
    avail = 48.0 + bat
    allowed_gpu_kw = (avail - rig.margin_kw(avail)) / (1 + rig.cfg.gpu.facility_overhead)
    before_kw = rig.caps_sum_kw_at(t_drop)
    assert before_kw > allowed_gpu_kw + 5, f"caps {before_kw:.1f} kW already fit: the drop tests nothing"
    after_kw = rig.caps_sum_kw_at(t_drop + react_s)
    assert after_kw <= allowed_gpu_kw + 0.1, (after_kw, allowed_gpu_kw)
    # what the GPUs drew over the supply while their power followed the cut is bounded by the caps
    # in force before the measurement arrived, held for the reaction time plus the GPUs' lag
    caps_kw = max(rig.caps_sum_kw_at(t) for t in np.arange(t_drop, t_drop + react_s, 0.05))
    bound_kwh = max(0.0, caps_kw * (1 + rig.cfg.gpu.facility_overhead) - avail) * settle_s / 3600.0
    print(f"caps {before_kw:.1f} -> {after_kw:.1f} kW (allowed {allowed_gpu_kw:.1f}); "
          f"unserved in transient {unserved_kwh * 3600:.1f} kJ (bound {bound_kwh * 3600:.1f} kJ)")
    assert unserved_kwh <= bound_kwh + 1e-9


async def test_genset_fails_to_start(tmp_path: Path) -> None:
    """Low PV, low battery: the plan starts the genset, which ignores the command. The guard never
    counts a genset that is not running, so caps stay within PV + battery."""
    cfg = fault_config(tmp_path, genset={"min_down_s": 0.0, "min_up_s": 30.0, "warmup_s": 1.0})
    rig = FaultRig(cfg, pv_kw=15.0, soc0_pct=20.0, genset_ignores_start=True)
    async with rig:
        await rig.wait_for(lambda: ("gen1", "start_cmd", 1.0) in [(d, s, v) for _, d, s, v in rig.writes],
                           10.0, "the daemon commands a genset start")
        t_cmd = rig.mark("start commanded (ignored)")
        await rig.sleep(6.0)
    rig.check_all()
    assert not any(s.genset_cap_kw for s in rig.samples), "the genset ran"
    # the guard's view: no genset supply while it is not running
    assert rig.daemon.status.genset_running is False
    avail = 15.0 + cfg.device("bess").limits.max_discharge_kw
    allowed_gpu_kw = (avail - rig.margin_kw(avail)) / (1 + cfg.gpu.facility_overhead)
    floors_kw = cfg.gpu.count * cfg.gpu.min_w / 1000
    for t in np.arange(t_cmd, rig.t_end - 0.5, 0.5):
        assert rig.caps_sum_kw_at(t) <= max(allowed_gpu_kw, floors_kw) + 0.1
    # the command is not hammered: re-sent at most every 10 s while unchanged
    starts = [t for t, d, s, v in rig.writes if d == "gen1" and s == "start_cmd" and v == 1.0]
    assert len(starts) <= 2, len(starts)


async def test_battery_at_soc_floor(tmp_path: Path) -> None:
    """The battery reports SoC at its floor: the guard counts no discharge from it, the planner plans
    none, and caps stay within PV alone."""
    cfg = fault_config(tmp_path)
    floor = cfg.device("bess").limits.soc_min_pct
    rig = FaultRig(cfg, pv_kw=60.0, soc0_pct=floor)
    async with rig:
        await rig.sleep(7.0)
    rig.check_all()
    discharge = [v for _, d, s, v in rig.writes if d == "bess" and s == "p_set_kw" and v > 1e-6]
    assert not discharge, f"discharge commanded at the SoC floor: {discharge}"
    assert all(s.battery_kw <= 1e-6 for s in rig.samples), "the battery discharged below its floor"
    avail = 60.0
    allowed_gpu_kw = (avail - rig.margin_kw(avail)) / (1 + cfg.gpu.facility_overhead)
    for t in np.arange(rig.t_start + 2.0, rig.t_end - 0.5, 0.5):
        assert rig.caps_sum_kw_at(t) <= allowed_gpu_kw + 0.1


@pytest.mark.parametrize("steps", [(3600.0, -3600.0), (-3600.0,)], ids=["forward-then-back", "back"])
async def test_clock_steps(tmp_path: Path, steps: tuple[float, ...]) -> None:
    """NTP steps the daemon's clock by an hour: readings taken before the step look an hour old (or
    from the future) and count as stale until fresh polls arrive; the plan counts as too old. No cap
    rises on that stale data, the cadence holds (timers are monotonic), the genset is not switched."""
    rig = FaultRig(fault_config(tmp_path), pv_kw=60.0)
    async with rig:
        await rig.settled()
        for step in steps:
            await rig.sleep(1.0)
            rig.clock.step(step)
            rig.mark(f"clock {step:+.0f} s")
            await rig.sleep(3.5)
        await rig.settled(8.0)
    rig.check_all()
    # the genset kept the state it was commanded before the first step
    t0 = rig.events[0][0]
    gen = [(t, v) for t, d, s, v in rig.writes if d == "gen1" and s == "start_cmd"]
    before = [v for t, v in gen if t < t0]
    assert before, "no genset command before the clock step"
    assert all(v == before[-1] for t, v in gen if t >= t0), gen
    assert rig.daemon.status.plan_rung in {"primary", "secondary"}
