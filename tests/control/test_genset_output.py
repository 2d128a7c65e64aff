"""Genset output (powerctl/control/genset_output.py): where the genset controller takes a base-load
setpoint (ComAp IGS-NT ExtValue1, its register named by the site), the dispatcher commands the
plan's output held to [minimum load, rating], the guard counts such a genset at that base load and
not at its rating, and the simulated plant's genset holds it while the battery balances. Where the
profile has no setpoint (DSE), nothing is commanded and the genset follows the load as before."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerctl.config import SiteConfig, parse_config
from powerctl.control.core import ControllerCore
from powerctl.control.genset_output import balance_bounds_kw, base_load_gensets, counted_kw, setpoint_kw
from powerctl.control.guard import Guard
from powerctl.control.split import slots_from_pool
from powerctl.natures import SIGNALS, Nature
from powerctl.optimizer import Plan
from powerctl.process_image import ProcessImage
from powerctl.sim.plant.port import apply_write
from powerctl.sim.plant.site import Plant

ROOT = Path(__file__).resolve().parents[2]
DEMO: dict[str, Any] = tomllib.loads((ROOT / "examples" / "demo-site.toml").read_text())


def _site(profile: str = "comap/intelisys_nt", registers: dict[str, int] | None = None) -> SiteConfig:
    data = copy.deepcopy(DEMO)
    gen = next(d for d in data["devices"] if d["nature"] == "genset")
    gen["profile"] = profile
    if registers is not None:
        gen["registers"] = registers
    return parse_config(data)


BASE = _site(registers={"ExtValue1": 391})
T = len(BASE.control.horizon_steps_s)
MARGIN_KW = BASE.control.supply_margin_kw


def _image(cfg: SiteConfig, now: float, gen_running: float, gen_kw: float, soc: float = 60.0,
           bess_kw: float = 30.0) -> ProcessImage:
    """gen1 at ``gen_kw`` and the battery at ``bess_kw``: the load beyond PV is their sum."""
    img = ProcessImage()
    for d in cfg.devices:
        for sig in SIGNALS[d.nature]:
            if not SIGNALS[d.nature][sig].writable:
                img.declare(d.name, d.nature, sig, 10.0)
    img.update("pv1", "p_kw", 40.0, now)
    img.update("bess", "soc_pct", soc, now)
    img.update("bess", "p_kw", bess_kw, now)
    img.update("gen1", "running", gen_running, now)
    img.update("gen1", "p_kw", gen_kw, now)
    return img


def _plan(genset_kw: float) -> Plan:
    return Plan(
        pv_kw=np.full((1, T), 40.0), battery_kw=np.zeros((1, T)), soc_pct=np.full((1, T + 1), 60.0),
        genset_kw=np.full((1, T), genset_kw), genset_on=np.full((1, T), True), gpu_kw=np.full((3, T), 20.0),
        unserved_kw=np.zeros(T), spill_kw=np.zeros(T), reserve_short_kw=np.zeros(T), objective_terms={}, slack=[],
        status="optimal", solver="TEST", rung="primary", solve_time_s=0.001, steps_s=np.asarray(BASE.control.horizon_steps_s),
    )


class FixedPlan:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def solve(self, inputs, deadline_s):  # type: ignore[no-untyped-def]
        return self.plan


def _core(cfg: SiteConfig, plan: Plan) -> ControllerCore:
    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.full((1, n), 40.0), np.full((3, n), 20.0), np.zeros(n)

    return ControllerCore(cfg, slots_from_pool(cfg.gpu), fc, problem=FixedPlan(plan))  # type: ignore[arg-type]


def test_only_a_genset_whose_site_names_the_base_load_register_takes_the_plan_s_output() -> None:
    assert set(base_load_gensets(BASE)) == {"gen1"}
    assert base_load_gensets(_site()) == {}  # ComAp, ExtValue1 not named: never written
    assert base_load_gensets(_site("dse/gencomm")) == {}  # no documented register


@pytest.mark.parametrize(("planned_kw", "want_kw"), [(75.0, 75.0), (10.0, 36.0), (500.0, 120.0), (float("nan"), 36.0)])
def test_dispatch_commands_the_plan_s_output_held_to_min_load_and_rating(planned_kw: float, want_kw: float) -> None:
    """gen1: 120 kW, minimum load 30 % = 36 kW; a plan that is not a number asks for the minimum load."""
    core = _core(BASE, _plan(planned_kw))
    img = _image(BASE, 100.0, gen_running=1.0, gen_kw=50.0)
    core.plan(100.0, img)
    cmd = core.dispatch(100.5, img)
    assert cmd.genset_run == {"gen1": True}
    assert cmd.genset_kw == {"gen1": pytest.approx(want_kw)}
    assert setpoint_kw(planned_kw, BASE.device("gen1")) == pytest.approx(want_kw)


@pytest.mark.parametrize(
    ("soc", "bess_kw", "gen_kw", "planned_kw", "want_kw"),
    [
        # at the SoC floor the battery delivers nothing: the genset carries the 90 kW beyond PV + margin
        (10.0, 40.0, 50.0, 40.0, 90.0 + MARGIN_KW),
        # full: the battery takes nothing, so no more than the 55 kW beyond PV - margin (above min load)
        (95.0, 5.0, 50.0, 100.0, 55.0 - MARGIN_KW),
        # full and 30 kW beyond PV now, but the plan has 100 kW there (GPUs on their way up to the
        # budget): the planned load less the battery's 60 kW still has to come from the genset
        (95.0, -10.0, 40.0, 100.0, 40.0 + MARGIN_KW),
        # full, plan at the minimum load, less load than that: the minimum load (PV gives way)
        (95.0, -10.0, 40.0, 36.0, 36.0),
        # in the middle of its window the battery balances: the plan's output stands
        (50.0, 40.0, 50.0, 40.0, 40.0),
    ],
)
def test_the_plan_s_output_is_fitted_into_what_the_battery_can_balance_now(
    soc: float, bess_kw: float, gen_kw: float, planned_kw: float, want_kw: float
) -> None:
    """gen1 120 kW (min 36), battery 60 kW each way, control.supply_margin_kw of margin."""
    core = _core(BASE, _plan(planned_kw))
    img = _image(BASE, 100.0, gen_running=1.0, gen_kw=gen_kw, soc=soc, bess_kw=bess_kw)
    core.plan(100.0, img)
    assert core.dispatch(100.5, img).genset_kw == {"gen1": pytest.approx(want_kw)}


def test_a_stale_supply_reading_leaves_the_plan_s_output_as_it_is() -> None:
    core = _core(BASE, _plan(40.0))
    img = _image(BASE, 100.0, gen_running=1.0, gen_kw=50.0, soc=10.0, bess_kw=40.0)
    core.plan(100.0, img)
    img.update("bess", "p_kw", 40.0, 80.0)  # 20 s old: stale
    assert balance_bounds_kw(BASE, img, 100.5) is None
    assert core.dispatch(100.5, img).genset_kw == {"gen1": pytest.approx(40.0)}


def test_no_base_load_while_the_genset_does_not_run_or_where_the_profile_has_none() -> None:
    core = _core(BASE, _plan(80.0))
    img = _image(BASE, 100.0, gen_running=0.0, gen_kw=0.0)  # stopped (or starting): no load to hold
    core.plan(100.0, img)
    cmd = core.dispatch(100.5, img)
    assert set(cmd.genset_run) == {"gen1"} and cmd.genset_kw == {}
    dse = _site("dse/gencomm")
    core = _core(dse, _plan(80.0))
    img = _image(dse, 100.0, gen_running=1.0, gen_kw=50.0)
    core.plan(100.0, img)
    assert core.dispatch(100.5, img).genset_kw == {}


def test_guard_counts_a_base_loaded_genset_at_its_setpoint_not_its_rating() -> None:
    guard = Guard(BASE, slots_from_pool(BASE.gpu))
    img = _image(BASE, 10.0, gen_running=1.0, gen_kw=50.0)
    assert guard.supply(img, 10.0).genset_kw == 120.0  # follows the load: output + headroom = rating
    guard.genset_base_kw["gen1"] = 45.0
    assert guard.supply(img, 10.0).genset_kw == 45.0  # held at 45 kW: no headroom for a load step
    img.update("gen1", "p_kw", 70.0, 10.0)
    assert guard.supply(img, 10.0).genset_kw == 45.0  # ramping down to its new base load: 45 soon
    guard.genset_base_kw["gen1"] = 110.0
    img.update("gen1", "p_kw", 50.0, 10.0)
    rise_kw = BASE.device("gen1").limits.ramp_kw_per_s * BASE.control.guard_period_s  # 20 kW/s x 0.2 s
    assert guard.supply(img, 10.0).genset_kw == pytest.approx(50.0 + rise_kw)  # ramping up: at its ramp
    img.update("gen1", "running", 0.0, 10.0)
    assert guard.supply(img, 10.0).genset_kw == 0.0
    assert counted_kw(120.0, 200.0, 150.0) == 120.0  # never above the rating
    assert counted_kw(120.0, 80.0, 30.0) == 80.0  # no ramp limit given: at its base load at once


def test_observe_only_assumes_no_base_load_was_sent() -> None:
    data = copy.deepcopy(DEMO)
    gen = next(d for d in data["devices"] if d["nature"] == "genset")
    gen.update(profile="comap/intelisys_nt", registers={"ExtValue1": 391})
    data["control"]["observe_only"] = True
    cfg = parse_config(data)
    guard = Guard(cfg, slots_from_pool(cfg.gpu))
    guard.genset_base_kw["gen1"] = 60.0
    img = _image(cfg, 10.0, gen_running=1.0, gen_kw=50.0)
    assert guard.supply(img, 10.0).genset_kw == 120.0  # nothing was written: the genset follows the load


def _running_plant(cfg: SiteConfig, load_kw: float) -> Plant:
    plant = Plant(cfg, pv_kw_fn=lambda t: 0.0, other_load_kw=load_kw, genset_start_delay_s=0.0, genset_cooldown_s=0.0)
    plant.set_gpu_caps_w(np.full(plant.gpu.n, cfg.gpu.min_w))  # GPUs at their floor
    apply_write(plant, Nature.GENSET, "gen1", "start_cmd", 1.0)
    t = 0.0
    while not plant.genset_running("gen1"):
        t += 10.0
        plant.step(t)
        assert t < 3600.0, "the simulated genset never started"
    return plant


def test_plant_genset_holds_its_base_load_and_the_battery_takes_the_balance() -> None:
    plant = _running_plant(BASE, load_kw=20.0)  # + the GPUs at their floor: about 62 kW
    t = plant.t_s
    plant.step(t + 1.0)
    follows = plant.genset_kw("gen1")
    assert apply_write(plant, Nature.GENSET, "gen1", "p_set_kw", 45.0)
    for k in range(1, 20):  # 20 kW/s ramp: from where it was to 45 kW
        plant.step(t + 1.0 + k)
    assert follows > 50.0  # it carried the whole load while it followed it
    assert plant.genset_kw("gen1") == pytest.approx(45.0)
    assert plant.unserved_kw_now == 0.0
    assert plant.battery_kw("bess") == pytest.approx(plant.load_kw - 45.0, abs=0.01)  # the balance
    assert plant.battery_kw("bess") > 10.0
    plant._other = 50.0  # a load step of 30 kW: the base-loaded genset does not pick it up, the battery does
    plant.step(plant.t_s + 1.0)
    assert plant.genset_kw("gen1") == pytest.approx(45.0)
    assert plant.unserved_kw_now == 0.0
    assert plant.battery_kw("bess") == pytest.approx(plant.load_kw - 45.0, abs=0.01)
    assert plant.battery_kw("bess") > 40.0


def test_a_plant_without_anything_else_to_balance_keeps_its_genset_following_the_load() -> None:
    data = copy.deepcopy(DEMO)
    data["devices"] = [d for d in data["devices"] if d["nature"] != "battery"]
    gen = next(d for d in data["devices"] if d["nature"] == "genset")
    gen.update(profile="comap/intelisys_nt", registers={"ExtValue1": 391})
    plant = _running_plant(parse_config(data), load_kw=50.0)
    apply_write(plant, Nature.GENSET, "gen1", "p_set_kw", 45.0)
    for _ in range(9):
        plant.step(plant.t_s + 1.0)
    assert plant.genset_kw("gen1") == pytest.approx(plant.load_kw)  # the only grid-former: isochronous
    assert plant.load_kw > 60.0
    assert plant.unserved_kw_now == 0.0


def test_replay_with_a_base_load_genset_holds_the_plan_s_output_and_serves_the_load() -> None:
    """The production loop over the plant (sim/replay.py) on a night with a low battery: the genset
    runs, is held at the plan's output (never below its minimum load), and the load is served."""
    from powerctl.sim.kpi import compute_kpis
    from powerctl.sim.replay import simulate
    from powerctl.sim.traces import build_site_trace
    from powerctl.sim.traces.site_trace import DATA_DIR
    from tests.sim.conftest import site_dict

    data = site_dict()
    gen = next(d for d in data["devices"] if d["nature"] == "genset")
    gen.update(profile="comap/intelisys_nt", registers={"ExtValue1": 391})
    cfg = parse_config(data)
    trace = build_site_trace(cfg, DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv",
                             DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv", start="06-01", days=1, history_days=1)
    res = simulate(cfg, trace, controller="ours", days=0.15, soc0_pct=22.0, solve_deadline_s=5.0)
    s = res.series
    lim = cfg.device("gen1").limits
    held = s[s["genset_set_kw"] > 0]
    assert len(held) > 30, "the genset never ran on a base load"
    assert (held["genset_set_kw"] >= lim.rating_kw * lim.min_load_pct / 100 - 1e-6).all()
    assert (held["genset_set_kw"] <= lim.rating_kw + 1e-6).all()
    # it delivers what it is held at (a minute's ramp of 20 kW/s covers any change of setpoint)
    assert (held["genset_kw"] - held["genset_set_kw"]).abs().max() < 0.01
    k = compute_kpis(res)
    assert k["energy_balance_error_pct"] < 0.1
    assert s["unserved_kw"].max() < 1.0, s["unserved_kw"].max()
    assert k["limit_violations"]["soc_outside_window"] == 0
