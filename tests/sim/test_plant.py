"""Plant physics: power balance every step, device limits, genset state machine, PV demo curve."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerctl.config import parse_config
from powerctl.sim.plant import Plant, demo_pv_kw_fn
from powerctl.sim.plant.battery import Battery
from powerctl.sim.plant.genset import Genset, GensetStatus
from powerctl.sim.plant.pv import clear_sky_shape
from powerctl.sim.traces.site_trace import DATA_DIR
from tests.sim.conftest import make_cfg, site_dict


def _balance_residual_kwh(p: Plant) -> float:
    e = p.e
    supply = (
        e["pv"]
        + e["battery_discharge"]
        - e["battery_charge"]
        + e["genset"]
        + e["grid_import"]
        - e["grid_export"]
    )
    return supply + e["unserved"] - e["load"] - e["spill"]


def test_step_balance_identity_each_step() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 60.0 + 40.0 * np.sin(t / 300.0))
    p.set_gpu_caps_w([300.0] * 64)
    for t in range(0, 3600, 7):
        p.step(float(t))
        s = p.snapshot()
        lhs = s["pv_kw"] + s["battery_kw"] + s["genset_kw"] + s["grid_kw"] + s["unserved_kw"]
        assert lhs == pytest.approx(s["load_kw"] + s["spill_kw"], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    pv=st.lists(st.floats(0, 150), min_size=5, max_size=40),
    caps=st.floats(100, 400),
    run_gen=st.booleans(),
    bat_set=st.floats(-150, 150),
    soc0=st.floats(0, 100),
)
def test_energy_balance_and_limits_property(
    pv: list[float], caps: float, run_gen: bool, bat_set: float, soc0: float
) -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: pv[int(t // 60) % len(pv)], soc0_pct=soc0)
    p.set_gpu_caps_w([caps] * 64)
    p.set_genset_run("gen1", run_gen)
    stored0 = p.stored_kwh()
    for k in range(1, len(pv) + 1):
        p.set_battery_kw("bat1", bat_set)
        p.step(60.0 * k)
        b = p.batteries["bat1"]
        assert -b.max_charge_kw - 1e-9 <= b.p_kw <= b.max_discharge_kw + 1e-9
        assert b.soc_min_pct - 1e-9 <= b.soc_pct <= b.soc_max_pct + 1e-9
        g = p.gensets["gen1"]
        assert g.p_kw == 0.0 or g.min_kw - 1e-9 <= g.p_kw <= g.rating_kw + 1e-9
        assert p.pv_kw("pv1") <= p.pv_available_kw("pv1") + 1e-9
        assert p.unserved_kw() >= 0 and p.spill_kw >= 0
    assert abs(_balance_residual_kwh(p)) < 1e-6
    # cells: what went in minus what came out minus losses = stored change
    e = p.e
    d_stored = p.stored_kwh() - stored0
    assert d_stored == pytest.approx(
        e["battery_charge"] - e["battery_discharge"] - p.battery_loss_kwh(), abs=1e-6
    )


def test_battery_full_curtails_pv_and_empty_leaves_unserved() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 100.0, soc0_pct=95.0)
    p.set_gpu_caps_w([100.0] * 64)
    p.step(60.0)
    assert p.battery_kw("bat1") == 0.0
    assert p.pv_kw("pv1") == pytest.approx(p.site_load_kw())
    assert p.pv_state("pv1") == 5  # throttled
    q = Plant(make_cfg(), pv_kw_fn=lambda t: 0.0, soc0_pct=10.0)
    q.set_gpu_caps_w([400.0] * 64)
    q.step(60.0)
    assert q.battery_kw("bat1") == 0.0
    assert q.unserved_kw() == pytest.approx(q.site_load_kw())


def test_battery_taper_near_soc_ends() -> None:
    b = Battery("b", 200, 100, 100, soc_min_pct=10, soc_max_pct=95, soc_pct=12.5, taper_pct=5)
    assert b.discharge_limit_kw() == pytest.approx(50.0)
    assert b.charge_limit_kw() == pytest.approx(100.0)
    b.soc_pct = 94.0
    assert b.charge_limit_kw() == pytest.approx(20.0)
    # one step cannot cross the window: 0.5 % = 1 kWh left above the floor, asked for an hour
    b.soc_pct = 10.5
    p = b.apply(100.0, 3600.0)
    assert b.soc_pct == pytest.approx(10.0)
    assert p == pytest.approx(1.0 * 0.95, rel=1e-9)  # 1 kWh of cells at 95 % discharge efficiency


def test_genset_sequence_timing_fuel_and_runtime() -> None:
    g = Genset(
        "g", 150, 30, 0.015, 0.25, start_delay_s=10, warmup_s=60, cooldown_s=60, tank_l=100, fuel_l=100
    )
    g.command(True)
    g.advance_state(5)
    assert g.status is GensetStatus.PRE_START and g.starts == 1
    g.advance_state(10)
    assert g.status is GensetStatus.WARMING_UP
    g.advance_state(54)  # 59 s into the 60 s warm-up
    assert g.status is GensetStatus.WARMING_UP
    g.advance_state(2)
    assert g.status is GensetStatus.RUNNING
    assert g.clamp_kw(10.0, 1.0) == pytest.approx(45.0)  # min load
    assert g.clamp_kw(500.0, 1.0) == pytest.approx(150.0)
    g.deliver(100.0, 3600.0)
    assert g.fuel_used_l == pytest.approx(0.015 * 150 + 0.25 * 100)
    assert g.run_time_s == pytest.approx(3600.0)
    g.command(False)
    g.advance_state(30)
    assert g.status is GensetStatus.COOLING_DOWN
    g.command(True)
    g.advance_state(1)
    assert g.status is GensetStatus.RUNNING and g.starts == 1  # warm restart, not a new start
    g.command(False)
    g.advance_state(61)
    assert g.status is GensetStatus.STOPPED


def test_genset_follows_net_load_and_battery_charge_preference() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 0.0, soc0_pct=50.0)
    p.set_gpu_caps_w([400.0] * 64)
    p.set_genset_run("gen1", True)
    for t in range(1, 200):
        p.step(float(t))
    assert p.genset_status("gen1") == 3 and p.genset_running("gen1")
    assert p.genset_kw("gen1") == pytest.approx(max(p.site_load_kw(), 45.0), rel=1e-6)
    p.set_battery_kw("bat1", -40.0)
    p.step(201.0)
    assert p.genset_kw("gen1") == pytest.approx(p.site_load_kw() + 40.0, rel=1e-6)
    assert p.battery_kw("bat1") == pytest.approx(-40.0, rel=1e-6)


def test_gpu_caps_clamped_and_power_follows_min_cap_demand() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 50.0, gpu_demand_fn=lambda t: {"inference": 180.0})
    enforced = p.set_gpu_caps_w([50.0] * 32 + [500.0] * 32)
    assert enforced.min() == 100.0 and enforced.max() == 400.0
    p.step(30.0)
    w = p.gpu_power_w()
    assert np.allclose(w[:32], 100.0)  # training capped at the clamp floor
    assert np.allclose(w[32:48], 180.0)  # inference limited by its demand
    assert np.allclose(w[48:], 400.0)
    assert p.gpu_power_kw() == pytest.approx((32 * 100 + 16 * 180 + 16 * 400) / 1000)


def test_gpu_lag() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 50.0, gpu_tau_s=1.0)
    p.set_gpu_caps_w([400.0] * 64)
    p.step(0.5)
    assert 60.0 < p.gpu_power_w()[0] < 400.0


def test_time_backwards_rejected() -> None:
    p = Plant(make_cfg())
    p.step(10.0)
    with pytest.raises(ValueError, match="backwards"):
        p.step(5.0)


def test_demo_pv_cloud_dip_visible_within_three_minutes() -> None:
    fn = demo_pv_kw_fn(100.0, time_scale=20.0, start_hour=11.0)
    clear = fn(30.0)
    cloudy = fn(90.0)  # 1,800 simulated s in: mid-cloud
    after = fn(170.0)
    assert clear > 70.0
    assert cloudy == pytest.approx(0.4 * 100 * 0.85 * clear_sky_shape(11.5), rel=1e-6)
    assert after > 2 * cloudy
    assert demo_pv_kw_fn(100.0, time_scale=20.0, start_hour=22.0)(0.0) == 0.0


def test_grid_connected_battery_follows_setpoint() -> None:
    p = Plant(make_cfg(grid_import_kw=100.0), pv_kw_fn=lambda t: 0.0)
    p.set_gpu_caps_w([400.0] * 64)
    p.set_battery_kw("bat1", 10.0)
    p.step(60.0)
    assert p.battery_kw("bat1") == pytest.approx(10.0)
    assert p.meter_kw() == pytest.approx(p.site_load_kw() - 10.0)


def test_fuel_fit_from_shared_genset_points() -> None:
    from powerctl.sim.plant.genset import fuel_coeffs_from_points

    f0, f1 = fuel_coeffs_from_points(
        DATA_DIR / "genset/genset_fuel_points.csv", "cummins_qsk23_g3_fr50011", 701
    )
    assert f1 == pytest.approx(0.217, abs=0.005)  # data README: F1 ≈ 0.217 L/kWh, F0 ≈ 0.011 L/h per kW
    assert f0 == pytest.approx(0.011, abs=0.002)
    with pytest.raises(ValueError, match="fewer than 2 usable rows"):
        fuel_coeffs_from_points(DATA_DIR / "genset/genset_fuel_points.csv", "nope")


def test_pvlib_model_kwp_orientation_temperature() -> None:
    import pandas as pd

    from powerctl.sim.plant.pv import pv_ac_kw_from_weather

    idx = pd.date_range("2021-06-21 06:00", periods=12, freq="1h", tz="Etc/GMT+5")
    w = pd.DataFrame(
        {"ghi": 800.0, "dni": 700.0, "dhi": 100.0, "temp_air": 20.0, "wind_speed": 1.0}, index=idx
    )
    kw = {"latitude": 36.1, "longitude": -79.95, "altitude_m": 273.0, "tilt_deg": 25.0}
    south = pv_ac_kw_from_weather(w, kwp=100, azimuth_deg=180, **kw)
    north = pv_ac_kw_from_weather(w, kwp=100, azimuth_deg=0, **kw)
    hot = pv_ac_kw_from_weather(w.assign(temp_air=40.0), kwp=100, azimuth_deg=180, **kw)
    double = pv_ac_kw_from_weather(w, kwp=200, azimuth_deg=180, max_ac_kw=1000, **kw)
    assert south.sum() > north.sum()
    assert hot.sum() < south.sum() * 0.97  # about -0.4 %/K
    assert double.sum() == pytest.approx(2 * south.sum(), rel=1e-6)
    assert south.max() <= 100.0


def test_plant_curves_match_planner_table() -> None:
    from powerctl.sim.plant.gpu_cluster import get_curve
    from powerctl.throughput import throughput_curve

    for gpu, name in (("A100", "infer_llama_8b"), ("A100", "pt_mpt_7b_fast"), ("A40", "resnet50"), ("V100", "resnet50")):
        frac, tput = throughput_curve(gpu, name)
        np.testing.assert_allclose(get_curve(gpu, name)(frac), tput)
    frac, tput = throughput_curve("A40", "ncf")  # a measured dip is flattened for the plant
    assert np.all(np.diff(get_curve("A40", "ncf")(frac)) >= 0) and np.any(np.diff(tput) < 0)


def test_empty_tank_stops_engine_and_refill_counts_deliveries() -> None:
    g = Genset("g", 100, 30, 0.015, 0.25, start_delay_s=0, warmup_s=0, tank_l=10, fuel_l=10)
    g.command(True)
    g.advance_state(1)
    assert g.running
    g.deliver(100.0, 3600.0)  # wants 26.5 L, has 10
    assert g.fuel_l == 0 and g.fuel_used_l == pytest.approx(10)
    g.advance_state(1)
    assert g.status is GensetStatus.STOPPED and not g.running
    r = Genset(
        "r", 100, 30, 0.015, 0.25, start_delay_s=0, warmup_s=0, tank_l=100, fuel_l=100, refill_below_pct=20
    )
    r.command(True)
    r.advance_state(1)
    for _ in range(60):  # 10 h at full load in 10-minute steps: 265 L from a 100 L tank
        r.deliver(100.0, 600.0)
    assert r.fuel_used_l == pytest.approx(265.0)  # nothing was lost to an empty tank
    assert r.deliveries == 3 and r.fuel_pct >= 20


def _two_battery_island(other_load_kw: float = 0.0) -> Plant:
    d = site_dict()
    bat2 = {**next(x for x in d["devices"] if x["name"] == "bat1"), "name": "bat2"}
    bat2["transport"] = {**bat2["transport"], "port": 15024}
    d["devices"].append(bat2)
    return Plant(parse_config(d), pv_kw_fn=lambda t: 0.0, other_load_kw=other_load_kw)


def test_island_second_battery_follows_its_setpoint_first_takes_the_residual() -> None:
    p = _two_battery_island()
    assert p.grid_former == "bat1"  # the first battery of the site forms the grid
    p.set_gpu_caps_w([400.0] * 64)
    for k, (sp1, sp2) in enumerate([(0.0, -20.0), (30.0, 35.0), (-50.0, 12.5)], start=1):
        p.set_battery_kw("bat1", sp1)
        p.set_battery_kw("bat2", sp2)
        p.step(60.0 * k)
        s = p.snapshot()
        assert p.battery_kw("bat2") == pytest.approx(sp2)  # grid-following: its own setpoint
        # the grid-forming battery closes the balance (the genset is stopped, no PV): no shortfall
        assert p.battery_kw("bat1") == pytest.approx(s["load_kw"] - sp2)
        assert s["unserved_kw"] == pytest.approx(0.0) and s["spill_kw"] == pytest.approx(0.0)
    assert abs(_balance_residual_kwh(p)) < 1e-9


def test_island_followers_cover_what_the_grid_forming_battery_cannot() -> None:
    p = _two_battery_island(other_load_kw=150.0)
    p.set_gpu_caps_w([400.0] * 64)
    p.set_battery_kw("bat2", -100.0)  # a charge setpoint the island cannot afford with bat1 at 100 kW
    p.step(60.0)
    s = p.snapshot()
    load_kw = s["load_kw"]
    assert load_kw > 100.0  # more than bat1 alone can discharge
    assert p.battery_kw("bat1") == pytest.approx(100.0)
    assert p.battery_kw("bat2") == pytest.approx(load_kw - 100.0)  # frequency-watt: it discharges instead
    assert s["unserved_kw"] == pytest.approx(0.0)
    assert abs(_balance_residual_kwh(p)) < 1e-9


def test_island_single_battery_still_takes_the_whole_balance() -> None:
    p = Plant(make_cfg(), pv_kw_fn=lambda t: 0.0)
    p.set_gpu_caps_w([300.0] * 64)
    p.set_battery_kw("bat1", -40.0)
    p.step(60.0)
    assert p.battery_kw("bat1") == pytest.approx(p.snapshot()["load_kw"])
