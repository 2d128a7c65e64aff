"""The fallback ladder (each rung forced and observed), the deadline, and input validation errors."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from opt_sites import demo_inputs, demo_site

from powerctl.optimizer import DispatchProblem, InputError, SiteParams
from powerctl.optimizer.checks import plan_violations


@pytest.fixture(scope="module")
def small() -> tuple[SiteParams, DispatchProblem]:
    site = demo_site(T=24, step_s=3600.0)
    return site, DispatchProblem(site)


def test_primary_rung(small: tuple[SiteParams, DispatchProblem]) -> None:
    site, prob = small
    x = demo_inputs(site)
    plan = prob.solve(x, deadline_s=10)
    assert (plan.rung, plan.solver, plan.notes) == ("primary", "CLARABEL", [])
    assert plan_violations(site, x, plan) == []


@pytest.mark.parametrize(("forced", "rung", "solver"), [
    ({"primary"}, "secondary", "OSQP"),
    ({"primary", "secondary"}, "rule", "rules"),
    ({"primary", "secondary", "rule"}, "safe", "none"),
])
def test_forced_failures_fall_down_the_ladder(small: tuple[SiteParams, DispatchProblem], forced: set[str],
                                              rung: str, solver: str) -> None:
    site, prob = small
    x = demo_inputs(site)
    prob.force_fail = forced
    try:
        plan = prob.solve(x, deadline_s=30)
    finally:
        prob.force_fail = set()
    assert (plan.rung, plan.solver) == (rung, solver)
    assert any("forced failure" in n for n in plan.notes)
    assert plan_violations(site, x, plan) == []
    if rung == "safe":
        # GPUs back off to their floor, never to maximum.
        np.testing.assert_allclose(plan.gpu_kw, 0.0)


def test_secondary_agrees_with_primary(small: tuple[SiteParams, DispatchProblem]) -> None:
    site, prob = small
    x = demo_inputs(site, seed=3)
    a = prob.solve(x, deadline_s=10)
    prob.force_fail = {"primary"}
    try:
        b = prob.solve(x, deadline_s=30)
    finally:
        prob.force_fail = set()
    assert b.rung == "secondary"
    # OSQP (first-order, eps 1e-4) lands near the optimum; after clipping into the limits its plan is
    # feasible, so it can only be worse than Clarabel's, and not by much.
    assert a.objective <= b.objective + 1e-6
    assert b.objective == pytest.approx(a.objective, rel=0.05)


def test_missed_deadline_answers_in_time_with_rules() -> None:
    site = demo_site(T=288)
    prob = DispatchProblem(site)
    x = demo_inputs(site)
    t0 = time.perf_counter()
    plan = prob.solve(x, deadline_s=0.002)
    elapsed = time.perf_counter() - t0
    assert plan.rung == "rule"
    assert any("deadline" in n or "no time left" in n for n in plan.notes)
    # Not a timing test: only that the caller got an answer long before a full enumeration could end.
    assert elapsed < 1.0
    assert plan_violations(site, x, plan) == []
    # The abandoned solve finishes in the background; afterwards the solver rungs work again.
    deadline = time.time() + 30
    while time.time() < deadline:
        plan = prob.solve(x, deadline_s=10)
        if plan.rung == "primary":
            break
        assert any("busy" in n for n in plan.notes)
        time.sleep(0.05)
    assert plan.rung == "primary"


def test_cvxpy_backend_matches_direct_backend(small: tuple[SiteParams, DispatchProblem]) -> None:
    site, prob = small
    x = demo_inputs(site, seed=5)
    ref = DispatchProblem(site, backend="cvxpy")
    assert type(ref.backend).__name__ == "CvxpyBackend" and type(prob.backend).__name__ == "DirectBackend"
    assert prob.solve(x, 10).objective == pytest.approx(ref.solve(x, 10).objective, rel=1e-6)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pv_forecast_kw", lambda a: np.where(np.arange(a.shape[1]) == 3, np.nan, a), "pv_forecast_kw: not finite"),
    ("pv_forecast_kw", lambda a: a - 1000.0, "pv_forecast_kw: negative value"),
    ("gpu_demand_kw", lambda a: a[:2], "gpu_demand_kw: expected shape (3, 24)"),
    ("other_load_kw", lambda a: a[:-1], "other_load_kw: expected shape (24,)"),
    ("soc_pct", lambda a: a * 0 + 97.0, "soc_pct[0] (bess): 97.000 % is outside the window"),
    ("soc_pct", lambda a: a * np.nan, "soc_pct: not finite"),
    ("genset_on", lambda a: np.array([True, False]), "genset_on: expected shape (1,)"),
    ("prev_gpu_kw", lambda a: a - 1.0, "prev_gpu_kw: negative value"),
])
def test_bad_inputs_raise_input_error_naming_the_input(small: tuple[SiteParams, DispatchProblem], field: str,
                                                        value, message: str) -> None:
    site, prob = small
    x = demo_inputs(site)
    bad = dataclasses.replace(x, **{field: value(np.asarray(getattr(x, field)))})
    with pytest.raises(InputError) as exc:
        prob.solve(bad)
    assert message in str(exc.value)


def test_bad_site_raises_input_error() -> None:
    site = demo_site(T=4)
    with pytest.raises(InputError, match=r"steps_s: every step must be > 0"):
        DispatchProblem(dataclasses.replace(site, steps_s=np.array([300.0, 0.0, 300.0, 300.0])))
    with pytest.raises(InputError, match=r"value curve must be concave"):
        cls = dataclasses.replace(site.gpu_classes[0], value_per_h=np.array([0.0, 1.0, 5.0, 6.0]))
        DispatchProblem(dataclasses.replace(site, gpu_classes=[cls]))
    with pytest.raises(InputError, match=r"solver: 'GUROBI' is not one of"):
        DispatchProblem(dataclasses.replace(site, solver="GUROBI"))
