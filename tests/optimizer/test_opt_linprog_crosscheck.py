"""Independent check: the same scenario written out by hand as a plain LP for scipy's HiGHS.

Nothing here uses cvxpy or optimizer.model: the LP is assembled row by row from the formulation in
words (optimizer.model docstring), so a modelling slip in either would show as a different optimum.
"""

from __future__ import annotations

import numpy as np
import pytest
from opt_sites import sparse_rows
from scipy.optimize import linprog

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    DispatchProblem,
    GensetParams,
    GpuClassParams,
    PvParams,
    SiteParams,
)
from powerctl.optimizer.model import value_segments


def scenario(solver: str) -> tuple[SiteParams, DispatchInputs]:
    steps = np.array([600.0] * 6 + [1800.0] * 6)  # variable step lengths
    T = steps.size
    t_h = np.cumsum(steps) / 3600.0
    site = SiteParams(
        steps_s=steps,
        pv=[PvParams("pv", 60.0)],
        batteries=[BatteryParams("b", 40, 20, 25, 10, 90, 0.95, 0.9, 0.02, 0.08)],
        # On for long and a minimum up time beyond the horizon: the commitment is "stay on".
        gensets=[GensetParams("g", 30, 8, 1.6, 0.25, 1.2, 5.0, min_up_s=1e9, min_down_s=600, warmup_s=60)],
        gpu_classes=[GpuClassParams("inf", 2.0, 20.0, np.array([0.0, 8, 14, 20]), np.array([0.0, 8, 11, 12.5]), 0.01),
                     GpuClassParams("bat", 0.0, 15.0, np.array([0.0, 10, 15]), np.array([0.0, 4, 5]), 0.002)],
        facility_overhead=0.08, reserve_load_pct=10, reserve_pv_pct=25, reserve_duration_s=900,
        unserved_penalty_per_kwh=50, spill_penalty_per_kwh=0.01, reserve_penalty_per_kwh=5, solver=solver)
    x = DispatchInputs(
        pv_forecast_kw=(np.maximum(0, np.sin(t_h / 4 * np.pi)) * 50)[None, :],
        gpu_demand_kw=np.vstack([np.full(T, 18.0), np.linspace(15, 5, T)]),
        other_load_kw=np.full(T, 4.0), soc_pct=np.array([40.0]), genset_on=np.array([True]),
        genset_state_s=np.array([7200.0]), prev_gpu_kw=np.array([10.0, 3.0]),
        reserve_extra_kw=np.linspace(0, 3, T))
    return site, x


