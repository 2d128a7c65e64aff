"""The engineer's own traces: measured PV power, PSM3 Parquet, load / GPU demand / price files; gap
policy per window, DST-shifted stamps, and errors that name file, column, row or time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from powerctl.config import SiteConfig
from powerctl.sim.cli_sim import app
from powerctl.sim.kpi import compute_kpis
from powerctl.sim.replay import simulate
from powerctl.sim.traces import TraceError, build_site_trace
from powerctl.sim.traces.irradiance import read_irradiance, read_rmis
from powerctl.sim.traces.site_trace import DATA_DIR
from powerctl.sim.traces.user import (
    GapPolicy,
    Gaps,
    UserTraces,
    load_on_grid,
    parse_map_option,
    parse_weather_option,
    read_column,
    read_traces_toml,
    solar_noon_offsets_min,
)
from tests.sim.conftest import make_cfg

SERF = DATA_DIR / "pv_power/pvanalytics_nrel_serf_east_ac_power_202203_1min.csv"
DST = DATA_DIR / "pv_power/pvanalytics_pvdaq_system50_ac_power_dst_15min.parquet"
PSM3 = DATA_DIR / "pv_irradiance/pvlib_nsrdb_psm3_2017_401182_30min.csv"
RMIS = DATA_DIR / "pv_irradiance/pvanalytics_nrel_rmis_irradiance_201902_5min.csv"
DEMO = Path(__file__).resolve().parents[2] / "examples/demo-site.toml"
runner = CliRunner()


def _golden_cfg() -> SiteConfig:  # the conftest site, moved to where the data was measured
    cfg = make_cfg()
    site = cfg.site.model_copy(update={"latitude": 39.742, "longitude": -105.18, "timezone": "Etc/GMT+7"})
    return cfg.model_copy(update={"site": site})


def _serf(scale: float = 50.0) -> UserTraces:
    return UserTraces(pv_power=parse_map_option(f"{SERF}:column=ac_power__752,unit=W,scale={scale:g}", "--pv-power"))


def test_measured_pv_power_file_replays_with_its_energy() -> None:
    """A 1.8-day file replays (warm-up chosen by the user); PV available is the file's power, scaled."""
    cfg = _golden_cfg()
    tr = build_site_trace(cfg, None, None, start="2022-03-18T08:00", days=0.5, history_days=0.1, user=_serf())
    raw = pd.read_csv(SERF)
    raw.index = pd.to_datetime(raw["measured_on"])
    sel = raw[(raw.index >= tr.t0) & (raw.index < tr.t0 + pd.Timedelta(hours=12))]["ac_power__752"]
    res = simulate(cfg, tr, controller="static")
    s = res.series
    assert len(s) == 720
    want_kwh = float(sel.clip(lower=0).sum()) / 60.0 * 50.0 / 1e3
    got_kwh = float(s["pv_available_kw"].sum()) / 60.0
    assert got_kwh == pytest.approx(want_kwh, rel=0.01)
    k = compute_kpis(res)
    assert k["energy_balance_error_pct"] < 0.1


def test_psm3_parquet_is_accepted_like_the_csv(tmp_path: Path) -> None:
    csv, _meta = read_irradiance(PSM3)
    raw = pd.read_csv(PSM3, skiprows=2)
    idx = pd.to_datetime(raw[["Year", "Month", "Day", "Hour", "Minute"]]).dt.tz_localize("Etc/GMT+7")
    pq = tmp_path / "psm3.parquet"
    raw[["GHI", "DNI", "DHI", "Temperature", "Wind Speed"]].set_index(pd.DatetimeIndex(idx)).to_parquet(pq)
    df, _ = read_irradiance(pq)
    assert df.index[0] == csv.index[0]
    np.testing.assert_allclose(df["ghi"].to_numpy(), csv["ghi"].to_numpy())
    tr = build_site_trace(make_cfg(), pq, None, start="06-01", days=0.25, history_days=0.0)
    assert tr.df["pv_kw"].max() > 0


