"""Tariffs: time-of-use with seasons, price series from CSV, billing periods, the running peak
across restarts, config errors naming field and problem, and the planner's grid inputs."""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import ConfigError, load_config
from powerctl.control.planner import build_inputs, site_params
from powerctl.grid_billing import GridBilling, PeakTracker
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage, Quality
from powerctl.tariff_config import BillingPeriod
from powerctl.tariffs import TariffPrices, load_price_csv

ROOT = Path(__file__).resolve().parents[2]
GRID = ROOT / "examples" / "grid-site.toml"


def utc(y: int, mo: int, d: int, h: float = 0.0) -> float:
    return calendar.timegm((y, mo, d, 0, 0, 0)) + h * 3600.0


def test_time_of_use_picks_season_weekday_and_local_hour() -> None:
    tariff = load_config(GRID).tariff
    assert tariff is not None
    prices = TariffPrices(tariff)
    hourly = np.full(24, 3600.0)
    # Wednesday 2025-07-16 00:00 local (UTC-5) = 05:00 UTC: summer.
    hp = prices.horizon(utc(2025, 7, 16, 5.0), hourly)
    assert hp.source == "tou:summer/night"
    assert hp.import_per_kwh[:6].tolist() == [0.08] * 6
    assert hp.import_per_kwh[14:19].tolist() == [0.42] * 5  # weekday peak 14-19 h local
    assert hp.import_per_kwh[10] == 0.16  # the season's base price
    # Saturday: no peak period.
    sat = prices.horizon(utc(2025, 7, 19, 5.0), hourly)
    assert sat.import_per_kwh[14:19].tolist() == [0.16] * 5
    # Winter Monday: its own peak window.
    win = prices.horizon(utc(2025, 1, 13, 5.0), hourly)
    assert win.source == "tou:winter/night"
    assert win.import_per_kwh[17:21].tolist() == [0.34] * 4 and win.import_per_kwh[16] == 0.13
    assert np.all(hp.export_per_kwh == 0.03) and hp.co2_kg_per_kwh is not None


def test_price_series_overrides_the_schedule_where_it_covers(tmp_path: Path) -> None:
    t0 = utc(2025, 7, 16, 5.0)
    csv = tmp_path / "prices.csv"
    csv.write_text("t_s,import_price_per_kwh,export_price_per_kwh\n"
                   + "".join(f"{t0 + 3600 * k:.0f},{0.5 + k / 100},{-0.02}\n" for k in range(4)))
    tariff = load_config(GRID).tariff
    assert tariff is not None
    prices = TariffPrices(tariff, load_price_csv(csv))
    hp = prices.horizon(t0 + 1800.0, np.full(8, 1800.0))
    assert hp.source == f"csv:{csv}"
    np.testing.assert_allclose(hp.import_per_kwh[:7], [0.50, 0.51, 0.51, 0.52, 0.52, 0.53, 0.53])
    assert hp.import_per_kwh[7] == 0.08  # past the series' end: the schedule again
    assert hp.export_per_kwh[0] == -0.02 and hp.export_per_kwh[7] == 0.03


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t,price\n1,2\n", "line 1: header 't,price'"),
        ("t_s,import_price_per_kwh\n1,0.2\n2,abc\n", "line 3: import_price_per_kwh: 'abc' is not a number"),
        ("t_s,import_price_per_kwh\n1,0.2\n2,nan\n", "line 3: import_price_per_kwh: 'nan' is not finite"),
        ("t_s,import_price_per_kwh\n5,0.2\n5,0.3\n", "line 3: t_s 5 is not after the previous row's 5"),
        ("t_s,import_price_per_kwh\n5,0.2,1\n", "line 2: 3 fields, the header has 2"),
        ("t_s,import_price_per_kwh\n5,250\n", "line 2: import_price_per_kwh: 250.0 is outside [-10, 100]"),
        ("t_s,import_price_per_kwh\n", "no price rows"),
    ],
)
def test_bad_price_csv_names_file_line_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "p.csv"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_price_csv(p)
    assert str(p) in str(exc.value) and expected in str(exc.value), str(exc.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("start_h = 14.0, end_h = 19.0", "start_h = 19.0, end_h = 14.0",
         "tariff.seasons[0].periods[0]: end_h (14.0) must be after start_h (19.0)"),
        ("months = [1, 2, 3, 4, 5, 10, 11, 12]", "months = [1, 2, 3, 4, 5, 9, 10, 11, 12]",
         "tariff: seasons: month 9 is in both 'summer' and 'winter'"),
        ('billing_period = "month"', 'billing_period = "quarter"', "tariff.billing_period"),
        ("demand_charge_per_kw = 12.0", "demand_charge_per_kw = -1.0", "tariff.demand_charge_per_kw"),
        ('days = ["mon", "tue"', 'days = ["mon", "tues"', "tariff.seasons[0].periods[0].days[1]"),
    ],
)
def test_bad_tariff_config_names_field_and_problem(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = GRID.read_text()
    assert old in text
    p = tmp_path / "site.toml"
    p.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value) and expected in str(exc.value), str(exc.value)


