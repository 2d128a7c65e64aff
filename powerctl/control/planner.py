"""Planner glue: site config -> optimizer parameters; process image + forecasts -> optimizer inputs.

Pure functions (no I/O, the clock is an argument). Stale inputs are replaced by their worst case
before the optimizer sees them: a stale SoC plans from the bottom of the window, a stale PV reading
forecasts from zero, and an unknown genset state is taken as "off". Value curves come from the
packaged GPU curve table (``powerctl.throughput``), read once when the config is validated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from powerctl.config import SiteConfig
from powerctl.control.plausibility import _declared, grid_shown_present
from powerctl.control.split import GpuSlot
from powerctl.control.value_curves import class_value_pwl
from powerctl.natures import Nature
from powerctl.optimizer import (
    BatteryParams,
    DispatchInputs,
    GensetParams,
    GpuClassParams,
    GridParams,
    PvParams,
    SiteParams,
)
from powerctl.process_image import ProcessImage, Quality
from powerctl.tariffs import HorizonPrices
from powerctl.throughput import throughput_curve


def gpu_floor_kw(cfg: SiteConfig, slots: Sequence[GpuSlot] | None = None) -> dict[str, float]:
    """Per class, the least its GPUs can draw: the sum of their minimum caps (a GPU the dispatcher
    releases is parked at its minimum cap, see powerctl.control.core), or the class's `floor_pct`
    share of its maximum if that is higher. `slots` give each GPU's own range (narrowed by the
    device); without them every GPU has the pool's `min_w`. A class the guard sheds draws only idle
    power, less than this: the plan then overestimates the load, the safe side."""
    out: dict[str, float] = {}
    for c in cfg.gpu.classes:
        mins_w = ([s.min_w for s in slots if s.klass == c.name] if slots is not None
                  else [cfg.gpu.min_w] * c.gpus)
        p_max_kw = c.gpus * cfg.gpu.max_w / 1000.0
        out[c.name] = min(p_max_kw, max(p_max_kw * c.floor_pct / 100.0, sum(mins_w) / 1000.0))
    return out


def site_params(cfg: SiteConfig, slots: Sequence[GpuSlot] | None = None) -> SiteParams:
    """Optimizer parameters for a site (built once at start-up); `slots` as for `gpu_floor_kw`."""
    ctl = cfg.control
    pv = [PvParams(name=d.name, kwp=d.limits.max_ac_kw or d.limits.kwp) for d in cfg.by_nature(Nature.PV)]
    bats = [
        BatteryParams(
            name=d.name,
            capacity_kwh=d.limits.capacity_kwh,
            max_charge_kw=d.limits.max_charge_kw,
            max_discharge_kw=d.limits.max_discharge_kw,
            soc_min_pct=d.limits.soc_min_pct,
            soc_max_pct=d.limits.soc_max_pct,
            eta_charge=d.limits.eta_charge,
            eta_discharge=d.limits.eta_discharge,
            wear_cost_per_kwh=d.limits.wear_cost_per_kwh,
            terminal_value_per_kwh=d.limits.terminal_value_per_kwh,
            ramp_kw_per_s=float("inf") if d.limits.ramp_kw_per_s is None else d.limits.ramp_kw_per_s,
        )
        for d in cfg.by_nature(Nature.BATTERY)
    ]
    gens = []
    for d in cfg.by_nature(Nature.GENSET):
        g = d.limits
        f0, f1 = g.fuel_coeffs()
        gens.append(
            GensetParams(
                name=d.name,
                rating_kw=g.rating_kw,
                min_load_kw=g.rating_kw * g.min_load_pct / 100.0,
                f0_l_per_h=f0 * g.rating_kw,
                f1_l_per_kwh=f1,
                fuel_price_per_l=g.fuel_price_per_l,
                start_cost=g.start_cost,
                min_up_s=g.min_up_s,
                min_down_s=g.min_down_s,
                warmup_s=g.warmup_s,
                ramp_kw_per_s=float("inf") if g.ramp_kw_per_s is None else g.ramp_kw_per_s,
            )
        )
    pool = cfg.gpu
    floors_kw = gpu_floor_kw(cfg, slots)
    classes = []
    for c in pool.classes:
        frac, tput = throughput_curve(pool.model, c.curve)
        bp_kw, v_per_h = class_value_pwl(frac, tput, c.gpus, pool.max_w, c.value_per_kwh)
        p_max_kw = c.gpus * pool.max_w / 1000.0
        classes.append(
            GpuClassParams(
                name=c.name,
                p_min_kw=floors_kw[c.name],
                p_max_kw=p_max_kw,
                value_breakpoints_kw=bp_kw,
                value_per_h=v_per_h,
                ramp_penalty_per_kw=pool.ramp_penalty_per_kw,
                ramp_up_kw_per_s=pool.ramp_up_kw_per_s,
            )
        )
    return SiteParams(
        steps_s=np.asarray(ctl.horizon_steps_s, dtype=float),
        pv=pv,
        batteries=bats,
        gensets=gens,
        gpu_classes=classes,
        grid=grid_params(cfg),
        facility_overhead=pool.facility_overhead,
        reserve_load_pct=ctl.reserve_load_pct,
        reserve_pv_pct=ctl.reserve_pv_pct,
        unserved_penalty_per_kwh=ctl.unserved_penalty_per_kwh,
        spill_penalty_per_kwh=ctl.spill_penalty_per_kwh,
        solver=ctl.solver,
        commitment=ctl.commitment,
        milp_gap=ctl.milp_gap,
        milp_time_limit_s=ctl.milp_time_limit_s,
        milp_block_s=ctl.milp_block_s,
    )


def grid_params(cfg: SiteConfig) -> GridParams | None:
    """The grid at the site's meters (limits summed), None for an islanded site (no limits > 0)."""
    meters = cfg.by_nature(Nature.METER)
    imp = sum(m.limits.max_import_kw for m in meters)
    exp = sum(m.limits.max_export_kw for m in meters)
    if imp <= 0 and exp <= 0:
        return None
    demand = cfg.tariff.demand_charge_per_kw if cfg.tariff is not None else 0.0
    return GridParams(name="+".join(m.name for m in meters), import_max_kw=imp, export_max_kw=exp,
                      demand_charge_per_kw=demand)


