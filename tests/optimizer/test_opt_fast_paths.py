"""The speed-ups must not change answers: candidate pruning, the two model forms, AUTO, vectorised helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from opt_sites import demo_inputs, demo_site

from powerctl.optimizer import DispatchInputs, DispatchProblem, GensetParams, SiteParams
from powerctl.optimizer.commitment import (
    available_fraction,
    stay_schedule,
    switch_steps,
    switched,
    window_steps,
)
from powerctl.optimizer.highs_lp import HighsLp, LpRows, Prices
from powerctl.optimizer.model import segments_on
from powerctl.optimizer.solution import param_values, pwl_value_per_h


def rolling(site: SiteParams, n: int, seed: int = 0) -> list[DispatchInputs]:
    """n input sets: the demo day shifted by one step each, with fresh noise (a rolling horizon)."""
    rng = np.random.default_rng(seed)
    base = demo_inputs(site, seed=seed)
    out = []
    for k in range(n):
        pv = np.roll(base.pv_forecast_kw, -k, axis=1) * rng.uniform(0.7, 1.0, base.pv_forecast_kw.shape)
        gpu = np.clip(base.gpu_demand_kw - rng.uniform(0, 8, base.gpu_demand_kw.shape), 0, None)
        out.append(dataclasses.replace(base, pv_forecast_kw=pv, gpu_demand_kw=gpu,
                                       other_load_kw=base.other_load_kw + rng.uniform(0, 20, base.other_load_kw.shape),
                                       soc_pct=np.array([rng.uniform(15, 90)])))
    return out


@pytest.mark.parametrize("solver", ["HIGHS", "CLARABEL"])
def test_pruned_commitment_equals_full_enumeration(solver: str) -> None:
    site = dataclasses.replace(demo_site(T=48, step_s=1800.0, solver=solver), commitment_candidates=6)
    pruned, full = DispatchProblem(site), DispatchProblem(site)
    full.backend.prune = False  # type: ignore[attr-defined]
    for x in rolling(site, 12):
        a, b = pruned.solve(x, deadline_s=30), full.solve(x, deadline_s=30)
        assert (a.rung, b.rung) == ("primary", "primary")
        np.testing.assert_array_equal(a.genset_on, b.genset_on)
        assert a.objective == pytest.approx(b.objective, rel=1e-6, abs=1e-6)
    stats = pruned.backend.stats  # type: ignore[attr-defined]
    # The test only means something if candidates were in fact skipped.
    assert stats["pruned_by_prices"] + stats["pruned_by_solver"] > 0
    assert stats["solved"] < full.backend.stats["solved"]  # type: ignore[attr-defined]


def test_stored_prices_bound_every_other_right_hand_side() -> None:
    # Prices from one solve give a lower bound for any other b (Lagrangian duality) and the
    # optimum itself at their own b: checked against HiGHS over candidate schedules and inputs.
    site = demo_site(T=24, step_s=3600.0, solver="HIGHS")
    prob = DispatchProblem(site)
    be = prob.backend
    rows = LpRows(be.A, be.c, be.n_zero)  # type: ignore[attr-defined]
    bs = []
    for x in rolling(site, 4, seed=3):
        on0 = np.array([False])
        for sched in (stay_schedule(on0, 24), switched(stay_schedule(on0, 24), 0, False, 6)):
            bs.append(be._b(param_values(site, dataclasses.replace(x, genset_on=on0), sched)))  # type: ignore[attr-defined]
    lp = HighsLp(rows)
    optima, prices = [], []
    for b in bs:
        _x, obj = lp.solve(rows.bounds(b), 30.0)
        optima.append(obj)
        assert lp.prices is not None
        prices.append(lp.prices)
    for i, pr in enumerate(prices):
        assert pr.bound(bs[i]) == pytest.approx(optima[i], rel=1e-7, abs=1e-7)
        for j, b in enumerate(bs):
            assert pr.bound(b) <= optima[j] + 1e-7 * (1 + abs(optima[j]))


def test_prices_that_price_a_missing_bound_give_no_bound() -> None:
    site = demo_site(T=4, step_s=900.0, solver="HIGHS")
    be = DispatchProblem(site).backend
    rows = LpRows(be.A, be.c, be.n_zero)  # type: ignore[attr-defined]
    # Positive prices on "<=" rows ask for a lower end those rows do not have.
    assert Prices(rows, np.ones(rows.g_rows.size)).bound(np.zeros(rows.m)) == -np.inf


@pytest.mark.parametrize("quad", [0.0, 1e-3])
def test_auto_picks_highs_for_the_lp_and_clarabel_with_quadratic_terms(quad: float) -> None:
    site = dataclasses.replace(demo_site(T=12, step_s=3600.0, solver="AUTO"), ramp_quad_per_kw2=quad)
    plan = DispatchProblem(site).solve(demo_inputs(site), deadline_s=30)
    assert (plan.rung, plan.solver) == ("primary", "HIGHS" if quad == 0 else "CLARABEL")


def test_both_model_forms_reach_the_same_optimum() -> None:
    # HiGHS runs on the segment/up-down form, Clarabel on the hypograph/|d| form.
    site = demo_site(T=48, step_s=1800.0)
    for x in rolling(site, 3, seed=7):
        h = DispatchProblem(dataclasses.replace(site, solver="HIGHS")).solve(x, deadline_s=30)
        c = DispatchProblem(dataclasses.replace(site, solver="CLARABEL")).solve(x, deadline_s=30)
        assert h.objective == pytest.approx(c.objective, rel=1e-5, abs=1e-5)


def test_spill_penalty_keeps_the_direct_path_and_its_optimum() -> None:
    site = dataclasses.replace(demo_site(T=12, step_s=3600.0, solver="HIGHS"), spill_penalty_per_kwh=0.05)
    x = demo_inputs(site, seed=2)
    direct = DispatchProblem(site)
    assert type(direct.backend).__name__ == "DirectBackend"
    ref = DispatchProblem(site, backend="cvxpy")
    assert direct.solve(x, 30).objective == pytest.approx(ref.solve(x, 30).objective, rel=1e-6, abs=1e-6)


def _available_fraction_loop(warmup_s: float, on: np.ndarray, on0: bool, state_s: float,
                             steps_s: np.ndarray) -> np.ndarray:
    """The step-by-step definition (what the vectorised version must reproduce)."""
    frac = np.zeros(steps_s.size)
    elapsed, prev = (state_s if on0 else 0.0), on0
    for t in range(steps_s.size):
        if not on[t]:
            prev = False
            continue
        if not prev:
            elapsed = 0.0
        frac[t] = min(1.0, max(0.0, (elapsed + steps_s[t] - warmup_s) / steps_s[t]))
        elapsed += steps_s[t]
        prev = True
    return frac


def test_vectorised_warmup_availability_matches_the_loop() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        T = int(rng.integers(1, 30))
        steps = rng.choice([30.0, 60.0, 300.0, 900.0], T)
        gen = GensetParams("g", 100, 10, 1, 0.25, warmup_s=float(rng.choice([0.0, 45.0, 120.0, 1000.0])))
        on = rng.random(T) < 0.6
        on0, state = bool(rng.random() < 0.5), float(rng.uniform(0, 200))
        np.testing.assert_allclose(available_fraction(gen, on, on0, state, steps),
                                   _available_fraction_loop(gen.warmup_s, on, on0, state, steps), atol=1e-12)


def test_segments_reproduce_the_curve_between_floor_and_max() -> None:
    bp, val = np.array([0.0, 4.0, 10.0, 16.0]), np.array([0.0, 8.0, 11.0, 12.0])
    for lo, hi in ((0.0, 16.0), (2.0, 16.0), (5.0, 12.0), (4.0, 4.0), (11.0, 20.0)):
        widths, slopes, v_lo = segments_on(bp, val, lo, hi)
        knots = lo + np.concatenate(([0.0], np.cumsum(widths)))
        vals = v_lo + np.concatenate(([0.0], np.cumsum(slopes * widths)))
        np.testing.assert_allclose(vals, pwl_value_per_h(bp, val, knots), atol=1e-12)
        assert np.all(np.diff(slopes) <= 1e-12)


def test_highs_site_falls_back_to_clarabel_on_the_same_model() -> None:
    # The simplex form is built for HiGHS; its second rung (Clarabel) solves that same model.
    site = demo_site(T=24, step_s=3600.0, solver="HIGHS")
    prob = DispatchProblem(site)
    x = demo_inputs(site, seed=4)
    first = prob.solve(x, deadline_s=30)
    prob.force_fail = {"primary"}
    second = prob.solve(x, deadline_s=30)
    assert (first.rung, first.solver, second.rung, second.solver) == ("primary", "HIGHS", "secondary", "CLARABEL")
    assert second.objective == pytest.approx(first.objective, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("solver", ["HIGHS", "CLARABEL"])
def test_solver_objective_equals_the_plan_priced_from_its_powers(solver: str) -> None:
    # Catches a slip in either model form's constants: the solver's own optimum (plus the fixed
    # commitment costs) must equal the plan's cost recomputed from its powers (spill unpriced).
    import time

    from powerctl.optimizer import GpuClassParams, validate

    site = demo_site(T=24, step_s=3600.0, solver=solver)
    linear = GpuClassParams("lin", 3.0, 20.0, np.array([0.0, 20.0]), np.array([0.0, 9.0]), 0.002)
    curved = dataclasses.replace(site.gpu_classes[0], p_min_kw=5.0)
    site = dataclasses.replace(site, gpu_classes=[curved, linear, site.gpu_classes[2]])
    prob = DispatchProblem(site)
    x = validate.check_inputs(site, demo_inputs(site, seed=9))
    plan = prob.solve(x, deadline_s=30)
    assert plan.rung == "primary"
    prob._busy.acquire()
    solved, _notes = prob._locked_rungs(x, time.perf_counter() + 30)
    assert solved is not None
    assert solved.objective == pytest.approx(plan.objective, rel=1e-6, abs=1e-5)


def test_highs_missed_deadline_answers_with_rules_then_recovers() -> None:
    import time

    from powerctl.optimizer.checks import plan_violations

    site = demo_site(T=288, solver="HIGHS")
    prob = DispatchProblem(site)
    x = demo_inputs(site)
    plan = prob.solve(x, deadline_s=0.002)
    assert plan.rung == "rule" and plan_violations(site, x, plan) == []
    deadline = time.time() + 30
    while time.time() < deadline:
        plan = prob.solve(x, deadline_s=10)
        if plan.rung == "primary":
            break
        time.sleep(0.05)
    assert (plan.rung, plan.solver) == ("primary", "HIGHS")
    assert plan_violations(site, x, plan) == []


@pytest.mark.parametrize("on0", [False, True])
def test_pruned_equals_full_with_window_candidates(on0: bool) -> None:
    # Running genset: off-windows (stop, restart later); stopped genset: on-windows (start, stop).
    site = dataclasses.replace(demo_site(T=48, step_s=1800.0, solver="HIGHS"), commitment_candidates=6)
    pruned, full = DispatchProblem(site), DispatchProblem(site)
    full.backend.prune = False  # type: ignore[attr-defined]
    expected_solves = 0
    for x in rolling(site, 12, seed=5):
        x = dataclasses.replace(x, genset_on=np.array([on0]), genset_state_s=np.array([1e5]))
        args = (site.gensets[0], on0, 1e5, site.steps_s, 6)
        windows = window_steps(*args)
        assert windows, "the test needs window candidates"
        expected_solves += 1 + len(switch_steps(*args)) + len(windows)
        a, b = pruned.solve(x, deadline_s=30), full.solve(x, deadline_s=30)
        assert (a.rung, b.rung) == ("primary", "primary")
        np.testing.assert_array_equal(a.genset_on, b.genset_on)
        assert a.objective == pytest.approx(b.objective, rel=1e-6, abs=1e-6)
    # Without pruning every candidate, windows included, was solved.
    assert full.backend.stats["solved"] == expected_solves  # type: ignore[attr-defined]
    assert pruned.backend.stats["solved"] < expected_solves / 3  # type: ignore[attr-defined]
