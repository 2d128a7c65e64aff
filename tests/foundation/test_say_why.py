"""Say why (issue 16): a plan from a lower rung logs one line with the reason, explain() reaches the
log at INFO when slack is used, and the plan telemetry carries the slack names and sizes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimizer"))
from opt_sites import inputs, no_reserve

from powerctl.control.loop import say_why
from powerctl.optimizer import BatteryParams, DispatchProblem, PvParams, SiteParams
from powerctl.publish import plan_why_fields


def _short_site() -> SiteParams:
    # 10 kW of load, a 5 kW battery at its floor and no PV: 5 kW unserved whatever the rung.
    return SiteParams(steps_s=np.full(4, 900.0), pv=[PvParams("pv", 10.0)],
                      batteries=[BatteryParams("b", 100, 5, 5, 10, 95)], solver="HIGHS", **no_reserve())


def test_lower_rung_logs_its_reason_once_then_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    site = _short_site()
    problem = DispatchProblem(site)
    problem.force_fail |= {"primary", "secondary"}
    x = inputs(site, pv=[[0.0] * 4], other=[10.0] * 4, soc=[50.0])
    caplog.set_level(logging.DEBUG, logger="powerctl.control.loop")
    said = say_why(problem.solve(x, deadline_s=5), ("", ""))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rung rule" in warnings[0].getMessage()
    assert "primary (HIGHS): forced failure" in warnings[0].getMessage()
    caplog.clear()
    say_why(problem.solve(x, deadline_s=5), said)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("rung rule" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_slack_goes_to_the_log_at_info_and_to_telemetry(caplog: pytest.LogCaptureFixture) -> None:
    site = _short_site()
    x = inputs(site, pv=[[0.0] * 4], other=[10.0] * 4, soc=[10.0])
    plan = DispatchProblem(site).solve(x, deadline_s=5)
    assert plan.rung == "primary" and plan.slack
    caplog.set_level(logging.DEBUG, logger="powerctl.control.loop")
    say_why(plan, ("", ""))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "power_balance.unserved_load" in infos[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a primary plan
    fields = plan_why_fields(plan)
    assert fields["slack_count"] == len(plan.slack)
    assert fields["slack_power_balance_unserved_load_kw"] == pytest.approx(10.0, abs=1e-3)
    assert fields["slack_power_balance_unserved_load_kwh"] > 0
