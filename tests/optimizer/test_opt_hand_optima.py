"""Hand-checkable optima: each scenario is small enough to solve on paper (numbers in comments)."""

from __future__ import annotations

import numpy as np
import pytest
from opt_sites import inputs, no_reserve

from powerctl.optimizer import (
    BatteryParams,
    DispatchProblem,
    GensetParams,
    GpuClassParams,
    PvParams,
    SiteParams,
)
from powerctl.optimizer.checks import plan_violations

SOLVERS = ["CLARABEL", "HIGHS", "OSQP"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_battery_shifts_pv_to_the_evening(solver: str) -> None:
    # Two 1-h steps. PV 10 kW then 0; load 5 kW both. Battery 100 kWh at its 10 % floor, eta 0.9/0.9.
    # Best: charge the 5 kW PV surplus (stores 4.5 kWh), discharge 4.5 * 0.9 = 4.05 kW in step 2,
    # 0.95 kW unserved. Cost = 50 * 0.95 = 47.5 (no wear, no terminal value).
    site = SiteParams(steps_s=np.array([3600.0, 3600.0]), pv=[PvParams("pv", 20.0)],
                      batteries=[BatteryParams("b", 100, 50, 50, 10, 90, 0.9, 0.9, 0.0, 0.0)],
                      solver=solver, **no_reserve())
    x = inputs(site, pv=[[10.0, 0.0]], other=[5.0, 5.0], soc=[10.0])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.rung == "primary" and plan.solver == solver
    np.testing.assert_allclose(plan.battery_kw[0], [-5.0, 4.05], atol=2e-3)
    np.testing.assert_allclose(plan.soc_pct[0], [10.0, 14.5, 10.0], atol=2e-3)
    np.testing.assert_allclose(plan.unserved_kw, [0.0, 0.95], atol=2e-3)
    assert plan.objective == pytest.approx(47.5, rel=1e-4)
    [slack] = plan.slack
    assert slack.constraint == "power_balance.unserved_load" and slack.steps == [1]
    assert slack.energy_kwh == pytest.approx(0.95, abs=2e-3)
    assert plan_violations(site, x, plan) == []


@pytest.mark.parametrize("solver", SOLVERS)
def test_genset_runs_at_min_load_and_spills(solver: str) -> None:
    # One 1-h step, 20 kW load, no PV or battery. The genset (on for long) may stop, but then 20 kW
    # go unserved (cost 1000). Running costs 1.2 * (1.6 + 0.25 * 45) = 15.42 at its 45 kW minimum,
    # and the 25 kW above the load are spilled (free here) and reported.
    site = SiteParams(steps_s=np.array([3600.0]), gensets=[GensetParams("g", 150, 45, 1.6, 0.25, 1.2, 5.0)],
                      solver=solver, **no_reserve())
    x = inputs(site, other=[20.0], on=[True], state_s=[1e5])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.genset_on[0, 0]
    assert plan.genset_kw[0, 0] == pytest.approx(45.0, abs=1e-3)
    assert plan.spill_kw[0] == pytest.approx(25.0, abs=1e-3)
    assert plan.objective == pytest.approx(1.2 * (1.6 + 0.25 * 45), rel=1e-5)
    assert plan.objective_terms["fuel_idle"] == pytest.approx(1.92)
    assert [s.constraint for s in plan.slack] == ["power_balance.spill"]


def test_genset_is_started_when_needed_and_warms_up_first() -> None:
    # Off for long, 20 kW load over four 15-min steps, an 18 kW genset: start at once (cost 5 + fuel)
    # beats 50/kWh unserved. Powers are step averages: the 60 s warm-up leaves 14/15 of the first
    # step, so it averages at most 18 * 14/15 = 16.8 kW there (3.2 kW unserved), then 18 (2 unserved).
    site = SiteParams(steps_s=np.full(4, 900.0),
                      gensets=[GensetParams("g", 18, 10, 1.6, 0.25, 1.2, 5.0, 900, 600, 60)], **no_reserve())
    x = inputs(site, other=[20.0] * 4, on=[False], state_s=[1e5])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.genset_on[0].all()
    assert plan.objective_terms["start_cost"] == pytest.approx(5.0)
    np.testing.assert_allclose(plan.unserved_kw, [3.2, 2, 2, 2], atol=1e-3)
    np.testing.assert_allclose(plan.genset_kw[0], [16.8, 18, 18, 18], atol=1e-3)


def test_min_down_time_delays_a_start() -> None:
    # Stopped 300 s ago, min down 600 s: with 5-min steps the earliest start is step 1.
    site = SiteParams(steps_s=np.full(4, 300.0),
                      gensets=[GensetParams("g", 150, 10, 1.6, 0.25, 1.2, 5.0, 900, 600, 0)], **no_reserve())
    x = inputs(site, other=[20.0] * 4, on=[False], state_s=[300.0])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    np.testing.assert_array_equal(plan.genset_on[0], [False, True, True, True])
    assert plan.unserved_kw[0] == pytest.approx(20.0, abs=1e-3)
    assert plan_violations(site, x, plan) == []


def test_gpu_budget_follows_pv() -> None:
    # No storage. Linear value 1/kWh up to 30 kW, overhead 10 %, 2 kW other load. Unserved costs 50,
    # so compute gets exactly what PV leaves: gpu = clip((pv - 2) / 1.1, 0, 30).
    pv = np.array([0.0, 5.0, 20.0, 40.0])
    site = SiteParams(steps_s=np.full(4, 600.0), pv=[PvParams("pv", 50)],
                      gpu_classes=[GpuClassParams("c", 0.0, 30.0, np.array([0.0, 30.0]), np.array([0.0, 30.0]),
                                                  ramp_penalty_per_kw=0.0)],
                      **no_reserve(facility_overhead=0.1, spill_penalty_per_kwh=0.01))
    x = inputs(site, pv=[pv.tolist()], other=[2.0] * 4)
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    np.testing.assert_allclose(plan.gpu_kw[0], np.clip((pv - 2) / 1.1, 0, 30), atol=1e-3)
    np.testing.assert_allclose(plan.unserved_kw, [2.0, 0, 0, 0], atol=1e-3)
    # Step 3 has 40 kW PV but compute is full at 30 kW: 40 - 2 - 33 = 5 kW curtailed (spill is priced).
    assert plan.pv_kw[0, 3] == pytest.approx(35.0, abs=1e-3)
    assert plan.spill_kw[3] == pytest.approx(0.0, abs=1e-3)


def test_concave_value_splits_budget_by_marginal_value() -> None:
    # 10 kW of PV for two classes. A: 2/kWh up to 4 kW then 0.5/kWh; B: 1/kWh flat. Optimum:
    # A's first 4 kW (2), then B's (1) for the remaining 6 kW, A stays at 4.
    site = SiteParams(steps_s=np.array([3600.0]), pv=[PvParams("pv", 20)],
                      gpu_classes=[GpuClassParams("A", 0, 10, np.array([0, 4, 10.0]), np.array([0, 8, 11.0]), 0.0),
                                   GpuClassParams("B", 0, 10, np.array([0, 10.0]), np.array([0, 10.0]), 0.0)],
                      **no_reserve())
    plan = DispatchProblem(site).solve(inputs(site, pv=[[10.0]]), deadline_s=10)
    np.testing.assert_allclose(plan.gpu_kw[:, 0], [4.0, 6.0], atol=1e-3)
    assert plan.objective_terms["value_of_compute"] == pytest.approx(14.0, rel=1e-5)


def test_reserve_shortfall_is_reported_as_named_slack() -> None:
    # One step, PV 10 kW, load 8 kW, no battery or genset: reserve = 10 % of 8 + 25 % of the 8 kW PV
    # used = 2.8 kW, nothing can provide it -> slack "operating_reserve" of 2.8 kW.
    site = SiteParams(steps_s=np.array([3600.0]), pv=[PvParams("pv", 20)], facility_overhead=0.0)
    x = inputs(site, pv=[[10.0]], other=[8.0])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.pv_kw[0, 0] == pytest.approx(8.0, abs=1e-3)
    [s] = plan.slack
    assert s.constraint == "operating_reserve" and s.steps == [0]
    assert s.max_kw == pytest.approx(2.8, abs=1e-3)
    assert plan.objective_terms["reserve_penalty"] == pytest.approx(5.0 * 2.8, rel=1e-4)
    assert "operating_reserve: step 0" in plan.explain()


def test_stale_forecast_extra_reserve_is_met_by_the_battery() -> None:
    # Extra reserve of 30 kW must come from the battery's discharge headroom: with 100 kW max it can,
    # and the reserve needs no slack; with 20 kW max discharge 10 kW remain short.
    for dmax, short in ((100.0, 0.0), (20.0, 10.0)):
        site = SiteParams(steps_s=np.array([600.0]), batteries=[BatteryParams("b", 100, 50, dmax)],
                          **no_reserve())
        x = inputs(site, soc=[80.0])
        x.reserve_extra_kw = np.array([30.0])
        plan = DispatchProblem(site).solve(x, deadline_s=10)
        assert plan.reserve_short_kw[0] == pytest.approx(short, abs=1e-3)


@pytest.mark.parametrize("solver", ["HIGHS", "CLARABEL"])
def test_running_genset_stops_while_pv_covers_the_load_and_restarts(solver: str) -> None:
    # Twelve 1-h steps, 40 kW load, no battery. PV gives 60 kW in steps 3..8 (a = 3, b = 9
    # exclusive) and nothing outside, where the genset (running for long) must carry the load.
    # Staying on costs 6 * 1.2 * (1.6 + 0.25 * 40) + 6 * 1.2 * (1.6 + 0.25 * 30) = 149.04 (min load
    # 30 kW at noon, PV curtailed); stopping at 3 and restarting at 9 costs 6 * 13.92 + 5 = 88.52.
    # "Stop now" alone cannot carry the evening, so only an off-window finds it.
    site = SiteParams(steps_s=np.full(12, 3600.0), pv=[PvParams("pv", 100.0)],
                      gensets=[GensetParams("g", 100, 30, 1.6, 0.25, 1.2, 5.0, 3600, 3600, 0)],
                      solver=solver, **no_reserve())
    pv = [0.0] * 3 + [60.0] * 6 + [0.0] * 3
    x = inputs(site, pv=[pv], other=[40.0] * 12, on=[True], state_s=[1e5])
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    on = plan.genset_on[0]
    k_stop = int(np.argmin(on))
    k_restart = k_stop + int(np.argmax(on[k_stop:]))
    assert not on.all() and 3 <= k_stop < 9 and k_stop < k_restart <= 9 and on[k_restart:].all()
    np.testing.assert_array_equal(on, [True] * 3 + [False] * 6 + [True] * 3)
    assert plan.objective == pytest.approx(88.52, rel=1e-5)
    np.testing.assert_allclose(plan.unserved_kw, 0.0, atol=1e-3)
    assert plan_violations(site, x, plan) == []
