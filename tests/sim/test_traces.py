"""Trace loading: units, time zones, validation errors and logged fixes; the public-data readers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from powerctl.sim.traces import TraceError, build_site_trace, load_series, read_psm3, read_rmis, read_tmy3
from powerctl.sim.traces.gpu_load import azure_demand_series, inference_demand_w, read_azure_llm, work_rate
from powerctl.sim.traces.site_trace import DATA_DIR
from tests.sim.conftest import make_cfg

DATA = DATA_DIR
TMY3 = DATA / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
PSM3 = DATA / "pv_irradiance/pvlib_nsrdb_psm3_2017_401182_30min.csv"
RMIS = DATA / "pv_irradiance/pvanalytics_nrel_rmis_irradiance_201902_5min.csv"
AZURE = DATA / "gpu_load/azure_llm_inference_trace_2023_code.csv"


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_units_converted_and_tz_attached(tmp_path: Path) -> None:
    p = _csv(tmp_path, "time,p,ghi\n2021-06-01 00:00,1500,0.5\n2021-06-01 00:01,2500,0.6\n")
    df = load_series(p, {"p": "W", "ghi": "kW/m2"}, tz="Etc/GMT+5")
    assert df["p"].tolist() == [1.5, 2.5]
    assert df["ghi"].tolist() == pytest.approx([500.0, 600.0])
    assert str(df.index.tz) == "Etc/GMT+5"


def test_naive_times_without_tz_refused(tmp_path: Path) -> None:
    p = _csv(tmp_path, "time,p\n2021-06-01 00:00,1\n2021-06-01 00:01,2\n")
    with pytest.raises(TraceError, match=r"t\.csv: column 'time': time stamps have no time zone"):
        load_series(p, {"p": "kW"})


def test_unsorted_sorted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _csv(tmp_path, "time,p\n2021-06-01 00:02,3\n2021-06-01 00:00,1\n2021-06-01 00:01,2\n")
    with caplog.at_level(logging.WARNING):
        df = load_series(p, {"p": "kW"}, tz="UTC")
    assert df["p"].tolist() == [1, 2, 3]
    assert "not sorted" in caplog.text


def test_duplicates_error_or_logged_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _csv(tmp_path, "time,p\n2021-06-01 00:00,1\n2021-06-01 00:01,2\n2021-06-01 00:01,9\n")
    with pytest.raises(TraceError, match="1 duplicated time stamps, first 2021-06-01 00:01"):
        load_series(p, {"p": "kW"}, tz="UTC")
    with caplog.at_level(logging.WARNING):
        df = load_series(p, {"p": "kW"}, tz="UTC", fix=True)
    assert df["p"].tolist() == [1, 2]
    assert "dropped 1 duplicated" in caplog.text


def test_short_gap_interpolated_long_gap_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _csv(tmp_path, "time,p\n2021-06-01 00:00,1\n2021-06-01 00:01,\n2021-06-01 00:02,3\n")
    with caplog.at_level(logging.WARNING):
        df = load_series(p, {"p": "kW"}, tz="UTC")
    assert df["p"].tolist() == [1, 2, 3]
    assert "interpolated 1 missing" in caplog.text
    with pytest.raises(TraceError, match="column 'p': gap of missing values around 2021-06-01 00:01"):
        load_series(p, {"p": "kW"}, tz="UTC", max_gap_s=60)


def test_wrong_units_and_bad_numbers(tmp_path: Path) -> None:
    p = _csv(tmp_path, "time,ghi\n2021-06-01 00:00,0.2\n2021-06-01 00:01,900\n")
    with pytest.raises(
        TraceError, match=r"column 'ghi': value 900000 W/m2 outside the plausible range.*wrong units"
    ):
        load_series(p, {"ghi": "kW/m2"}, tz="UTC")
    q = _csv(tmp_path, "time,p\n2021-06-01 00:00,1\n2021-06-01 00:01,abc\n", "q.csv")
    with pytest.raises(TraceError, match="column 'p': row 1: not a number: 'abc'"):
        load_series(q, {"p": "kW"}, tz="UTC")
    with pytest.raises(TraceError, match="column 'x': missing"):
        load_series(q, {"x": "kW"}, tz="UTC")
    with pytest.raises(TraceError, match="unknown unit 'furlongs'"):
        load_series(q, {"p": "furlongs"}, tz="UTC")


def test_parquet_roundtrip(tmp_path: Path) -> None:
    idx = pd.date_range("2021-06-01", periods=5, freq="1min", tz="UTC")
    pd.DataFrame({"time": idx, "p": np.arange(5.0) * 1000}).to_parquet(tmp_path / "t.parquet")
    df = load_series(tmp_path / "t.parquet", {"p": "W"})
    assert df["p"].tolist() == [0, 1, 2, 3, 4]


def test_tmy3_reader_start_labels_and_values() -> None:
    df, meta = read_tmy3(TMY3)
    assert len(df) == 8760
    assert df.index[0] == pd.Timestamp("2021-01-01 00:00", tz="Etc/GMT+5")  # end-of-hour 01:00 -> start 00:00
    assert df["ghi"].max() == pytest.approx(1013.0)
    assert meta["latitude"] == pytest.approx(36.1)
    # the sun is up around local noon, not at midnight
    june = df.loc["2021-06-01"]
    assert june["ghi"].iloc[0] == 0 and june["ghi"].iloc[12] > 100


def test_psm3_and_rmis_readers() -> None:
    df, _ = read_psm3(PSM3)
    assert len(df) == 17520 and {"ghi_clear", "temp_air"} <= set(df.columns)
    assert df["ghi"].max() == pytest.approx(1058.0)
    # RMIS has a daytime gap of several hours on Feb 3: refused by default, with file, column and time
    with pytest.raises(
        TraceError, match=r"rmis.*column 'ghi': gap of missing values around 2019-02-03 07:05"
    ):
        read_rmis(RMIS)
    rm, _ = read_rmis(RMIS, max_gap_s=24 * 3600)  # the caller may accept long interpolated gaps
    assert rm[["ghi", "dni", "dhi"]].notna().all().all()
    assert rm["ghi"].min() >= 0.0  # sensor offsets clipped


def test_azure_trace_to_demand() -> None:
    arr = read_azure_llm(AZURE)
    assert len(arr) == 8819
    assert 3300 < arr["t_s"].max() < 3500
    rate = work_rate(arr, 60.0)
    w = inference_demand_w(rate, idle_w=70, max_w=700, mean_util=0.6)
    assert w.min() >= 70 and w.max() <= 700
    util = (w - 70) / 630
    assert util.mean() == pytest.approx(0.6, abs=1e-6)  # capacity sized for the mean
    assert util.max() == 1.0 and util.min() < 0.4  # bursts saturate, lulls idle
    idx = pd.date_range("2021-06-01", periods=200, freq="1min", tz="UTC")
    s = azure_demand_series(AZURE, idx, idle_w=70, max_w=700)
    n = len(w)
    assert s.iloc[n] == s.iloc[0]  # looped


def test_bad_azure_trace(tmp_path: Path) -> None:
    p = _csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,10,-5\n")
    with pytest.raises(TraceError, match="column 'GeneratedTokens': row 0: not a token count"):
        read_azure_llm(p)


def test_site_trace_pv_shape_and_energy() -> None:
    cfg = make_cfg()
    tr = build_site_trace(cfg, TMY3, AZURE, start="06-01", days=2, history_days=1)
    df = tr.df
    assert (df.index[1] - df.index[0]).total_seconds() == 60
    assert df.index[0] == tr.t0 - pd.Timedelta(days=1)
    assert (df["pv_kw"] <= 100.0 + 1e-9).all() and (df["pv_kw"] >= 0).all()
    night = df.between_time("00:00", "04:00")
    assert night["pv_kw"].max() == 0 and night["pv_clear_kw"].max() == 0
    # the clear-sky-index interpolation keeps the hourly model's energy (within a few %)
    from powerctl.sim.plant.pv import pv_ac_kw_from_weather
    from powerctl.sim.traces.irradiance import read_tmy3 as rt

    w, _ = rt(TMY3)
    w = w.loc["2021-05-31":"2021-06-02"]
    hourly = pv_ac_kw_from_weather(
        w, latitude=36.1, longitude=-79.95, altitude_m=0.0, kwp=100, tilt_deg=25, azimuth_deg=180
    )
    assert df["pv_kw"].sum() / 60 == pytest.approx(hourly.sum(), rel=0.05)
    assert df["gpu_w.training"].eq(400).all()
    assert df["gpu_w.inference"].between(60, 400).all()


def test_site_trace_from_psm3_models_pv_where_the_weather_was(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tr = build_site_trace(make_cfg(), PSM3, None, start="06-01", days=1, history_days=1)
    assert "PV is modelled at the weather's location" in caplog.text
    d = tr.df[tr.df.index >= tr.t0]
    assert d.index[0] == pd.Timestamp("2017-06-01", tz="Etc/GMT+7")
    by_hour = d["pv_clear_kw"].groupby(d.index.hour).mean()
    assert by_hour.idxmax() in (11, 12)  # solar noon near 12:15 local standard time at -108.5°
    assert (d["pv_kw"] <= d["pv_clear_kw"] * 1.3 + 1.0).all()
    assert d["gpu_w.inference"].eq(400).all()  # no request trace: constant full demand