def test_billing_period_splits_the_horizon_at_the_month_end() -> None:
    tariff = load_config(GRID).tariff
    assert tariff is not None
    # 2025-07-31 20:00 local = 2025-08-01 01:00 UTC; four hours later it is August locally.
    hp = TariffPrices(tariff).horizon(utc(2025, 8, 1, 1.0), np.full(8, 3600.0))
    assert hp.in_billing_period.tolist() == [True] * 4 + [False] * 4
    # Pro rata: 8 h of horizon over the 4 h left in July (full rate), 8 h of August's 744 h.
    assert hp.demand_charge_per_kw == 12.0
    assert hp.demand_charge_next_per_kw == pytest.approx(12.0 * 8 / 744)
    # Early in the month a day's plan prices the peak at 1/(days left) of the rate.
    early = TariffPrices(tariff).horizon(utc(2025, 7, 1, 5.0), np.full(24, 3600.0))
    assert early.demand_charge_per_kw == pytest.approx(12.0 / 31) and early.in_billing_period.all()


def test_running_peak_survives_a_restart_and_resets_with_the_period(tmp_path: Path) -> None:
    path = tmp_path / "demand_peak.json"
    t = utc(2025, 7, 10)
    a = PeakTracker(BillingPeriod.MONTH, 0.0, path)
    a.load(t)
    a.update(t, 80.0)
    a.update(t + 60, 60.0)
    assert a.peak_kw(t + 60) == 80.0
    b = PeakTracker(BillingPeriod.MONTH, 0.0, path)  # a restart
    b.load(t + 3600)
    assert b.peak_kw(t + 3600) == 80.0 and b.note == ""
    c = PeakTracker(BillingPeriod.MONTH, 0.0, path)
    c.load(utc(2025, 8, 2))  # next month: the stored peak does not count
    assert c.peak_kw(utc(2025, 8, 2)) == 0.0 and "earlier billing period" in c.note
    for bad in ('{"period": "month", "key": 1, "peak_kw": -5}', "not json", "x" * 5000, "[1, 2]",
                '{"period": "month", "key": 666, "peak_kw": true}'):
        path.write_text(bad)
        d = PeakTracker(BillingPeriod.MONTH, 0.0, path)
        d.load(t)
        assert d.peak_kw(t) == 0.0 and "stored peak ignored" in d.note, bad
    # A state directory that cannot be written: the peak is kept in memory, planning goes on.
    e = PeakTracker(BillingPeriod.MONTH, 0.0, tmp_path / "missing" / "demand_peak.json")
    e.load(t)
    e.update(t, 42.0)
    assert e.peak_kw(t) == 42.0 and e.note.startswith("cannot store")


def _image(cfg_path: Path, now_s: float, meter_kw: float | None) -> tuple[object, ProcessImage]:
    cfg = load_config(cfg_path)
    img = ProcessImage()
    signal = {Nature.BATTERY: "soc_pct", Nature.GENSET: "running", Nature.METER: "p_kw", Nature.PV: "p_kw"}
    for d in cfg.devices:
        img.declare(d.name, d.nature, signal[d.nature], max_age_s=5.0)
    if meter_kw is not None:
        img.update("grid", "p_kw", meter_kw, now_s)
    return cfg, img


