"""The grid in the optimizer: time-of-use prices, demand charge, zero export, islanding, and an
independent LP of the same problem (scipy linprog, written out here row by row)."""

from __future__ import annotations

import numpy as np
import pytest
from opt_sites import sparse_rows
from scipy.optimize import linprog

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    DispatchProblem,
    GpuClassParams,
    GridParams,
    PvParams,
    SiteParams,
)
from powerctl.optimizer.checks import plan_violations

SOLVERS = ["HIGHS", "CLARABEL"]


def grid_site(solver: str, T: int = 24, step_s: float = 3600.0, demand: float = 0.0,
              export_kw: float = 40.0, import_kw: float = 100.0, terminal: float = 0.08) -> SiteParams:
    """PV, one battery, one linear-value GPU class, a grid; no reserve (the LP below has none)."""
    return SiteParams(
        steps_s=np.full(T, step_s),
        pv=[PvParams("pv", 80.0)],
        batteries=[BatteryParams("b", 100.0, 50.0, 50.0, 10.0, 90.0, 0.95, 0.95, 0.01, terminal)],
        gpu_classes=[GpuClassParams("inf", 5.0, 30.0, np.array([5.0, 30.0]), np.array([0.0, 6.0]), 0.0)],
        grid=GridParams("grid", import_kw, export_kw, demand),
        facility_overhead=0.0, reserve_load_pct=0.0, reserve_pv_pct=0.0, solver=solver)


def grid_inputs(site: SiteParams, pv: np.ndarray | None = None, other: np.ndarray | None = None,
                imp_price: np.ndarray | None = None, exp_price: np.ndarray | None = None,
                soc: float = 50.0, gpu_kw: float = 30.0, **kw: object) -> DispatchInputs:
    T = site.horizon_steps
    return DispatchInputs(
        pv_forecast_kw=(np.zeros(T) if pv is None else pv)[None, :],
        gpu_demand_kw=np.full((1, T), gpu_kw), other_load_kw=np.full(T, 20.0) if other is None else other,
        soc_pct=np.array([soc]), genset_on=np.zeros(0, bool), genset_state_s=np.zeros(0),
        prev_gpu_kw=np.array([gpu_kw]), import_price_per_kwh=imp_price, export_price_per_kwh=exp_price,
        **kw)  # type: ignore[arg-type]


def solve(site: SiteParams, x: DispatchInputs) -> tuple[DispatchProblem, object]:
    prob = DispatchProblem(site)
    plan = prob.solve(x, deadline_s=10)
    assert plan.rung == "primary", plan.explain()
    assert plan_violations(site, x, plan) == []
    return prob, plan