def test_one_minute_rmis_is_shifted_by_one_minute_not_five(tmp_path: Path) -> None:
    raw = pd.read_csv(RMIS).head(300).copy()
    t = pd.date_range("2019-02-01 00:01", periods=len(raw), freq="1min")
    raw["measured_on"] = t.strftime("%m/%d/%Y %H:%M").str.replace(r"^0", "", regex=True)
    p = tmp_path / "rmis_1min.csv"
    raw.to_csv(p, index=False)
    df, _ = read_rmis(p, max_gap_s=1e9)
    assert df.index[0] == pd.Timestamp("2019-02-01 00:00", tz="Etc/GMT+7")


def test_ac_power_csv_with_measured_on_is_not_taken_for_rmis() -> None:
    with pytest.raises(TraceError) as e:
        read_irradiance(SERF)
    msg = str(e.value)
    assert str(SERF) in msg and "--pv-power" in msg and "column=ac_power__752" in msg
    assert "format" not in msg.split("(")[0] or "unknown" not in msg


def test_load_gpu_and_price_from_user_files(tmp_path: Path) -> None:
    t = pd.date_range("2022-03-18 00:00", periods=3 * 96, freq="15min", tz="Etc/GMT+7")
    pd.DataFrame({"ts": t.tz_localize(None), "site_load_w": 20_000.0 + 1000 * np.sin(np.arange(len(t))),
                  "util": np.linspace(0, 100, len(t)), "eur": 0.2}).to_csv(tmp_path / "site.csv", index=False)
    (tmp_path / "traces.toml").write_text(
        '[load]\nfile = "site.csv"\ncolumn = "site_load_w"\nunit = "W"\ntz = "Etc/GMT+7"\n'
        '[price]\nfile = "site.csv"\ncolumn = "eur"\nunit = "1"\ntz = "Etc/GMT+7"\n'
        '[gpu.training]\nfile = "site.csv"\ncolumn = "util"\nunit = "%"\ntz = "Etc/GMT+7"\n'
        '[gaps]\npolicy = "refuse"\n'
    )
    u = read_traces_toml(tmp_path / "traces.toml")
    u.pv_power = _serf().pv_power
    cfg = _golden_cfg()
    tr = build_site_trace(cfg, None, None, start="2022-03-18T08:00", days=0.25, history_days=0.0, user=u)
    assert tr.df["other_load_kw"].between(19.0, 21.0).all()
    assert tr.df["price_per_kwh"].eq(0.2).all()
    train = tr.df["gpu_w.training"].to_numpy()
    assert cfg.gpu.idle_w <= train.min() < train.max() <= cfg.gpu.max_w and train[-1] > train[0]
    res = simulate(cfg, tr, controller="static", days=0.05)
    assert res.series["load_kw"].min() > 19.0  # the user's site load is served


def _gappy(tmp_path: Path, hole_h: float) -> Path:
    t = pd.date_range("2022-03-01", periods=3 * 24 * 60, freq="1min", tz="UTC")
    v = np.full(len(t), 5.0)
    a = 36 * 60  # the hole is on day 2 only
    v[a:a + int(hole_h * 60)] = np.nan
    p = tmp_path / "load.csv"
    pd.DataFrame({"time": t, "kw": v}).to_csv(p, index=False)
    return p


def test_gap_policy_per_window_and_configurable(tmp_path: Path) -> None:
    p = _gappy(tmp_path, 5.0)
    m = parse_map_option(f"{p}:column=kw", "--load")
    day1 = pd.date_range("2022-03-01", periods=1440, freq="1min", tz="UTC")
    day2 = day1 + pd.Timedelta(days=1)
    assert load_on_grid(m, day1, Gaps()).eq(5.0).all()  # a gap elsewhere does not refuse this window
    with pytest.raises(TraceError) as e:
        load_on_grid(m, day2, Gaps())
    msg = str(e.value)
    assert "2022-03-02 12:00:00+00:00" in msg and "5.0 h" in msg and "--max-gap-h" in msg and str(p) in msg
    assert load_on_grid(m, day2, Gaps(max_gap_s=6 * 3600)).eq(5.0).all()
    assert load_on_grid(m, day2, Gaps(GapPolicy.ZERO, 6 * 3600)).min() == 0.0
    short = _gappy(tmp_path, 0.1)
    with pytest.raises(TraceError, match="gap policy refuse"):
        load_on_grid(parse_map_option(f"{short}:column=kw", "--load"), day2, Gaps(GapPolicy.REFUSE))


