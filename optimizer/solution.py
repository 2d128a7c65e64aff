"""From raw per-step powers to a Plan: clean-up, SoC, balance slacks, objective terms, slack report.

Every rung of the ladder (solvers, rules, safe plan) produces a `Dispatch` of powers; this module turns
it into a `Plan` the same way, so objective terms and slack reports mean the same whatever the rung.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from powerctl.optimizer.commitment import Schedule, available_fraction, commitment_cost
from powerctl.optimizer.params import BoolArray, DispatchInputs, FloatArray, Plan, SiteParams, SlackUse

# Below this a slack is numerical noise, not a plan that needs explaining.
SLACK_TOL_KW = 1e-3


@dataclass
class ParamValues:
    """Numeric values for the model's Parameters for one solve (one commitment candidate)."""

    pv_ub: FloatArray  # (n_pv, T)
    gpu_ub: FloatArray  # (n_cls, T)
    other: FloatArray  # (T,)
    e0: FloatArray  # (n_bat,) kWh
    avail: FloatArray  # (n_gen, T) fraction of step the genset can carry load
    prev: FloatArray  # (n_cls,)
    extra: FloatArray  # (T,)
    grid: GridValues | None = None


@dataclass
class GridValues:
    """The grid's Parameter values for one solve (prices as the planner uses them, see grid_values)."""

    imp_price: FloatArray  # (T,) per kWh, >= 0
    exp_price: FloatArray  # (T,) per kWh, <= imp_price
    imp_ub: FloatArray  # (T,) kW
    exp_ub: FloatArray  # (T,) kW
    peak_floor: float  # kW, the billing period's peak so far
    in_period: BoolArray  # (T,) step lies in the current billing period
    big_m_kw: float
    rate_cur: float = 0.0  # demand charge per kW of the current / next period's peak, as priced
    rate_next: float = 0.0

    @property
    def m_cur(self) -> FloatArray:
        return np.where(self.in_period, 0.0, self.big_m_kw)

    @property
    def m_next(self) -> FloatArray:
        return np.where(self.in_period, self.big_m_kw, 0.0)


@dataclass
class Dispatch:
    """Per-step powers decided by some rung (battery split into charge and discharge)."""

    pv: FloatArray
    ch: FloatArray
    dis: FloatArray
    g: FloatArray
    gpu: FloatArray
    # Grid import and export (T,); None without a grid.
    imp: FloatArray | None = None
    exp: FloatArray | None = None


