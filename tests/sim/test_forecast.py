"""Replay forecasts are honest: they never depend on the trace after ``now`` (except perfect foresight)."""

from __future__ import annotations

import numpy as np
import pytest

from powerctl.sim.forecast_replay import make_forecaster
from powerctl.sim.traces import build_site_trace
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace
from tests.sim.conftest import make_cfg

DATA = DATA_DIR
TMY3 = DATA / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
AZURE = DATA / "gpu_load/azure_llm_inference_trace_2023_code.csv"
STEPS = np.array([60.0] * 60 + [900.0] * 92)


@pytest.fixture(scope="module")
def trace() -> SiteTrace:
    return build_site_trace(make_cfg(), TMY3, AZURE, start="06-01", days=3, history_days=1)


def _scrambled_future(tr: SiteTrace, now_s: float) -> SiteTrace:
    """The same trace with everything after ``now_s`` replaced by nonsense."""
    df = tr.df.copy()
    future = tr.t_s >= now_s
    rng = np.random.default_rng(1)
    df.loc[future, "pv_kw"] = rng.uniform(0, 100, future.sum())
    for c in tr.class_names:
        df.loc[future, f"gpu_w.{c}"] = rng.uniform(60, 400, future.sum())
    return SiteTrace(df, tr.t0, tr.step_s, tr.class_names)


@pytest.mark.parametrize("method", ["clearsky", "persistence"])
@pytest.mark.parametrize("now_h", [3.0, 10.5, 14.25, 30.0])
def test_forecast_ignores_the_future(trace: SiteTrace, method: str, now_h: float) -> None:
    cfg = make_cfg()
    now = now_h * 3600.0
    f1 = make_forecaster(cfg, trace, pv_method=method)
    f2 = make_forecaster(cfg, _scrambled_future(trace, now), pv_method=method)
    a, b = f1(now, None, STEPS), f2(now, None, STEPS)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y)
    assert not f1.peeked and not f2.peeked


def test_perfect_foresight_sees_the_future(trace: SiteTrace) -> None:
    cfg = make_cfg()
    now = 10.5 * 3600.0
    f1 = make_forecaster(cfg, trace, perfect_foresight=True)
    f2 = make_forecaster(cfg, _scrambled_future(trace, now), perfect_foresight=True)
    assert not np.allclose(f1(now, None, STEPS)[0], f2(now, None, STEPS)[0])
    # and it is the actual mean over each step
    pv = f1(now, None, STEPS)[0][0]
    i = int(now // 60) + int(trace.t_s[0] // -60)
    assert pv[0] == pytest.approx(trace.df["pv_kw"].iloc[i])


def test_clearsky_forecast_shape(trace: SiteTrace) -> None:
    f = make_forecaster(make_cfg(), trace)
    now = 12 * 3600.0
    pv, gpu, other = f(now, None, STEPS)
    assert pv.shape == (1, len(STEPS)) and gpu.shape == (3, len(STEPS)) and other.shape == (len(STEPS),)
    assert (pv >= 0).all()
    ends = now + np.cumsum(STEPS)
    at_night = ((ends / 3600.0) % 24 > 22) | ((ends / 3600.0) % 24 < 4)
    assert np.all(pv[0, at_night] == 0)
    assert gpu[1, 0] == pytest.approx(
        trace.mean_between("gpu", np.array([now - 3600]), np.array([now]))[1, 0] * 16 / 1000
    )
    k_now, k_day = f.clear_sky_index(now)
    assert 0 <= k_now <= 1.3 and 0 <= k_day <= 1.3


def test_persistence_is_yesterday(trace: SiteTrace) -> None:
    f = make_forecaster(make_cfg(), trace, pv_method="persistence")
    now = 30 * 3600.0
    pv = f(now, None, np.array([3600.0]))[0][0, 0]
    ref = trace.mean_between("pv", np.array([now - 86400]), np.array([now - 86400 + 3600]))[0]
    assert pv == pytest.approx(ref)


def test_unknown_method_refused(trace: SiteTrace) -> None:
    with pytest.raises(ValueError, match="unknown PV forecast method 'magic'"):
        make_forecaster(make_cfg(), trace, pv_method="magic")
    with pytest.raises(ValueError, match="needs a pv_forecast_kw column"):
        make_forecaster(make_cfg(), trace, pv_method="provided")