def test_dst_shifted_stamps_detected_and_the_fix_works() -> None:
    cfg = _golden_cfg()
    spec = f"{DST}:column=ac_power_2,unit=W"
    with pytest.raises(TraceError) as e:
        build_site_trace(cfg, None, None, start="2012-01-10", days=0.1, history_days=0,
                         user=UserTraces(pv_power=parse_map_option(spec, "--pv-power")))
    msg = str(e.value)
    assert "daylight saving" in msg and "clock=" in msg and str(DST) in msg
    fixed = parse_map_option(spec + ",clock=America/Denver", "--pv-power")
    off = solar_noon_offsets_min(read_column(fixed), -105.18)
    summer, winter = off[off.index.month.isin([6, 7])].median(), off[off.index.month.isin([12, 1])].median()
    assert abs(summer - winter) < 30.0  # the hour is gone once the stamps are read as Denver clock time
    tr = build_site_trace(cfg, None, None, start="2012-01-10", days=0.1, history_days=0,
                          user=UserTraces(pv_power=fixed))
    assert len(tr.df) == 144


def test_cli_replays_a_user_file_and_errors_are_one_message(tmp_path: Path) -> None:
    res = runner.invoke(app, ["replay", str(DEMO), "-q", "--no-plots", "--controller", "static",
                              "--pv-power", f"{SERF}:column=ac_power__752,unit=W,scale=60,dst=ignore",
                              "--start", "2022-03-18T10:00", "--days", "0.05", "--warmup-days", "0",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r/kpi.json").exists()
    cases = {
        f"{SERF}:column=nope": ["column 'nope'", "missing", "ac_power__752"],
        f"{SERF}:unit=W": ["column=<name>"],
        f"{SERF}:column=ac_power__752,unit=parsec": ["unknown unit 'parsec'"],
        f"{SERF}:column=ac_power__752,clock=Mars/Olympus": ["clock='Mars/Olympus'", "IANA"],
        f"{SERF}:column=ac_power__752,unit=W,scale=60": ["covers", "--start"],
    }
    bad_num = tmp_path / "bad.csv"
    bad_num.write_text("time,p\n2022-03-18T00:00Z,1\n2022-03-18T00:01Z,x\n")
    cases[f"{bad_num}:column=p"] = ["row 3", "'x'", str(bad_num)]
    for spec, words in cases.items():
        r = runner.invoke(app, ["replay", str(DEMO), "-q", "--no-plots", "--pv-power", spec,
                                "--start", "2021-06-01", "--days", "0.05", "--out", str(tmp_path / "x")])
        assert r.exit_code == 2, (spec, r.output)
        assert "Traceback" not in r.output
        for w in words:
            assert w in r.output, (spec, w, r.output)


def _psm3_as_user_csv(tmp_path: Path) -> Path:
    raw = pd.read_csv(PSM3, skiprows=2)
    t = pd.to_datetime(raw[["Year", "Month", "Day", "Hour", "Minute"]])
    p = tmp_path / "my_weather.csv"
    pd.DataFrame({"stamp": t, "G": raw["GHI"], "B": raw["DNI"], "D": raw["DHI"], "T": raw["Temperature"]}
                 ).to_csv(p, index=False)
    return p


def test_user_irradiance_ghi_dni_dhi_matches_the_psm3_reader_and_ghi_alone_is_split(tmp_path: Path) -> None:
    p = _psm3_as_user_csv(tmp_path)
    cfg = make_cfg()  # moved to the PSM3 cell, so both paths model PV at the same place
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"latitude": 40.53, "longitude": -108.54,
                                                                     "altitude_m": 2168.0})})
    ref = build_site_trace(cfg, PSM3, None, start="06-01", days=1, history_days=0)
    spec = f"{p}:ghi=G,dni=B,dhi=D,temp_air=T,tz=Etc/GMT+7,label=instant,dst=ignore"
    mine = build_site_trace(cfg, None, None, start="2017-06-01", days=1, history_days=0,
                            user=UserTraces(weather=parse_weather_option(spec, "--weather")))
    e_ref, e_mine = ref.df["pv_kw"].sum(), mine.df["pv_kw"].sum()
    assert e_mine == pytest.approx(e_ref, rel=0.05)
    ghi_only = build_site_trace(cfg, None, None, start="2017-06-01", days=1, history_days=0, user=UserTraces(
        weather=parse_weather_option(f"{p}:ghi=G,tz=Etc/GMT+7,label=instant,dst=ignore", "--weather")))
    assert ghi_only.df["pv_kw"].sum() == pytest.approx(e_ref, rel=0.25)  # Erbs split, not measured DNI


