"""Exact genset commitment (optimizer.milp) against an independent MILP written here with
scipy.optimize.milp: a week with a PV surplus every day, where the genset should stop on sunny days
(which the enumeration's candidate schedules cannot express)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import scipy.sparse as sp
from opt_sites import inputs, no_reserve
from scipy.optimize import Bounds, LinearConstraint, milp

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    DispatchProblem,
    GensetParams,
    PvParams,
    SiteParams,
)
from powerctl.optimizer.checks import plan_violations
from powerctl.optimizer.milp import CoarseMilp, coarse_blocks, coarse_inputs

T = 168
DT_H = 1.0
LOAD_KW = 40.0
GAP = 2e-3


def week_site(commitment: str = "milp") -> SiteParams:
    return SiteParams(
        steps_s=np.full(T, 3600.0 * DT_H), pv=[PvParams("pv", 200.0)],
        batteries=[BatteryParams("b", 300.0, 80.0, 80.0, 10.0, 95.0, 0.95, 0.95, 0.02, 0.05)],
        gensets=[GensetParams("g", 100.0, 30.0, 2.0, 0.25, fuel_price_per_l=1.2, start_cost=5.0,
                              min_up_s=3 * 3600.0, min_down_s=2 * 3600.0, warmup_s=0.0)],
        commitment=commitment, milp_gap=GAP, milp_time_limit_s=60.0, solver="HIGHS", **no_reserve())


def week_pv_kw() -> np.ndarray:
    h = np.arange(T) % 24 + 0.5
    # Every day sunny enough for a surplus at noon, the peak varying from day to day.
    peak = np.repeat([160.0, 120.0, 180.0, 140.0, 170.0, 130.0, 150.0], 24)
    return np.maximum(0.0, np.sin((h - 6.0) / 12.0 * np.pi)) * peak


def independent_milp(site: SiteParams, pv_kw: np.ndarray, soc0_pct: float, on0: bool) -> float:
    """The same dispatch written out by hand: columns per step pv, ch, dis, e, g, u, s, z, unserved."""
    b, g = site.batteries[0], site.gensets[0]
    names = ["pv", "ch", "dis", "e", "g", "u", "s", "z", "uns"]
    col = {n: np.arange(T) + k * T for k, n in enumerate(names)}
    n = len(names) * T
    c = np.zeros(n)
    price = g.fuel_price_per_l
    c[col["g"]] = price * g.f1_l_per_kwh * DT_H
    c[col["u"]] = price * g.f0_l_per_h * DT_H
    c[col["s"]] = g.start_cost
    c[col["ch"]] = c[col["dis"]] = b.wear_cost_per_kwh * DT_H
    c[col["uns"]] = site.unserved_penalty_per_kwh * DT_H
    c[col["e"][-1]] = -b.terminal_value_per_kwh
    lo, hi = np.zeros(n), np.full(n, np.inf)
    hi[col["pv"]] = pv_kw
    hi[col["ch"]], hi[col["dis"]] = b.max_charge_kw, b.max_discharge_kw
    lo[col["e"]], hi[col["e"]] = b.capacity_kwh * b.soc_min_pct / 100, b.capacity_kwh * b.soc_max_pct / 100
    hi[col["u"]] = hi[col["s"]] = hi[col["z"]] = 1.0
    rows: list[tuple[dict[int, float], float, float]] = []
    e0 = b.capacity_kwh * soc0_pct / 100
    up_steps, down_steps = round(g.min_up_s / 3600 / DT_H), round(g.min_down_s / 3600 / DT_H)
    for t in range(T):
        p = {k: col[k][t] for k in names}
        # energy: e_t - e_{t-1} - dt (eta_c ch - dis / eta_d) = 0
        r = {p["e"]: 1.0, p["ch"]: -DT_H * b.eta_charge, p["dis"]: DT_H / b.eta_discharge}
        if t:
            r[col["e"][t - 1]] = -1.0
        rows.append((r, e0 if t == 0 else 0.0, e0 if t == 0 else 0.0))
        rows.append(({p["pv"]: 1, p["dis"]: 1, p["ch"]: -1, p["g"]: 1, p["uns"]: 1}, LOAD_KW, np.inf))
        rows.append(({p["g"]: 1, p["u"]: -g.rating_kw}, -np.inf, 0.0))
        rows.append(({p["g"]: 1, p["u"]: -g.min_load_kw}, 0.0, np.inf))
        prev = {} if t == 0 else {col["u"][t - 1]: -1.0}
        rows.append(({p["s"]: 1, p["u"]: -1, **{k: -v for k, v in prev.items()}}, -float(on0) if t == 0 else 0.0, np.inf))
        rows.append(({p["z"]: 1, p["u"]: 1, **prev}, float(on0) if t == 0 else 0.0, np.inf))
        rows.append(({**{col["s"][k]: 1.0 for k in range(max(0, t - up_steps + 1), t + 1)}, p["u"]: -1.0}, -np.inf, 0.0))
        rows.append(({**{col["z"][k]: 1.0 for k in range(max(0, t - down_steps + 1), t + 1)}, p["u"]: 1.0}, -np.inf, 1.0))
    r_i = [i for i, (r, _, _) in enumerate(rows) for _ in r]
    c_i = [k for r, _, _ in rows for k in r]
    vals = [v for r, _, _ in rows for v in r.values()]
    A = sp.csr_matrix((vals, (r_i, c_i)), shape=(len(rows), n))
    integ = np.zeros(n)
    integ[col["u"]] = 1
    res = milp(c, constraints=LinearConstraint(A, [lo_ for _, lo_, _ in rows], [hi_ for _, _, hi_ in rows]),
               integrality=integ, bounds=Bounds(lo, hi), options={"mip_rel_gap": GAP, "time_limit": 300})
    assert res.status == 0, res.message
    return float(res.fun)


def test_milp_matches_an_independent_milp_and_stops_the_genset_on_sunny_days() -> None:
    site = week_site()
    pv = week_pv_kw()
    x = inputs(site, pv=[list(pv)], other=[LOAD_KW] * T, soc=[50.0], on=[True], state_s=[1e6])
    problem = DispatchProblem(site)
    plan = problem.solve(x, deadline_s=120.0)
    assert plan.rung == "primary" and plan.commitment == "milp", plan.explain()
    assert plan.mip_gap <= GAP
    assert plan_violations(site, x, plan) == []
    ref = independent_milp(site, pv, 50.0, True)
    # Both to the solver's gap: each is within GAP of the true optimum, so within 2 GAP of each other.
    assert plan.objective == pytest.approx(ref, rel=2 * GAP)
    on = plan.genset_on[0]
    for day in range(7):
        noon = on[day * 24 + 10:day * 24 + 15]
        assert not noon.all(), f"day {day}: the genset runs through the sunny hours"
    starts = int(np.sum(on[1:] & ~on[:-1]))
    assert starts >= 6  # stopped each sunny day and started again for the night
    # The enumeration cannot express that: its plan costs more (the MILP is the better schedule).
    enum = DispatchProblem(dataclasses.replace(site, commitment="enumeration")).solve(x, deadline_s=120.0)
    assert enum.commitment == "enumeration"
    assert enum.objective > plan.objective + 1.0


def test_milp_failure_falls_back_to_the_enumeration_and_says_why() -> None:
    site = week_site()
    x = inputs(site, pv=[list(week_pv_kw())], other=[LOAD_KW] * T, soc=[50.0], on=[True], state_s=[1e6])
    problem = DispatchProblem(site)
    problem.force_fail.add("milp")
    plan = problem.solve(x, deadline_s=120.0)
    assert plan.rung == "primary" and plan.commitment == "enumeration"
    assert any(n.startswith("milp (HIGHS)") and "enumeration" in n for n in plan.notes), plan.notes
    assert problem.commitment_counts == {"enumeration": 1}


def test_coarse_blocks_merge_steps_to_5_min_then_hours() -> None:
    five_min = coarse_blocks(np.full(288, 300.0), 3600.0)
    assert five_min[-1] + 1 == 12 + 23 and np.all(np.diff(five_min) >= 0)
    demo = coarse_blocks(np.concatenate((np.full(60, 60.0), np.full(92, 900.0))), 3600.0)
    assert demo[-1] + 1 == 12 + 23 and np.all(np.bincount(demo[:60]) == 5)
    hourly = coarse_blocks(np.full(T, 3600.0), 3600.0)
    assert np.array_equal(hourly, np.arange(T))  # every step is a block: the exact MILP


def test_coarse_milp_stops_the_genset_on_sunny_days_on_15_min_steps() -> None:
    """Two days on 15-minute steps: the MILP decides per hour (after the first), the plan is priced
    on the 15-minute steps, the genset still stops each sunny day and the plan beats the enumeration."""
    n = 2 * 96
    site = dataclasses.replace(week_site(), steps_s=np.full(n, 900.0), milp_time_limit_s=30.0)
    pv = np.repeat(week_pv_kw()[:48], 4)
    x = inputs(site, pv=[list(pv)], other=[LOAD_KW] * n, soc=[50.0], on=[True], state_s=[1e6])
    problem = DispatchProblem(site)
    assert isinstance(problem.milp, CoarseMilp)
    plan = problem.solve(x, deadline_s=120.0)
    assert plan.rung == "primary" and plan.commitment == "milp", plan.explain()
    assert plan_violations(site, x, plan) == []
    on = plan.genset_on[0]
    for day in range(2):
        assert not on[day * 96 + 40:day * 96 + 60].all(), f"day {day}: the genset runs through the sunny hours"
    # switches only where a block starts
    starts_at = problem.milp.block
    switch = np.flatnonzero(on[1:] != on[:-1]) + 1
    assert np.all(starts_at[switch] != starts_at[switch - 1])
    # the inputs on the blocks keep the PV energy
    xc = coarse_inputs(x, problem.milp.block, site.steps_s)
    assert float((xc.pv_forecast_kw @ problem.milp.p.steps_s)[0]) == pytest.approx(float(pv @ site.steps_s))
    enum = DispatchProblem(dataclasses.replace(site, commitment="enumeration")).solve(x, deadline_s=120.0)
    assert enum.objective > plan.objective + 1.0


def test_a_milp_solve_depends_only_on_its_inputs_and_keeps_its_warm_start() -> None:
    """The same inputs and warm start give the same search after any number of other solves. HiGHS's
    clock runs over an instance's life and the LP completing a warm start gets the time limit less
    that clock, so on a reused instance the warm start was dropped once the solves had run longer
    than the limit (the search then differed); every solve now has its own instance."""
    n = 96
    limit_s = 1.0
    site = dataclasses.replace(week_site(), steps_s=np.full(n, 900.0), milp_time_limit_s=limit_s, milp_gap=1e-3)
    pv = np.repeat(week_pv_kw()[:24], 4)
    problem = DispatchProblem(site)
    milp_c = problem.milp
    assert isinstance(milp_c, CoarseMilp)

    def x_at(load_kw: float) -> DispatchInputs:
        return inputs(site, pv=[list(pv)], other=[load_kw] * n, soc=[50.0], on=[True], state_s=[1e6])

    first_cold = milp_c.solve(None, x_at(LOAD_KW), limit_s, 1e-3)  # type: ignore[arg-type]
    warm = first_cold.sched.on
    first = milp_c.solve(None, x_at(LOAD_KW), limit_s, 1e-3, warm=warm)  # type: ignore[arg-type]
    spent_s, k = 0.0, 0
    while spent_s < 1.5 * limit_s:  # more solving than the limit, whatever this machine's speed
        t = time.perf_counter()
        milp_c.solve(None, x_at(LOAD_KW + 5.0 + k % 7), limit_s, 1e-3, warm=warm)  # type: ignore[arg-type]
        spent_s += time.perf_counter() - t
        k += 1
    again = milp_c.solve(None, x_at(LOAD_KW), limit_s, 1e-3, warm=warm)  # type: ignore[arg-type]
    assert first.status == again.status == "optimal"
    assert np.array_equal(first.sched.on, again.sched.on)
    assert again.nodes == first.nodes and again.objective == pytest.approx(first.objective, rel=1e-9)