def net_grid(imp: FloatArray, exp: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Import and export with the same net but never both at once.

    With export priced at most at import (`grid_values` makes it so) this never raises the cost
    (it saves (price_imp - price_exp) min(imp, exp) per step) and never raises the peak, so it keeps
    an optimum optimal: a tie the LP broke with simultaneous flows becomes one direction.
    """
    net = imp - exp
    return np.maximum(net, 0.0), np.maximum(-net, 0.0)


def grid_values(p: SiteParams, x: DispatchInputs) -> GridValues | None:
    """Grid Parameter values: per-step limits within the nameplate, prices as the planner uses them.

    Simultaneous import and export can only pay where export is priced above import, and import
    beyond need (balanced by spill) only where import is priced below zero. The planner therefore
    takes import prices below zero as zero and export prices above the step's import price as the
    import price (plan notes name such steps, see `price_notes`); with those prices one direction
    per step is optimal and `net_grid` makes it exact without a binary.
    """
    if p.grid is None:
        return None
    T = p.horizon_steps

    def arr(a: FloatArray | None, default: float) -> FloatArray:
        return np.full(T, default) if a is None else np.asarray(a, dtype=float)

    imp_price = np.maximum(arr(x.import_price_per_kwh, 0.0), 0.0)
    exp_price = np.minimum(arr(x.export_price_per_kwh, 0.0), imp_price)
    imp_ub = np.clip(arr(x.grid_import_max_kw, p.grid.import_max_kw), 0.0, p.grid.import_max_kw)
    exp_ub = np.clip(arr(x.grid_export_max_kw, p.grid.export_max_kw), 0.0, p.grid.export_max_kw)
    in_period = np.ones(T, dtype=bool) if x.in_billing_period is None else np.asarray(x.in_billing_period, bool)
    return GridValues(imp_price=imp_price, exp_price=exp_price, imp_ub=imp_ub, exp_ub=exp_ub,
                      peak_floor=float(min(x.peak_import_kw, p.grid.import_max_kw)), in_period=in_period,
                      big_m_kw=float(p.grid.import_max_kw),
                      rate_cur=p.grid.demand_charge_per_kw if x.demand_charge_per_kw is None else x.demand_charge_per_kw,
                      rate_next=(p.grid.demand_charge_per_kw if x.demand_charge_next_per_kw is None
                                 else x.demand_charge_next_per_kw))


def price_notes(x: DispatchInputs) -> list[str]:
    """Plan notes for prices the planner changed (see grid_values)."""
    out: list[str] = []
    if x.import_price_per_kwh is not None:
        neg = np.nonzero(np.asarray(x.import_price_per_kwh) < 0)[0]
        if neg.size:
            out.append(f"grid: import price below 0 taken as 0 at {neg.size} steps (first {int(neg[0])})")
    if x.export_price_per_kwh is not None:
        imp = np.maximum(0.0, np.zeros(1) if x.import_price_per_kwh is None else np.asarray(x.import_price_per_kwh))
        hi = np.nonzero(np.asarray(x.export_price_per_kwh) > imp)[0]
        if hi.size:
            out.append(f"grid: export price above import price taken as the import price at {hi.size} steps "
                       f"(first {int(hi[0])})")
    return out


def gpu_upper_kw(p: SiteParams, demand_kw: FloatArray) -> FloatArray:
    """Budget upper bound per class and step: demand clipped into [p_min, p_max].

    The floor wins over a lower demand: the budget is a cap, and a cap at the floor is always allowed.
    """
    lo = np.array([c.p_min_kw for c in p.gpu_classes])[:, None]
    hi = np.array([c.p_max_kw for c in p.gpu_classes])[:, None]
    return np.clip(demand_kw, lo, hi) if len(p.gpu_classes) else np.zeros_like(demand_kw)


def standby_kw(p: SiteParams, avail: FloatArray) -> FloatArray:
    """Reserve (T,) from gensets not carrying load in a step (stopped, or warming up) that can start
    and warm up within the reserve window (`SiteParams.reserve_duration_s`, the time the batteries
    must bridge anyway): their rating times the part of the step they are not available. A stop
    for minimum down time does not count against it: safety over wear, an emergency start does not
    wait for it (powerctl.control.core)."""
    out = np.zeros(avail.shape[1]) if avail.ndim == 2 else np.zeros(0)
    for i, g in enumerate(p.gensets):
        if g.warmup_s <= p.reserve_duration_s:
            out = out + g.rating_kw * (1.0 - avail[i])
    return out


def schedule_free_values(p: SiteParams, x: DispatchInputs) -> ParamValues:
    """The Parameter values that do not depend on the commitment (the same for every candidate of
    one solve): `avail` is empty and `extra` lacks the standby term; `param_values` adds both."""
    steps = np.asarray(p.steps_s, dtype=float)
    e0 = np.array([b.capacity_kwh * s / 100.0 for b, s in zip(p.batteries, x.soc_pct, strict=True)])
    extra = np.zeros(steps.shape[0]) if x.reserve_extra_kw is None else x.reserve_extra_kw
    # A budget at the floor is always allowed, so ramp-up limits count from at least the floor.
    prev = np.maximum(x.prev_gpu_kw, [c.p_min_kw for c in p.gpu_classes]) if p.gpu_classes else x.prev_gpu_kw
    return ParamValues(pv_ub=x.pv_forecast_kw, gpu_ub=gpu_upper_kw(p, x.gpu_demand_kw), other=x.other_load_kw,
                       e0=e0, avail=np.zeros((len(p.gensets), 0)), prev=np.asarray(prev, dtype=float), extra=extra,
                       grid=grid_values(p, x))


def param_values(p: SiteParams, x: DispatchInputs, sched: Schedule, free: ParamValues | None = None) -> ParamValues:
    """Parameter values for inputs `x` under commitment `sched`; `free`: `schedule_free_values(p, x)`
    when the caller has it already (the enumeration prices many schedules for one `x`)."""
    free = schedule_free_values(p, x) if free is None else free
    steps = np.asarray(p.steps_s, dtype=float)
    avail = np.zeros((len(p.gensets), steps.shape[0]))
    for i, g in enumerate(p.gensets):
        avail[i] = available_fraction(g, sched.on[i], bool(x.genset_on[i]), float(x.genset_state_s[i]), steps)
    return dataclasses.replace(free, avail=avail, extra=free.extra - standby_kw(p, avail))


def soc_trajectory_pct(p: SiteParams, e0_kwh: FloatArray, ch: FloatArray, dis: FloatArray) -> FloatArray:
    """SoC (n_bat, T+1) from the initial energy and the charge/discharge powers."""
    dt_h = np.asarray(p.steps_s, dtype=float) / 3600.0
    out = np.zeros((len(p.batteries), dt_h.shape[0] + 1))
    for i, b in enumerate(p.batteries):
        flow = dt_h * (b.eta_charge * ch[i] - dis[i] / b.eta_discharge)
        out[i] = 100.0 * (e0_kwh[i] + np.concatenate(([0.0], np.cumsum(flow)))) / b.capacity_kwh
    return out


def pwl_value_per_h(bp_kw: FloatArray, v_per_h: FloatArray, p_kw: FloatArray) -> FloatArray:
    """Concave PWL value rate at power p (linear extrapolation outside the breakpoints)."""
    if bp_kw.size < 2:
        return np.zeros_like(p_kw)
    slopes = np.diff(v_per_h) / np.diff(bp_kw)
    icpts = v_per_h[:-1] - slopes * bp_kw[:-1]
    return np.asarray(np.min(slopes[:, None] * p_kw[None, :] + icpts[:, None], axis=0), dtype=float)


def _runs(mask: BoolArray) -> list[int]:
    return [int(i) for i in np.nonzero(mask)[0]]


def reserve_shortfall_kw(p: SiteParams, v: ParamValues, d: Dispatch, e_end_kwh: FloatArray) -> FloatArray:
    """Operating reserve shortfall per step for a dispatch (the model's reserve constraint, evaluated)."""
    T = v.other.shape[0]
    load = v.other + (1.0 + p.facility_overhead) * d.gpu.sum(axis=0)
    need = v.extra + p.reserve_load_pct / 100.0 * load + p.reserve_pv_pct / 100.0 * d.pv.sum(axis=0)
    have = np.zeros(T)
    dur_h = max(p.reserve_duration_s, 1.0) / 3600.0
    for i, b in enumerate(p.batteries):
        e_min = b.capacity_kwh * b.soc_min_pct / 100.0
        have += np.maximum(0.0, np.minimum(b.max_discharge_kw - (d.dis[i] - d.ch[i]),
                                           (e_end_kwh[i] - e_min) * b.eta_discharge / dur_h))
    for i, g in enumerate(p.gensets):
        have += g.rating_kw * v.avail[i] - d.g[i]
    if v.grid is not None and d.imp is not None:
        have += v.grid.imp_ub - d.imp
    return np.asarray(np.maximum(0.0, need - have), dtype=float)


def grid_flows(v: ParamValues, d: Dispatch) -> tuple[FloatArray, FloatArray]:
    """(import, export) per step; zeros without a grid."""
    T = v.other.shape[0]
    if d.imp is None or d.exp is None:
        return np.zeros(T), np.zeros(T)
    return d.imp, d.exp


def grid_terms(p: SiteParams, x: DispatchInputs, v: ParamValues, imp: FloatArray, exp: FloatArray) -> dict[str, float]:
    """Grid cost, export revenue and the demand charge this plan adds above the peak so far."""
    if v.grid is None or p.grid is None:
        return {}
    gv = v.grid
    dt_h = np.asarray(p.steps_s, dtype=float) / 3600.0
    terms = {"grid_import_cost": float((gv.imp_price * dt_h) @ imp),
             "export_revenue": float((gv.exp_price * dt_h) @ exp),
             "grid_import_kwh": float(dt_h @ imp), "grid_export_kwh": float(dt_h @ exp)}
    peak_cur = max(gv.peak_floor, float(np.max(imp[gv.in_period], initial=0.0)))
    peak_next = float(np.max(imp[~gv.in_period], initial=0.0))
    if p.grid.demand_charge_per_kw > 0:
        terms["demand_charge"] = gv.rate_cur * (peak_cur - gv.peak_floor) + gv.rate_next * peak_next
    else:
        terms["demand_charge"] = 0.0
    terms["peak_import_kw"] = peak_cur
    if x.co2_kg_per_kwh is not None:
        terms["grid_co2_kg"] = float((np.asarray(x.co2_kg_per_kwh, float) * dt_h) @ imp)
    return terms


def make_plan(p: SiteParams, x: DispatchInputs, v: ParamValues, sched: Schedule, d: Dispatch, *,
              status: str, solver: str, rung: str, solve_time_s: float, notes: list[str] | None = None) -> Plan:
    """Assemble a Plan: recompute SoC and the balance slacks from the powers, price every term."""
    steps = np.asarray(p.steps_s, dtype=float)
    dt_h = steps / 3600.0
    soc = soc_trajectory_pct(p, v.e0, d.ch, d.dis)
    cap_kwh = np.array([b.capacity_kwh for b in p.batteries]).reshape(-1, 1)
    e_end = soc[:, 1:] * cap_kwh / 100.0
    load = v.other + (1.0 + p.facility_overhead) * d.gpu.sum(axis=0)
    imp, exp = grid_flows(v, d)
    supply = d.pv.sum(axis=0) + (d.dis - d.ch).sum(axis=0) + d.g.sum(axis=0) + imp - exp
    unserved = np.maximum(0.0, load - supply)
    spill = np.maximum(0.0, supply - load)
    short = reserve_shortfall_kw(p, v, d, e_end)

    terms: dict[str, float] = {}
    terms["value_of_compute"] = float(sum(
        dt_h @ pwl_value_per_h(np.asarray(c.value_breakpoints_kw, float), np.asarray(c.value_per_h, float), d.gpu[j])
        for j, c in enumerate(p.gpu_classes)))
    terms["fuel_variable"] = float(sum(g.fuel_price_per_l * g.f1_l_per_kwh * float(dt_h @ d.g[i])
                                       for i, g in enumerate(p.gensets)))
    fixed = commitment_cost(p.gensets, sched, x.genset_on, steps)
    terms["fuel_idle"] = fixed["fuel_idle"]
    terms["start_cost"] = fixed["start_cost"]
    terms["battery_wear"] = float(sum(b.wear_cost_per_kwh * float(dt_h @ (d.ch[i] + d.dis[i]))
                                      for i, b in enumerate(p.batteries)))
    terms["terminal_energy_value"] = float(sum(b.terminal_value_per_kwh * e_end[i, -1]
                                               for i, b in enumerate(p.batteries)))
    dgpu = np.diff(np.concatenate((v.prev[:, None], d.gpu), axis=1), axis=1) if len(p.gpu_classes) else d.gpu
    terms["gpu_ramp"] = float(sum(c.ramp_penalty_per_kw * np.abs(dgpu[j]).sum() for j, c in enumerate(p.gpu_classes))
                              + p.ramp_quad_per_kw2 * float(np.sum(dgpu ** 2)))
    terms["unserved_penalty"] = p.unserved_penalty_per_kwh * float(dt_h @ unserved)
    terms["spill_penalty"] = p.spill_penalty_per_kwh * float(dt_h @ spill)
    terms["reserve_penalty"] = p.reserve_penalty_per_kwh * float(dt_h @ short)
    gt = grid_terms(p, x, v, imp, exp)
    terms.update(gt)
    objective = (terms["fuel_variable"] + terms["fuel_idle"] + terms["start_cost"] + terms["battery_wear"]
                 + terms["gpu_ramp"] + terms["unserved_penalty"] + terms["spill_penalty"] + terms["reserve_penalty"]
                 - terms["terminal_energy_value"] - terms["value_of_compute"]
                 + gt.get("grid_import_cost", 0.0) - gt.get("export_revenue", 0.0) + gt.get("demand_charge", 0.0))
    terms["total_cost"] = objective

    slack: list[SlackUse] = []
    for name, arr in (("power_balance.unserved_load", unserved), ("power_balance.spill", spill),
                      ("operating_reserve", short)):
        steps_used = _runs(arr > SLACK_TOL_KW)
        if steps_used:
            slack.append(SlackUse(constraint=name, steps=steps_used, max_kw=float(arr.max()),
                                  energy_kwh=float(dt_h @ arr)))
    bat_kw = d.dis - d.ch
    return Plan(pv_kw=d.pv, battery_kw=bat_kw, soc_pct=soc, genset_kw=d.g, genset_on=sched.on.copy(), gpu_kw=d.gpu,
                unserved_kw=unserved, spill_kw=spill, reserve_short_kw=short, objective_terms=terms, slack=slack,
                status=status, solver=solver, rung=rung, solve_time_s=solve_time_s, steps_s=steps.copy(),
                objective=objective, notes=list(notes or []), grid_import_kw=imp, grid_export_kw=exp,
                **_plan_prices(p, x))


def _plan_prices(p: SiteParams, x: DispatchInputs) -> dict[str, Any]:
    """The prices as given (not as the planner capped them) for the plan's readers."""
    if p.grid is None:
        return {}
    T = p.horizon_steps
    imp = np.zeros(T) if x.import_price_per_kwh is None else np.asarray(x.import_price_per_kwh, float)
    exp = np.zeros(T) if x.export_price_per_kwh is None else np.asarray(x.export_price_per_kwh, float)
    return {"import_price_per_kwh": imp, "export_price_per_kwh": exp, "price_source": x.price_source}
