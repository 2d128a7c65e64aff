"""From raw per-step powers to a Plan: clean-up, SoC, balance slacks, objective terms, slack report.

Every rung of the ladder (solvers, rules, safe plan) produces a `Dispatch` of powers; this module turns
it into a `Plan` the same way, so objective terms and slack reports mean the same whatever the rung.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Dispatch:
    """Per-step powers decided by some rung (battery split into charge and discharge)."""

    pv: FloatArray
    ch: FloatArray
    dis: FloatArray
    g: FloatArray
    gpu: FloatArray


def gpu_upper_kw(p: SiteParams, demand_kw: FloatArray) -> FloatArray:
    """Budget upper bound per class and step: demand clipped into [p_min, p_max].

    The floor wins over a lower demand: the budget is a cap, and a cap at the floor is always allowed.
    """
    lo = np.array([c.p_min_kw for c in p.gpu_classes])[:, None]
    hi = np.array([c.p_max_kw for c in p.gpu_classes])[:, None]
    return np.clip(demand_kw, lo, hi) if len(p.gpu_classes) else np.zeros_like(demand_kw)


def param_values(p: SiteParams, x: DispatchInputs, sched: Schedule) -> ParamValues:
    """Parameter values for inputs `x` under commitment `sched`."""
    steps = np.asarray(p.steps_s, dtype=float)
    avail = np.zeros((len(p.gensets), steps.shape[0]))
    for i, g in enumerate(p.gensets):
        avail[i] = available_fraction(g, sched.on[i], bool(x.genset_on[i]), float(x.genset_state_s[i]), steps)
    e0 = np.array([b.capacity_kwh * s / 100.0 for b, s in zip(p.batteries, x.soc_pct, strict=True)])
    extra = np.zeros(steps.shape[0]) if x.reserve_extra_kw is None else x.reserve_extra_kw
    # A budget at the floor is always allowed, so ramp-up limits count from at least the floor.
    prev = np.maximum(x.prev_gpu_kw, [c.p_min_kw for c in p.gpu_classes]) if p.gpu_classes else x.prev_gpu_kw
    return ParamValues(pv_ub=x.pv_forecast_kw, gpu_ub=gpu_upper_kw(p, x.gpu_demand_kw), other=x.other_load_kw,
                       e0=e0, avail=avail, prev=np.asarray(prev, dtype=float), extra=extra)


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
    return np.asarray(np.maximum(0.0, need - have), dtype=float)


def make_plan(p: SiteParams, x: DispatchInputs, v: ParamValues, sched: Schedule, d: Dispatch, *,
              status: str, solver: str, rung: str, solve_time_s: float, notes: list[str] | None = None) -> Plan:
    """Assemble a Plan: recompute SoC and the balance slacks from the powers, price every term."""
    steps = np.asarray(p.steps_s, dtype=float)
    dt_h = steps / 3600.0
    soc = soc_trajectory_pct(p, v.e0, d.ch, d.dis)
    cap_kwh = np.array([b.capacity_kwh for b in p.batteries]).reshape(-1, 1)
    e_end = soc[:, 1:] * cap_kwh / 100.0
    load = v.other + (1.0 + p.facility_overhead) * d.gpu.sum(axis=0)
    supply = d.pv.sum(axis=0) + (d.dis - d.ch).sum(axis=0) + d.g.sum(axis=0)
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
    objective = (terms["fuel_variable"] + terms["fuel_idle"] + terms["start_cost"] + terms["battery_wear"]
                 + terms["gpu_ramp"] + terms["unserved_penalty"] + terms["spill_penalty"] + terms["reserve_penalty"]
                 - terms["terminal_energy_value"] - terms["value_of_compute"])
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
                objective=objective, notes=list(notes or []))