@pytest.mark.parametrize("solver", SOLVERS)
def test_cheap_night_import_charges_the_battery_at_night(solver: str) -> None:
    site = grid_site(solver)
    price = np.where(np.arange(24) < 7, 0.05, 0.40)  # night 0-6 h cheap, day expensive
    x = grid_inputs(site, imp_price=price, soc=20.0)
    _prob, plan = solve(site, x)
    bat = plan.battery_kw[0]
    assert bat[:7].min() < -10.0, bat  # charges at night...
    assert np.all(bat[7:] >= -1e-6), bat  # ...never by day
    assert bat[7:].max() > 10.0  # and discharges by day instead of importing at 0.40
    # The night import carries the charge: more imported per night step than the load needs.
    assert plan.grid_import_kw[:7].mean() > 20.0 + 30.0 + 5.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_demand_charge_flattens_the_peak_import(solver: str) -> None:
    other = np.full(24, 20.0)
    other[10:13] = 80.0  # a three-hour load spike
    price = np.full(24, 0.10)
    peaks = {}
    for rate in (0.0, 10.0):
        # A terminal value above the price keeps the battery full unless the peak is worth cutting.
        site = grid_site(solver, demand=rate, terminal=0.15, import_kw=150.0)
        _prob, plan = solve(site, grid_inputs(site, other=other, imp_price=price, soc=90.0))
        peaks[rate] = float(plan.grid_import_kw.max())
        if rate > 0:
            assert plan.objective_terms["demand_charge"] == pytest.approx(rate * peaks[rate], rel=1e-5, abs=1e-6)
    assert peaks[0.0] == pytest.approx(80.0 + 30.0, abs=1e-3)
    assert peaks[10.0] < peaks[0.0] - 25.0, peaks
    # The peak so far is a floor: below it there is nothing to gain, so the plan flattens to it only.
    site = grid_site(solver, demand=10.0, terminal=0.15, import_kw=150.0)
    _prob, plan = solve(site, grid_inputs(site, other=other, imp_price=price, soc=90.0, peak_import_kw=95.0))
    assert plan.grid_import_kw.max() == pytest.approx(95.0, abs=1e-3)
    assert plan.objective_terms["demand_charge"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_export_exports_nothing_in_any_plan(solver: str) -> None:
    t = np.arange(24)
    pv = np.maximum(0.0, np.sin((t - 6) / 12 * np.pi)) * 80.0  # far above the 50 kW load at noon
    exp_price = np.full(24, 0.08)
    allowed = grid_site(solver, export_kw=40.0)
    _p, plan = solve(allowed, grid_inputs(allowed, pv=pv, imp_price=np.full(24, 0.3), exp_price=exp_price,
                                          soc=90.0))
    assert plan.grid_export_kw.max() > 5.0  # with export allowed the surplus goes out
    site = grid_site(solver, export_kw=0.0)
    x = grid_inputs(site, pv=pv, imp_price=np.full(24, 0.3), exp_price=exp_price, soc=90.0)
    prob, plan = solve(site, x)
    assert np.all(plan.grid_export_kw == 0.0)
    for rung in ("primary", "secondary", "rule"):  # every rung down the ladder
        prob.force_fail.add(rung)
        plan = prob.solve(x, deadline_s=10)
        assert np.all(plan.grid_export_kw == 0.0), plan.rung
        assert plan_violations(site, x, plan) == [], plan.rung
    assert plan.rung == "safe"


@pytest.mark.parametrize("solver", SOLVERS)
def test_islanded_is_the_same_model_with_limits_at_zero(solver: str) -> None:
    t = np.arange(24)
    pv = np.maximum(0.0, np.sin((t - 6) / 12 * np.pi)) * 80.0
    site = grid_site(solver)
    x = grid_inputs(site, pv=pv, imp_price=np.full(24, 0.1), grid_import_max_kw=np.zeros(24),
                    grid_export_max_kw=np.zeros(24))
    _p, plan = solve(site, x)
    assert np.all(plan.grid_import_kw == 0.0) and np.all(plan.grid_export_kw == 0.0)
    island = SiteParams(**{**site.__dict__, "grid": None})
    _p, ref = solve(island, grid_inputs(island, pv=pv))
    assert plan.objective == pytest.approx(ref.objective, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(plan.gpu_kw, ref.gpu_kw, atol=1e-4)


def test_export_priced_above_import_is_capped_and_never_simultaneous() -> None:
    site = grid_site("HIGHS")
    x = grid_inputs(site, imp_price=np.full(24, 0.10), exp_price=np.full(24, 0.20))
    _p, plan = solve(site, x)
    assert any("export price above import price" in n for n in plan.notes)
    assert not np.any((plan.grid_import_kw > 1e-6) & (plan.grid_export_kw > 1e-6))


# -- independent LP --------------------------------------------------------------------------

def lp_optimum(site: SiteParams, x: DispatchInputs) -> float:
    """The grid site's optimum by scipy linprog, assembled from the formulation in words."""
    T = site.horizon_steps
    dt = site.steps_s / 3600.0
    b, cl, gr = site.batteries[0], site.gpu_classes[0], site.grid
    assert gr is not None
    names = ["pv", "ch", "dis", "e", "imp", "exp", "uns", "gpu"]
    n = len(names) * T + 2  # + peak in the current billing period, peak in the next
    P_CUR, P_NEXT = n - 2, n - 1

    def ix(name: str, t: int) -> int:
        return names.index(name) * T + t

    c = np.zeros(n)
    lb, ub = np.zeros(n), np.full(n, np.inf)
    rows_ub: list[tuple[dict[int, float], float]] = []
    rows_eq: list[tuple[dict[int, float], float]] = []
    imp_price = np.maximum(np.asarray(x.import_price_per_kwh), 0.0)
    exp_price = np.minimum(np.asarray(x.export_price_per_kwh), imp_price)
    imp_max = np.minimum(gr.import_max_kw, x.grid_import_max_kw if x.grid_import_max_kw is not None else np.inf)
    in_period = np.ones(T, bool) if x.in_billing_period is None else np.asarray(x.in_billing_period)
    slope = float(np.diff(cl.value_per_h)[0] / np.diff(cl.value_breakpoints_kw)[0])
    for t in range(T):
        ub[ix("pv", t)] = x.pv_forecast_kw[0, t]
        ub[ix("ch", t)], ub[ix("dis", t)] = b.max_charge_kw, b.max_discharge_kw
        lb[ix("e", t)] = b.capacity_kwh * b.soc_min_pct / 100
        ub[ix("e", t)] = b.capacity_kwh * b.soc_max_pct / 100
        ub[ix("imp", t)], ub[ix("exp", t)] = imp_max[t], gr.export_max_kw
        lb[ix("gpu", t)] = cl.p_min_kw
        ub[ix("gpu", t)] = min(cl.p_max_kw, x.gpu_demand_kw[0, t])
        row = {ix("e", t): 1.0, ix("ch", t): -dt[t] * b.eta_charge, ix("dis", t): dt[t] / b.eta_discharge}
        if t > 0:
            row[ix("e", t - 1)] = -1.0
        rows_eq.append((row, b.capacity_kwh * x.soc_pct[0] / 100 if t == 0 else 0.0))
        # load <= pv + dis - ch + imp - exp + unserved
        rows_ub.append(({ix("pv", t): -1, ix("dis", t): -1, ix("ch", t): 1, ix("imp", t): -1, ix("exp", t): 1,
                         ix("uns", t): -1, ix("gpu", t): 1 + site.facility_overhead}, -x.other_load_kw[t]))
        # imp_t <= the peak of its billing period
        rows_ub.append(({ix("imp", t): 1.0, (P_CUR if in_period[t] else P_NEXT): -1.0}, 0.0))
        c[ix("ch", t)] += b.wear_cost_per_kwh * dt[t]
        c[ix("dis", t)] += b.wear_cost_per_kwh * dt[t]
        c[ix("imp", t)] += imp_price[t] * dt[t]
        c[ix("exp", t)] -= exp_price[t] * dt[t]
        c[ix("uns", t)] += site.unserved_penalty_per_kwh * dt[t]
        c[ix("gpu", t)] -= slope * dt[t]
    c[ix("e", T - 1)] -= b.terminal_value_per_kwh
    lb[P_CUR] = x.peak_import_kw
    rate_cur = gr.demand_charge_per_kw if x.demand_charge_per_kw is None else x.demand_charge_per_kw
    rate_next = gr.demand_charge_per_kw if x.demand_charge_next_per_kw is None else x.demand_charge_next_per_kw
    c[P_CUR], c[P_NEXT] = rate_cur, rate_next
    const = -rate_cur * x.peak_import_kw + slope * cl.p_min_kw * float(dt.sum())

    Aub, bub = sparse_rows(rows_ub, n)
    Aeq, beq = sparse_rows(rows_eq, n)
    res = linprog(c, A_ub=Aub, b_ub=bub, A_eq=Aeq, b_eq=beq, bounds=np.column_stack([lb, ub]), method="highs")
    assert res.status == 0, res.message
    return float(res.fun + const)


@pytest.mark.parametrize("solver", SOLVERS)
def test_objective_matches_an_independent_linprog(solver: str) -> None:
    T = 48
    site = grid_site(solver, T=T, step_s=1800.0, demand=8.0, export_kw=30.0)
    prob = DispatchProblem(site)
    rng = np.random.default_rng(7)
    t_h = np.arange(T) * 0.5
    pv = np.maximum(0.0, np.sin((t_h - 6) / 12 * np.pi)) * 90.0
    # One compiled problem re-solved warm for several price draws (prices move the cost vector).
    for k in range(4):
        imp = np.where((t_h % 24 >= 17) & (t_h % 24 < 21), 0.45, 0.12) + rng.uniform(0, 0.05, T)
        exp = rng.uniform(-0.05, 0.10, T)  # negative export prices too
        lim = np.full(T, 100.0)
        lim[30:33] = 0.0  # an outage: no import for 1.5 h
        in_period = np.arange(T) < 20 + 5 * k  # the billing period ends inside the horizon
        x = grid_inputs(site, pv=pv, other=15.0 + 10.0 * rng.uniform(size=T), imp_price=imp, exp_price=exp,
                        soc=30.0 + 10 * k, grid_import_max_kw=lim, in_billing_period=in_period,
                        peak_import_kw=20.0 + 5 * k,
                        # pro-rata rates on two of the draws (None: the site's full rate)
                        demand_charge_per_kw=None if k % 2 == 0 else 0.5 * k,
                        demand_charge_next_per_kw=None if k % 2 == 0 else 0.2)
        plan = prob.solve(x, deadline_s=10)
        assert plan.rung == "primary", plan.explain()
        assert plan_violations(site, x, plan) == []
        assert np.all(plan.grid_import_kw[30:33] == 0.0)
        expected = lp_optimum(site, x)
        assert abs(plan.objective - expected) <= 1e-6 * max(1.0, abs(expected)), (k, plan.objective, expected)