def lp_optimum(site: SiteParams, x: DispatchInputs) -> float:
    """Total cost of the scenario by scipy linprog (HiGHS), including fixed genset costs."""
    steps = site.steps_s
    T = steps.size
    dt = steps / 3600.0
    b, g = site.batteries[0], site.gensets[0]
    cls = site.gpu_classes
    names = ["pv", "ch", "dis", "e", "g", "uns", "short"] + [f"{k}{j}" for j in range(len(cls)) for k in ("gpu", "v", "r")]
    col = {n: i * T for i, n in enumerate(names)}
    n = len(names) * T
    c = np.zeros(n)
    lb, ub = np.zeros(n), np.full(n, np.inf)
    A_ub: list[tuple[dict[int, float], float]] = []
    A_eq: list[tuple[dict[int, float], float]] = []

    def ix(name: str, t: int) -> int:
        return col[name] + t

    oh = 1 + site.facility_overhead
    e_min, e_max = b.capacity_kwh * b.soc_min_pct / 100, b.capacity_kwh * b.soc_max_pct / 100
    k_res = b.eta_discharge / (site.reserve_duration_s / 3600)
    const = 0.0
    for t in range(T):
        ub[ix("pv", t)] = x.pv_forecast_kw[0, t]
        ub[ix("ch", t)], ub[ix("dis", t)] = b.max_charge_kw, b.max_discharge_kw
        lb[ix("e", t)], ub[ix("e", t)] = e_min, e_max
        lb[ix("g", t)], ub[ix("g", t)] = g.min_load_kw, g.rating_kw
        lb[ix("short", t)] = 0.0
        # SoC dynamics.
        row = {ix("e", t): 1.0, ix("ch", t): -dt[t] * b.eta_charge, ix("dis", t): dt[t] / b.eta_discharge}
        rhs = b.capacity_kwh * x.soc_pct[0] / 100 if t == 0 else 0.0
        if t > 0:
            row[ix("e", t - 1)] = -1.0
        A_eq.append((row, rhs))
        # Costs.
        c[ix("g", t)] += g.fuel_price_per_l * g.f1_l_per_kwh * dt[t]
        const += g.fuel_price_per_l * g.f0_l_per_h * dt[t]
        c[ix("ch", t)] += b.wear_cost_per_kwh * dt[t]
        c[ix("dis", t)] += b.wear_cost_per_kwh * dt[t]
        c[ix("uns", t)] += site.unserved_penalty_per_kwh * dt[t]
        c[ix("short", t)] += site.reserve_penalty_per_kwh * dt[t]
        # Spill = supply + unserved - load, priced.
        sp_pen = site.spill_penalty_per_kwh * dt[t]
        for k, s in (("pv", 1), ("dis", 1), ("ch", -1), ("g", 1), ("uns", 1)):
            c[ix(k, t)] += s * sp_pen
        const -= sp_pen * x.other_load_kw[t]
        # Balance: load - supply - unserved <= 0.
        row = {ix("pv", t): -1.0, ix("dis", t): -1.0, ix("ch", t): 1.0, ix("g", t): -1.0, ix("uns", t): -1.0}
        for j in range(len(cls)):
            row[ix(f"gpu{j}", t)] = oh
            c[ix(f"gpu{j}", t)] -= sp_pen * oh
        A_ub.append((row, -x.other_load_kw[t]))
        # Reserve: need - genset headroom - min(battery power, energy) - short <= 0, as two rows.
        need_const = site.reserve_load_pct / 100 * x.other_load_kw[t] + x.reserve_extra_kw[t] - g.rating_kw
        base = {ix("pv", t): site.reserve_pv_pct / 100, ix("g", t): 1.0, ix("short", t): -1.0}
        for j in range(len(cls)):
            base[ix(f"gpu{j}", t)] = site.reserve_load_pct / 100 * oh
        r1 = dict(base)
        r1[ix("dis", t)] = r1.get(ix("dis", t), 0) + 1.0
        r1[ix("ch", t)] = r1.get(ix("ch", t), 0) - 1.0
        A_ub.append((r1, -need_const + b.max_discharge_kw))
        r2 = dict(base)
        r2[ix("e", t)] = -k_res
        A_ub.append((r2, -need_const - k_res * e_min))
        for j, cl in enumerate(cls):
            lb[ix(f"gpu{j}", t)] = cl.p_min_kw
            ub[ix(f"gpu{j}", t)] = float(np.clip(x.gpu_demand_kw[j, t], cl.p_min_kw, cl.p_max_kw))
            lb[ix(f"v{j}", t)] = -np.inf
            c[ix(f"v{j}", t)] -= dt[t]
            slopes, icpts = value_segments(cl.value_breakpoints_kw, cl.value_per_h)
            for s_, i_ in zip(slopes, icpts, strict=True):
                A_ub.append(({ix(f"v{j}", t): 1.0, ix(f"gpu{j}", t): -s_}, i_))
            c[ix(f"r{j}", t)] += cl.ramp_penalty_per_kw
            prev_const = x.prev_gpu_kw[j] if t == 0 else 0.0
            for sign in (1.0, -1.0):
                row = {ix(f"r{j}", t): -1.0, ix(f"gpu{j}", t): sign}
                if t > 0:
                    row[ix(f"gpu{j}", t - 1)] = -sign
                A_ub.append((row, sign * prev_const))
    c[ix("e", T - 1)] -= b.terminal_value_per_kwh

    Aub, bub = sparse_rows(A_ub, n)
    Aeq, beq = sparse_rows(A_eq, n)
    res = linprog(c, A_ub=Aub, b_ub=bub, A_eq=Aeq, b_eq=beq, bounds=np.column_stack([lb, ub]), method="highs")
    assert res.status == 0, res.message
    return float(res.fun + const)


@pytest.mark.parametrize("solver", ["CLARABEL", "HIGHS"])
def test_optimum_matches_scipy_linprog_highs(solver: str) -> None:
    site, x = scenario(solver)
    plan = DispatchProblem(site).solve(x, deadline_s=10)
    assert plan.rung == "primary"
    assert plan.genset_on.all()
    expected = lp_optimum(site, x)
    assert plan.objective == pytest.approx(expected, rel=1e-3)
    # Tighter than the 0.1 % the issue asks for: both are exact LP optima.
    assert abs(plan.objective - expected) <= 1e-5 * max(1.0, abs(expected))
