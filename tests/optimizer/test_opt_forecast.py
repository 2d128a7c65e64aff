"""Forecasts (powerctl.forecast): clear sky x index, blending, provenance, staleness -> reserve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from powerctl.forecast import (
    Forecast,
    PvArray,
    clearsky_pv_kw,
    gpu_demand_forecast,
    pv_forecast,
    reserve_extra_kw,
)

# Greensboro NC (the demo site's default location), 2019-06-21.
ARRAY = PvArray(kwp=100.0, latitude=36.1, longitude=-79.95, tilt_deg=20, azimuth_deg=180)
NOON_UTC = pd.Timestamp("2019-06-21 17:00", tz="UTC").timestamp()  # ~13:00 local solar-ish
MIDNIGHT_UTC = pd.Timestamp("2019-06-21 05:00", tz="UTC").timestamp()


def test_clear_sky_is_zero_at_night_and_near_rating_at_noon() -> None:
    night, noon = clearsky_pv_kw(ARRAY, np.array([MIDNIGHT_UTC, NOON_UTC]))
    assert night == 0.0
    assert 70.0 < noon <= 100.0  # ~1000 W/m2 POA x 0.86 losses


def test_index_from_measurements_persists_then_blends_to_climatology() -> None:
    ts = NOON_UTC - np.arange(0, 1800, 60.0)[::-1]
    meas = 0.4 * clearsky_pv_kw(ARRAY, ts)  # a cloudy half hour: index 0.4
    steps = np.full(96, 300.0)
    fc = pv_forecast(ARRAY, NOON_UTC, steps, ts, meas, k_climatology=0.8, tau_s=3600.0)
    clear = clearsky_pv_kw(ARRAY, NOON_UTC + np.arange(96) * 300.0 + 150.0)
    k = fc.values_kw[0] / np.maximum(clear, 1e-9)
    assert k[0] == pytest.approx(0.4 + 0.4 * (1 - np.exp(-150 / 3600)), abs=0.01)
    assert k[60] == pytest.approx(0.8 - 0.4 * np.exp(-(60 * 300 + 150) / 3600), abs=0.01)
    assert "index 0.40" in fc.source
    assert fc.age_s(NOON_UTC) == pytest.approx(0.0)


def test_stale_measurements_fall_back_to_climatology_and_say_so() -> None:
    ts = np.array([NOON_UTC - 7200.0])
    fc = pv_forecast(ARRAY, NOON_UTC, np.full(12, 300.0), ts, np.array([10.0]), k_climatology=0.7)
    assert "climatology" in fc.source and "stale" in fc.source
    assert fc.age_s(NOON_UTC) == pytest.approx(7200.0)
    clear = clearsky_pv_kw(ARRAY, NOON_UTC + np.arange(12) * 300.0 + 150.0)
    np.testing.assert_allclose(fc.values_kw[0], 0.7 * clear)


def test_fresh_external_forecast_wins_and_old_one_is_ignored() -> None:
    ext = Forecast(np.full((1, 12), 42.0), "external:file forecast.csv", NOON_UTC - 600)
    fc = pv_forecast(ARRAY, NOON_UTC, np.full(12, 300.0), np.array([]), np.array([]), external=ext)
    assert fc.source == "external:file forecast.csv" and np.all(fc.values_kw == 42.0)
    old = Forecast(np.full((1, 12), 42.0), "external:mqtt", NOON_UTC - 5 * 3600)
    fc = pv_forecast(ARRAY, NOON_UTC, np.full(12, 300.0), np.array([]), np.array([]), external=old)
    assert "climatology" in fc.source and "no measurements" in fc.source


def test_gpu_demand_from_history_and_daily_profile() -> None:
    # Two days of history: class 0 runs 20 kW by day (12-24 UTC), 5 kW by night; class 1 flat 10 kW.
    now = pd.Timestamp("2019-06-23 06:00", tz="UTC").timestamp()
    ts = np.arange(now - 2 * 86400, now, 300.0)
    day = ((ts % 86400) >= 12 * 3600).astype(float)
    hist = np.vstack([5 + 15 * day, np.full(ts.size, 10.0)])
    hist[0, ts > now - 900] = 9.0  # today 4 kW above the usual night level
    fc = gpu_demand_forecast(now, np.full(288, 300.0), ts, hist, np.array([25.0, 25.0]), tau_s=1800)
    assert fc.source == "persistence -> daily profile"
    assert fc.values_kw[0, 0] == pytest.approx(5 + 4 * np.exp(-150 / 1800), abs=0.05)
    assert fc.values_kw[0, 6 * 12 + 1] == pytest.approx(20.0, abs=0.05)  # 12:05 UTC: day level
    np.testing.assert_allclose(fc.values_kw[1], 10.0)
    stale = gpu_demand_forecast(now + 3600, np.full(4, 300.0), ts, hist, np.array([25.0, 30.0]))
    assert stale.source.startswith("maximum") and np.all(stale.values_kw == [[25.0], [30.0]])


def test_stale_forecasts_widen_the_reserve() -> None:
    pv = Forecast(np.full((1, 4), 40.0), "x", issued_s=0.0)
    gpu = Forecast(np.full((2, 4), 10.0), "y", issued_s=0.0)
    gmax = np.array([20.0, 15.0])
    np.testing.assert_allclose(reserve_extra_kw(600.0, pv, gpu, gmax), 0.0)  # fresh
    # 1350 s old with stale_after 900: half-way through the ramp -> 0.5 * 0.5 * 40 = 10 kW PV share,
    # and 0.5 * (10 + 5) = 7.5 kW GPU gap.
    np.testing.assert_allclose(reserve_extra_kw(1350.0, pv, gpu, gmax), 17.5)
    np.testing.assert_allclose(reserve_extra_kw(1e5, pv, gpu, gmax, overhead=0.1), 20.0 + 1.1 * 15.0)