def test_planner_plans_islanded_while_the_meter_is_stale() -> None:
    now = utc(2025, 7, 16, 5.0)
    cfg, img = _image(GRID, now, 40.0)
    params = site_params(cfg)  # type: ignore[arg-type]
    assert params.grid is not None and params.grid.import_max_kw == 150.0
    T = params.horizon_steps
    billing = GridBilling(cfg)  # type: ignore[arg-type]

    def inputs(at: float) -> object:
        return build_inputs(cfg, img, at, np.zeros((1, T)), np.zeros((3, T)), np.zeros(3), np.zeros(1),  # type: ignore[arg-type]
                            prices=billing.horizon(at, params.steps_s), peak_import_kw=billing.observe(at, img))

    fresh = inputs(now)
    assert fresh.grid_import_max_kw is None  # type: ignore[attr-defined]  # the nameplate
    assert fresh.peak_import_kw == 40.0  # type: ignore[attr-defined]
    assert fresh.import_price_per_kwh[0] == 0.08  # type: ignore[attr-defined]
    stale = inputs(now + 60.0)  # the meter's reading is a minute old
    assert img.get("grid", "p_kw", now + 60.0).quality is not Quality.GOOD
    assert np.all(stale.grid_import_max_kw == 0.0) and np.all(stale.grid_export_max_kw == 0.0)  # type: ignore[attr-defined]
    assert stale.peak_import_kw == 40.0  # type: ignore[attr-defined]  # the peak so far stays
    assert [d.nature for d in cfg.devices].count(Nature.METER) == 1  # type: ignore[attr-defined]


def test_the_plan_carries_prices_and_their_source() -> None:
    from powerctl.grid_billing import plan_grid_fields, plan_grid_payload
    from powerctl.optimizer import DispatchProblem

    now = utc(2025, 7, 16, 19.0)  # 14:00 local, a summer weekday: peak price
    cfg, img = _image(GRID, now, 120.0)
    img.update("bess", "soc_pct", 60.0, now)
    params = site_params(cfg)  # type: ignore[arg-type]
    T = params.horizon_steps
    billing = GridBilling(cfg)  # type: ignore[arg-type]
    x = build_inputs(cfg, img, now, np.full((1, T), 50.0), np.full((3, T), 20.0), np.zeros(3), np.zeros(1),  # type: ignore[arg-type]
                     prices=billing.horizon(now, params.steps_s), peak_import_kw=billing.observe(now, img))
    plan = DispatchProblem(params).solve(x, deadline_s=10)
    assert plan.rung == "primary", plan.explain()
    fields = plan_grid_fields(plan)
    assert fields["price_source"] == "tou:summer/peak" and fields["import_price_per_kwh"] == 0.42
    assert fields["peak_import_kw"] >= 120.0  # the measured peak is the floor
    payload = plan_grid_payload(plan)
    assert len(payload["import_price_per_kwh"]) == T and payload["price_source"] == "tou:summer/peak"


def test_planner_plans_islanded_while_the_meter_shows_the_grid_gone() -> None:
    now = utc(2025, 7, 16, 5.0)
    cfg = load_config(GRID)
    img = ProcessImage()
    signal = {Nature.BATTERY: ["soc_pct"], Nature.GENSET: ["running"], Nature.METER: ["p_kw", "v_v"],
              Nature.PV: ["p_kw"]}
    for d in cfg.devices:
        for s in signal[d.nature]:
            img.declare(d.name, d.nature, s, max_age_s=5.0)
    T = site_params(cfg).horizon_steps

    def limits(v_v: float) -> object:
        img.update("grid", "p_kw", 0.0, now)
        img.update("grid", "v_v", v_v, now)
        x = build_inputs(cfg, img, now, np.zeros((1, T)), np.zeros((3, T)), np.zeros(3), np.zeros(1))
        return x.grid_import_max_kw

    assert limits(231.0) is None  # a live grid (0 kW flowing is fine): the nameplate
    assert np.all(limits(0.0) == 0.0)  # the meter answers and shows 0 V: islanded
