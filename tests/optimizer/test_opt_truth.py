"""Inputs that tell the truth (issue 16): the GPU floor, stale PV, a startable genset in the reserve,
and no battery that charges and discharges at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opt_sites import inputs, no_reserve

from powerctl.config import load_config
from powerctl.control.planner import gpu_floor_kw, pv_worst_case, site_params
from powerctl.control.split import slots_from_pool
from powerctl.optimizer import BatteryParams, DispatchProblem, GensetParams, PvParams, SiteParams
from powerctl.optimizer.checks import plan_violations

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml"


def test_gpu_floor_is_the_sum_of_minimum_caps() -> None:
    cfg = load_config(DEMO, check_secrets=False)
    floors = gpu_floor_kw(cfg)
    for c in cfg.gpu.classes:
        by_caps = c.gpus * cfg.gpu.min_w / 1000.0
        by_pct = c.gpus * cfg.gpu.max_w / 1000.0 * c.floor_pct / 100.0
        assert floors[c.name] == pytest.approx(max(by_caps, by_pct))
    params = site_params(cfg)
    total = sum(k.p_min_kw for k in params.gpu_classes)
    # Every GPU has a minimum cap; the floor_pct share alone (13.4 kW in the demo) is not the floor.
    assert total == pytest.approx(sum(c.gpus for c in cfg.gpu.classes) * cfg.gpu.min_w / 1000.0, abs=1.0)
    assert total > sum(c.gpus * cfg.gpu.max_w / 1000.0 * c.floor_pct / 100.0 for c in cfg.gpu.classes) + 1.0
    # A GPU whose own range starts higher raises its class's floor.
    slots = slots_from_pool(cfg.gpu)
    first = slots[0]
    slots[0] = type(first)(first.index, first.klass, first.priority, first.min_w + 100.0, first.max_w)
    by_slot = gpu_floor_kw(cfg, slots)
    k = first.klass
    c = next(c for c in cfg.gpu.classes if c.name == k)
    expect = max(c.gpus * cfg.gpu.min_w / 1000.0 + 0.1, c.gpus * cfg.gpu.max_w / 1000.0 * c.floor_pct / 100.0)
    assert by_slot[k] == pytest.approx(expect)


def test_stale_pv_is_zero_for_its_stale_age_then_the_forecast_with_reserve() -> None:
    steps = np.array([60.0] * 10 + [900.0] * 4)
    pv = np.full((2, steps.size), 40.0)
    stale = np.array([True, False])
    out, extra = pv_worst_case(pv, stale, np.array([300.0, 0.0]), steps, None)
    starts = np.concatenate(([0.0], np.cumsum(steps)[:-1]))
    assert np.all(out[0, starts <= 300.0] == 0.0)
    assert np.all(out[0, starts > 300.0] == 40.0)
    assert np.all(out[1] == 40.0)  # the fresh PV is planned at its forecast
    assert extra is not None and np.all(extra[starts > 300.0] > 0.0) and np.all(extra[starts <= 300.0] == 0.0)
    # A reading just gone stale still plans its first step at zero; an older one widens the reserve more.
    first, _ = pv_worst_case(pv, stale, np.array([0.0, 0.0]), steps, None)
    assert first[0, 0] == 0.0 and first[0, 1] == 40.0
    _, older = pv_worst_case(pv, stale, np.array([600.0, 0.0]), steps, None)
    assert older is not None and older[-1] > extra[-1]
    # A forecaster's own (larger) reserve is kept.
    _, kept = pv_worst_case(pv, stale, np.array([300.0, 0.0]), steps, np.full(steps.size, 100.0))
    assert kept is not None and np.all(kept == 100.0)


def _reserve_site(warmup_s: float) -> SiteParams:
    # Load 50 kW on the battery; the reserve asks for the whole load again (100 %). The battery has
    # 10 kW of power headroom, so only a genset (stopped: starting costs fuel and a start) can cover it.
    return SiteParams(steps_s=np.full(12, 300.0), batteries=[BatteryParams("b", 500, 60, 60, 10, 95, 0.95, 0.95, 0.0, 0.0)],
                      gensets=[GensetParams("g", 150, 45, 3.0, 0.3, start_cost=20.0, warmup_s=warmup_s)],
                      reserve_load_pct=100.0, reserve_pv_pct=0.0, facility_overhead=0.0, solver="HIGHS")


def test_reserve_counts_a_stopped_genset_that_can_start_in_time() -> None:
    quick = _reserve_site(warmup_s=60.0)
    plan = DispatchProblem(quick).solve(inputs(quick, other=[50.0] * 12, soc=[80.0]), deadline_s=10)
    assert not plan.genset_on.any()
    assert float(plan.reserve_short_kw.max()) == pytest.approx(0.0, abs=1e-6)
    # Warm-up longer than the reserve window: the stopped genset is no reserve.
    slow = _reserve_site(warmup_s=1800.0)
    x = inputs(slow, other=[50.0] * 12, soc=[80.0])
    plan_slow = DispatchProblem(slow).solve(x, deadline_s=10)
    assert plan_slow.genset_on.any() or float(plan_slow.reserve_short_kw.max()) > 1.0
    assert plan_violations(slow, x, plan_slow) == []


@pytest.mark.parametrize("solver", ["HIGHS", "CLARABEL"])
def test_no_simultaneous_charge_and_discharge(solver: str) -> None:
    # A genset held on by its minimum up time at 45 kW minimum load, 5 kW of load, PV surplus and a
    # spill penalty: the LP would rather burn the surplus in the battery's losses (charge and
    # discharge at once) than spill it. The plan must not: its SoC follows its net power alone.
    T = 6
    site = SiteParams(steps_s=np.full(T, 900.0), pv=[PvParams("pv", 50.0)],
                      batteries=[BatteryParams("b", 400, 80, 80, 10, 95, 0.9, 0.9, 0.0, 0.0)],
                      gensets=[GensetParams("g", 150, 45, 1.0, 0.25, min_up_s=1e6)],
                      spill_penalty_per_kwh=2.0, solver=solver, **no_reserve())
    x = inputs(site, pv=[[30.0] * T], other=[5.0] * T, soc=[50.0], on=[True], state_s=[0.0])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.rung == "primary"
    b = site.batteries[0]
    net = plan.battery_kw[0]
    flow = np.where(net < 0, -net * b.eta_charge, -net / b.eta_discharge) * 900.0 / 3600.0
    soc_net_only = plan.soc_pct[0, 0] + 100.0 * np.cumsum(flow) / b.capacity_kwh
    np.testing.assert_allclose(plan.soc_pct[0, 1:], soc_net_only, atol=1e-3)
    assert plan_violations(site, x, plan) == []


@pytest.mark.parametrize("solver", ["HIGHS", "CLARABEL"])
def test_genset_and_battery_ramp_limits(solver: str) -> None:
    # 60 s steps; the load jumps from 10 to 100 kW at step 3. The genset (running) may move 30 kW a
    # step, the battery 12 kW a step: neither can follow the jump at once, so each ramps up ahead of
    # it (spilling the surplus) instead of sitting at the cheapest output until the jump.
    T = 8
    steps = np.full(T, 60.0)
    load = [10.0] * 3 + [100.0] * (T - 3)
    gen_site = SiteParams(steps_s=steps, gensets=[GensetParams("g", 150, 10, 1.0, 0.25, min_up_s=1e6, ramp_kw_per_s=0.5)],
                          solver=solver, **no_reserve())
    x = inputs(gen_site, other=load, on=[True], state_s=[1e6])
    plan = DispatchProblem(gen_site).solve(x, deadline_s=10)
    assert plan.rung == "primary"
    dg = np.diff(plan.genset_kw[0])
    assert np.all(np.abs(dg) <= 30.0 + 1e-3), dg
    assert float(plan.genset_kw[0, 2]) >= 70.0 - 1e-3  # ahead of the jump
    assert float(plan.unserved_kw.max()) == pytest.approx(0.0, abs=1e-3)
    assert float(plan.genset_kw[0, -1]) == pytest.approx(100.0, abs=1e-2)
    bat_site = SiteParams(steps_s=steps, batteries=[BatteryParams("b", 500, 100, 100, 10, 95, ramp_kw_per_s=0.2)],
                          solver=solver, **no_reserve())
    xb = inputs(bat_site, other=load, soc=[80.0])
    plan_b = DispatchProblem(bat_site).solve(xb, deadline_s=10)
    db = np.diff(plan_b.battery_kw[0])
    assert np.all(np.abs(db) <= 12.0 + 1e-3), db
    assert float(plan_b.battery_kw[0, 2]) >= 88.0 - 1e-3
