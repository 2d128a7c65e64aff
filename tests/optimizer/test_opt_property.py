"""Property test: random feasible sites and inputs; every plan (and the rule-based one) meets every hard limit."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    DispatchProblem,
    GensetParams,
    GpuClassParams,
    PvParams,
    SiteParams,
)
from powerctl.optimizer.checks import plan_violations
from powerctl.optimizer.fallback import rule_dispatch
from powerctl.optimizer.solution import make_plan

floats = st.floats


@st.composite
def battery(draw: st.DrawFn, i: int) -> BatteryParams:
    lo = draw(floats(0, 30))
    return BatteryParams(f"b{i}", draw(floats(5, 300)), draw(floats(1, 150)), draw(floats(1, 150)), lo,
                         draw(floats(lo + 10, 100)), draw(floats(0.8, 1)), draw(floats(0.8, 1)),
                         draw(floats(0, 0.1)), draw(floats(0, 0.2)))


@st.composite
def genset(draw: st.DrawFn, i: int) -> GensetParams:
    rating = draw(floats(10, 200))
    return GensetParams(f"g{i}", rating, draw(floats(0, 0.5)) * rating, draw(floats(0, 5)), draw(floats(0.2, 0.35)),
                        draw(floats(0.5, 2)), draw(floats(0, 20)), draw(floats(0, 3600)), draw(floats(0, 3600)),
                        draw(floats(0, 600)))


@st.composite
def gpu_class(draw: st.DrawFn, i: int) -> GpuClassParams:
    p_max = draw(floats(1, 40))
    p_min = draw(floats(0, 0.5)) * p_max
    n_seg = draw(st.integers(1, 4))
    bp = np.linspace(0, p_max, n_seg + 1)
    slopes = np.sort(np.array(draw(st.lists(floats(0, 3), min_size=n_seg, max_size=n_seg))))[::-1]
    val = np.concatenate(([0.0], np.cumsum(slopes * np.diff(bp))))
    ramp = draw(st.sampled_from([float("inf"), 0.01, 0.1]))
    return GpuClassParams(f"c{i}", p_min, p_max, bp, val, draw(floats(0, 0.05)), ramp)


@st.composite
def case(draw: st.DrawFn) -> tuple[SiteParams, DispatchInputs]:
    T = draw(st.integers(2, 8))
    steps = np.array(draw(st.lists(st.sampled_from([60.0, 300.0, 900.0, 3600.0]), min_size=T, max_size=T)))
    n_pv, n_bat, n_gen, n_cls = (draw(st.integers(0, 2)), draw(st.integers(0, 2)), draw(st.integers(0, 2)),
                                 draw(st.integers(0, 3)))
    site = SiteParams(
        steps_s=steps, pv=[PvParams(f"pv{i}", draw(floats(1, 100))) for i in range(n_pv)],
        batteries=[draw(battery(i)) for i in range(n_bat)], gensets=[draw(genset(i)) for i in range(n_gen)],
        gpu_classes=[draw(gpu_class(i)) for i in range(n_cls)],
        facility_overhead=draw(floats(0, 0.3)), reserve_load_pct=draw(floats(0, 30)),
        reserve_pv_pct=draw(floats(0, 50)), spill_penalty_per_kwh=draw(floats(0, 0.1)),
        ramp_quad_per_kw2=draw(st.sampled_from([0.0, 1e-3])), commitment_candidates=3,
        solver=draw(st.sampled_from(["CLARABEL", "HIGHS"])))
    if site.solver == "HIGHS":
        site = SiteParams(**{**site.__dict__, "ramp_quad_per_kw2": 0.0})

    def arr(shape: tuple[int, ...], hi: float) -> np.ndarray:
        return np.array(draw(st.lists(floats(0, hi), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))).reshape(shape)

    x = DispatchInputs(
        pv_forecast_kw=arr((n_pv, T), 120), gpu_demand_kw=arr((n_cls, T), 50), other_load_kw=arr((T,), 60),
        soc_pct=np.array([draw(floats(b.soc_min_pct, b.soc_max_pct)) for b in site.batteries]),
        genset_on=np.array([draw(st.booleans()) for _ in range(n_gen)], dtype=bool),
        genset_state_s=arr((n_gen,), 7200), prev_gpu_kw=arr((n_cls,), 50), reserve_extra_kw=arr((T,), 20))
    return site, x


@settings(max_examples=int(os.environ.get("OPT_PROPERTY_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case())
def test_every_plan_meets_every_hard_limit(c: tuple[SiteParams, DispatchInputs]) -> None:
    site, x = c
    prob = DispatchProblem(site)
    plan = prob.solve(x, deadline_s=30)
    assert plan.rung in ("primary", "secondary"), plan.notes
    assert plan_violations(site, x, plan) == []
    sched, v, d = rule_dispatch(site, x)
    rule = make_plan(site, x, v, sched, d, status="rule_based", solver="rules", rung="rule", solve_time_s=0.0)
    assert plan_violations(site, x, rule) == []
    # With at most one genset the rules' commitment is among the candidates, so the optimum is at
    # least as good as the rules (both are feasible for the same model).
    if len(site.gensets) <= 1:
        assert plan.objective <= rule.objective + 1e-3 * (1 + abs(rule.objective))
    prob.close()