def test_user_plane_of_array_irradiance(tmp_path: Path) -> None:
    t = pd.date_range("2022-06-01", periods=48, freq="1h", tz="UTC")
    p = tmp_path / "poa.parquet"
    pd.DataFrame({"time": t, "poa_w_m2": 500.0}).to_parquet(p)
    cfg = make_cfg()
    tr = build_site_trace(cfg, None, None, start="2022-06-01T06:00Z", days=0.5, history_days=0, user=UserTraces(
        weather=parse_weather_option(f"{p}:poa=poa_w_m2,dst=ignore", "--weather")))
    kwp = sum(d.limits.kwp for d in cfg.devices if d.nature.value == "pv")
    assert tr.df["pv_kw"].to_numpy() == pytest.approx(kwp * 0.5 * 0.86 * 0.96, rel=0.01)
    with pytest.raises(TraceError, match="ghi=<column>"):
        parse_weather_option(f"{p}:dni=x", "--weather")


def test_a_one_day_file_replays_its_whole_day(tmp_path: Path) -> None:
    raw = pd.read_csv(SERF)
    t = pd.to_datetime(raw["measured_on"])
    day = raw[(t >= pd.Timestamp("2022-03-18 05:00-07:00")) & (t < pd.Timestamp("2022-03-19 05:00-07:00"))]
    p = tmp_path / "one_day.csv"
    day.to_csv(p, index=False)
    assert len(day) == 1440
    u = UserTraces(pv_power=parse_map_option(f"{p}:column=ac_power__752,unit=W,scale=50", "--pv-power"))
    tr = build_site_trace(_golden_cfg(), None, None, start="2022-03-18T05:00", days=1, history_days=0, user=u)
    assert len(tr.df) == 1440 and tr.t0 == pd.Timestamp("2022-03-18 05:00-07:00")
    with pytest.raises(TraceError, match="--warmup-days"):  # a day of warm-up needs a day before the start
        build_site_trace(_golden_cfg(), None, None, start="2022-03-18T05:00", days=1, history_days=1, user=u)
    res = simulate(_golden_cfg(), tr, controller="static", days=0.05)
    assert len(res.series) == 72


def test_stamps_whose_offset_changes_with_dst_are_read(tmp_path: Path) -> None:
    p = tmp_path / "dst_offsets.csv"
    p.write_text("time,kw\n2022-03-12T10:00-07:00,1\n2022-03-12T10:01-07:00,2\n2022-03-14T10:00-06:00,3\n")
    s = read_column(parse_map_option(f"{p}:column=kw", "--load"))
    assert s.index[-1] == pd.Timestamp("2022-03-14 16:00", tz="UTC")


def test_provided_pv_forecast_comes_from_a_user_file(tmp_path: Path) -> None:
    t = pd.date_range("2022-03-18 04:00", periods=40, freq="1h", tz="Etc/GMT+7")
    p = tmp_path / "forecast.csv"
    pd.DataFrame({"issued_for": t, "fc_kw": 77.0}).to_csv(p, index=False)
    u = _serf()
    u.pv_forecast = parse_map_option(f"{p}:column=fc_kw,unit=kW,time=issued_for", "--pv-forecast-file")
    cfg = _golden_cfg()
    tr = build_site_trace(cfg, None, None, start="2022-03-18T09:00", days=0.05, history_days=0, user=u)
    assert tr.df["pv_forecast_kw"].eq(77.0).all()
    res = simulate(cfg, tr, controller="ours", pv_forecast="provided")
    assert res.controller.stats()["plans"] > 0
    pv_fc = res.forecaster.inner.pv_total_kw(600.0, np.array([60.0, 60.0, 60.0]))
    assert np.allclose(pv_fc, 77.0)