def grid_fresh(cfg: SiteConfig, image: ProcessImage, now_s: float) -> bool:
    """Every meter's power reads GOOD and, where the profile maps them, its voltage/frequency show the
    grid there: only then is the grid planned with (stale means worst case: a meter we cannot see,
    or one that shows the grid gone, plans as islanded, no import and no export). Without voltage or
    frequency a fresh meter counts: a planned import of 0 kW must not read as "no grid" next cycle."""
    for m in cfg.by_nature(Nature.METER):
        if image.get(m.name, "p_kw", now_s).quality is not Quality.GOOD:
            return False
        has_v, has_f = _declared(image, m.name, "v_v", now_s), _declared(image, m.name, "f_hz", now_s)
        if (has_v or has_f) and not grid_shown_present(
                0.0, image.value(m.name, "v_v", now_s) if has_v else None,
                image.value(m.name, "f_hz", now_s) if has_f else None, has_v, has_f):
            return False
    return True


def grid_inputs(cfg: SiteConfig, image: ProcessImage, now_s: float, x: DispatchInputs,
                prices: HorizonPrices | None, peak_import_kw: float) -> DispatchInputs:
    """Add the grid's prices, limits and billing state to the optimizer inputs."""
    steps = x.other_load_kw.shape[0]
    if prices is not None:
        x.import_price_per_kwh = prices.import_per_kwh
        x.export_price_per_kwh = prices.export_per_kwh
        x.in_billing_period = prices.in_billing_period
        x.co2_kg_per_kwh = prices.co2_kg_per_kwh
        x.price_source = prices.source
        x.demand_charge_per_kw = prices.demand_charge_per_kw
        x.demand_charge_next_per_kw = prices.demand_charge_next_per_kw
    if not grid_fresh(cfg, image, now_s):
        x.grid_import_max_kw = np.zeros(steps)
        x.grid_export_max_kw = np.zeros(steps)
    x.peak_import_kw = max(0.0, float(peak_import_kw))
    return x


# Stale PV: the share of the forecast added to the reserve grows with the reading's stale age and
# is whole after this long (as powerctl.forecast.reserve_extra_kw ramps a stale forecast in).
PV_STALE_FULL_S = 900.0
PV_STALE_SHARE = 0.5


def pv_stale_rows(cfg: SiteConfig, image: ProcessImage, now_s: float) -> np.ndarray:
    """Per PV device (optimizer order), True where its power reading is not GOOD now."""
    return np.array([image.get(d.name, "p_kw", now_s).quality is not Quality.GOOD
                     for d in cfg.by_nature(Nature.PV)], dtype=bool)


