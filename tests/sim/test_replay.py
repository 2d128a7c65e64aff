"""Replay: closed loop of the production controller core + guard against the plant; outputs and KPIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from powerctl.sim.kpi import compute_kpis
from powerctl.sim.replay import simulate, write_outputs
from powerctl.sim.traces import build_site_trace
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace
from tests.sim.conftest import make_cfg

DATA = DATA_DIR
TMY3 = DATA / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
AZURE = DATA / "gpu_load/azure_llm_inference_trace_2023_code.csv"


@pytest.fixture(scope="module")
def trace() -> SiteTrace:
    return build_site_trace(make_cfg(), TMY3, AZURE, start="06-01", days=1, history_days=1)


def _energy_checks(k: dict) -> None:
    assert k["energy_balance_error_pct"] < 0.1
    assert k["battery_balance_error_pct"] < 0.1


@pytest.mark.parametrize("controller", ["static", "rule"])
def test_full_day_energy_balance_and_limits(trace: SiteTrace, controller: str) -> None:
    res = simulate(make_cfg(), trace, controller=controller, soc0_pct=40.0)
    k = compute_kpis(res)
    _energy_checks(k)
    s = res.series
    assert len(s) == 1440
    e = res.plant.e
    # energy in = energy out + losses + stored change, from the counters directly (0.1 %)
    e_in = e["pv"] + e["genset"] + e["unserved"]
    e_out = e["load"] + e["spill"]
    d_stored = res.plant.stored_kwh() - s.attrs["stored0_kwh"]
    assert e_in == pytest.approx(e_out + res.plant.battery_loss_kwh() + d_stored, rel=1e-3)
    v = k["limit_violations"]
    assert v["gpu_cap_outside_range"] == 0 and v["soc_outside_window"] == 0
    assert v["battery_setpoint_outside_limits"] == 0
    caps = np.array([s["gpu_cap_kw"].min(), s["gpu_cap_kw"].max()]) * 1000 / 64
    assert 100 - 1e-6 <= caps[0] and caps[1] <= 400 + 1e-6
    assert (s["gpu_kw"] <= s["gpu_cap_kw"] + 1e-9).all()


def test_ours_short_replay_plans_with_the_optimizer(trace: SiteTrace, tmp_path: Path) -> None:
    res = simulate(make_cfg(), trace, controller="ours", days=0.06, solve_deadline_s=5.0)
    k = compute_kpis(res)
    _energy_checks(k)
    st = k["controller"]
    assert st["plans"] == 18
    assert st["plan_rungs"].get("primary", 0) + st["plan_rungs"].get("secondary", 0) >= 1
    assert not k["forecast_peeked"]
    k["run"] = {"controller": "ours", "perfect_foresight": False, "days": 0.06, "start": "x", "trace": "t"}
    write_outputs(res, k, tmp_path)
    for f in (
        "kpi.json",
        "kpi.txt",
        "series.parquet",
        "power_stack.png",
        "soc.png",
        "gpu_budget.png",
        "genset.png",
    ):
        assert (tmp_path / f).stat().st_size > 0, f
    back = pd.read_parquet(tmp_path / "series.parquet")
    assert len(back) == len(res.series) and "soc_pct.bat1" in back.columns
    assert json.loads((tmp_path / "kpi.json").read_text())["value_minus_fuel"] == pytest.approx(
        k["value_minus_fuel"]
    )
    assert (tmp_path / "power_stack.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_planner_failure_falls_to_safe_caps_never_max(trace: SiteTrace) -> None:
    from powerctl.sim import replay as r

    cfg = make_cfg()
    orig = r.make_planner

    def broken(*a, **kw):  # every rung of the ladder fails: plans are "safe"
        core = orig(*a, **kw)
        core.problem.force_fail.update({"primary", "secondary", "rule"})
        return core

    r.make_planner = broken
    try:
        res = simulate(cfg, trace, controller="ours", days=0.05)
    finally:
        r.make_planner = orig
    s = res.series
    assert res.controller.stats()["plan_rungs"] == {"safe": 15}
    assert (s["gpu_cap_kw"] <= 64 * cfg.gpu.safe_cap_w / 1000 + 1e-9).all()
    assert s["gpu_cap_kw"].max() < 64 * cfg.gpu.max_w / 1000


def test_static_cap_is_static_and_genset_hysteresis(trace: SiteTrace) -> None:
    res = simulate(make_cfg(), trace, controller="static", soc0_pct=25.0, static_cap_w=250.0)
    s = res.series
    # guard may cut below the requested cap, never above
    assert s["gpu_cap_kw"].max() <= 64 * 0.25 + 1e-9
    # SoC started below 30 %: the genset was started
    assert res.plant.genset_starts("gen1") >= 1
    assert (s["genset_kw"] > 0).any()


def test_unserved_when_supply_short_counts_no_work() -> None:
    """No PV, empty battery, genset never started: load is unserved and produces no value."""
    cfg = make_cfg()
    idx = pd.date_range("2021-06-01", periods=60 * 26, freq="1min", tz="UTC")
    df = pd.DataFrame(
        {
            "pv_kw": 0.0,
            "pv_clear_kw": 0.0,
            "gpu_w.training": 400.0,
            "gpu_w.inference": 400.0,
            "gpu_w.finetune": 400.0,
            "other_load_kw": 0.0,
        },
        index=idx,
    )
    tr = SiteTrace(df, idx[0] + pd.Timedelta(days=1), 60.0, ["training", "inference", "finetune"])
    res = simulate(cfg, tr, controller="static", soc0_pct=10.0, days=0.05)
    k = compute_kpis(res)
    _energy_checks(k)
    # the static controller starts the genset at once (SoC <= 30 %); until it is warm the load is unserved
    assert k["unserved_kwh"] > 0
    assert k["limit_violations"]["unserved_load"] >= 1
    first = res.series.iloc[0]
    assert first["unserved_kw"] == pytest.approx(first["load_kw"])