def pv_worst_case(pv_kw: np.ndarray, stale: np.ndarray, stale_age_s: np.ndarray, steps_s: np.ndarray,
                  reserve_extra_kw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Stale means worst case for PV: a PV whose reading is stale is planned at zero for the steps
    that start within its stale age (at least the first step: nothing says it is there now), then at
    its forecast, with the rest of its forecast added to the reserve by a share that grows with the
    stale age (`PV_STALE_SHARE` after `PV_STALE_FULL_S`). Returns (pv_kw, reserve_extra_kw); the
    reserve is the larger of the given one and this (a forecaster may already widen it)."""
    pv = np.array(pv_kw, dtype=float, copy=True)
    if not np.any(stale):
        return pv, reserve_extra_kw
    steps = np.asarray(steps_s, dtype=float)
    starts_s = np.concatenate(([0.0], np.cumsum(steps)[:-1]))
    extra = np.zeros(steps.size) if reserve_extra_kw is None else np.asarray(reserve_extra_kw, dtype=float)
    widen = np.zeros(steps.size)
    for i in np.nonzero(stale)[0]:
        age_s = max(0.0, float(stale_age_s[i]))
        dark = (starts_s <= age_s) | (np.arange(steps.size) == 0)
        pv[i, dark] = 0.0
        widen += min(1.0, age_s / PV_STALE_FULL_S) * PV_STALE_SHARE * pv[i]
    return pv, np.maximum(extra, widen)


def current_soc_pct(cfg: SiteConfig, image: ProcessImage, now_s: float) -> np.ndarray:
    """SoC per battery; stale or invalid reads as the bottom of the window."""
    out = []
    for d in cfg.by_nature(Nature.BATTERY):
        lim = d.limits
        soc = image.worst(d.name, "soc_pct", now_s, low=lim.soc_min_pct, high=lim.soc_max_pct)
        out.append(min(max(soc, lim.soc_min_pct), lim.soc_max_pct))
    return np.array(out, dtype=float)


def genset_running(cfg: SiteConfig, image: ProcessImage, now_s: float) -> np.ndarray:
    """Committed gensets as measured; unknown counts as off (no headroom is assumed)."""
    return np.array(
        [image.worst(d.name, "running", now_s, high=1.0) >= 0.5 for d in cfg.by_nature(Nature.GENSET)], dtype=bool
    )


# A battery within this many SoC points of its floor counts as at its floor (it cannot carry the load).
FLOOR_MARGIN_PCT = 2.0


def load_uncarried_kw(cfg: SiteConfig, params: SiteParams, image: ProcessImage, now_s: float,
                      other_kw: float) -> float:
    """How far the least load (other load + GPU floors with overhead) is above what can carry it
    without a stopped genset: 0 while any battery is above its floor (plus `FLOOR_MARGIN_PCT`),
    else the load minus PV, running gensets and the grid, each at its worst case (stale = 0)."""
    soc = current_soc_pct(cfg, image, now_s)
    floors = np.array([d.limits.soc_min_pct for d in cfg.by_nature(Nature.BATTERY)], dtype=float)
    if soc.size and np.any(soc > floors + FLOOR_MARGIN_PCT):
        return 0.0
    load = max(0.0, other_kw) + (1.0 + params.facility_overhead) * sum(c.p_min_kw for c in params.gpu_classes)
    supply = float(sum(max(0.0, image.worst(d.name, "p_kw", now_s, high=d.limits.kwp))
                       for d in cfg.by_nature(Nature.PV)))
    running = genset_running(cfg, image, now_s)
    supply += sum(g.rating_kw for g, on in zip(params.gensets, running.tolist(), strict=True) if on)
    if params.grid is not None and grid_fresh(cfg, image, now_s):
        supply += params.grid.import_max_kw
    return max(0.0, load - supply)


def build_inputs(
    cfg: SiteConfig,
    image: ProcessImage,
    now_s: float,
    pv_forecast_kw: np.ndarray,
    gpu_demand_kw: np.ndarray,
    prev_gpu_kw: np.ndarray,
    genset_state_s: np.ndarray,
    other_load_kw: np.ndarray | None = None,
    reserve_extra_kw: np.ndarray | None = None,
    prices: HorizonPrices | None = None,
    peak_import_kw: float = 0.0,
    genset_on: np.ndarray | None = None,
) -> DispatchInputs:
    """`genset_on`: committed gensets (the core adds those starting on its command); default as measured."""
    steps = len(cfg.control.horizon_steps_s)
    x = DispatchInputs(
        pv_forecast_kw=np.asarray(pv_forecast_kw, dtype=float),
        gpu_demand_kw=np.asarray(gpu_demand_kw, dtype=float),
        other_load_kw=np.zeros(steps) if other_load_kw is None else np.asarray(other_load_kw, dtype=float),
        soc_pct=current_soc_pct(cfg, image, now_s),
        genset_on=genset_running(cfg, image, now_s) if genset_on is None else np.asarray(genset_on, dtype=bool),
        genset_state_s=np.asarray(genset_state_s, dtype=float),
        prev_gpu_kw=np.asarray(prev_gpu_kw, dtype=float),
        reserve_extra_kw=None if reserve_extra_kw is None else np.asarray(reserve_extra_kw, dtype=float),
    )
    return grid_inputs(cfg, image, now_s, x, prices, peak_import_kw) if grid_params(cfg) is not None else x
