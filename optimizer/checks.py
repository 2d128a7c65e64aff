"""Independent check of a Plan against every hard limit (used by tests and usable by a guard).

It recomputes from the plan's own arrays; it does not trust anything the solver reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from powerctl.optimizer.commitment import available_fraction, step_starts_s
from powerctl.optimizer.params import DispatchInputs, Plan, SiteParams
from powerctl.optimizer.solution import gpu_upper_kw


def plan_violations(p: SiteParams, x: DispatchInputs, plan: Plan, tol_kw: float = 1e-3) -> list[str]:
    """Every hard limit the plan breaks by more than `tol_kw` (kW, or % SoC / kWh scaled alike)."""
    out: list[str] = []
    steps = np.asarray(p.steps_s, dtype=float)
    dt_h = steps / 3600.0

    def bad(name: str, cond: np.ndarray) -> None:
        if np.any(cond):
            out.append(f"{name}: steps {np.nonzero(np.atleast_1d(cond).reshape(-1, steps.size).any(axis=0))[0][:5].tolist()}")

    pv_fc = np.asarray(x.pv_forecast_kw, float)
    bad("pv below 0", plan.pv_kw < -tol_kw)
    bad("pv above forecast", plan.pv_kw > pv_fc + tol_kw)
    for i, b in enumerate(p.batteries):
        bad(f"battery {b.name} discharge limit", plan.battery_kw[i] > b.max_discharge_kw + tol_kw)
        bad(f"battery {b.name} charge limit", plan.battery_kw[i] < -b.max_charge_kw - tol_kw)
        soc_tol = 100.0 * tol_kw / b.capacity_kwh
        bad(f"battery {b.name} SoC window", (plan.soc_pct[i, 1:] < b.soc_min_pct - soc_tol)
            | (plan.soc_pct[i, 1:] > b.soc_max_pct + soc_tol))
        if abs(plan.soc_pct[i, 0] - x.soc_pct[i]) > soc_tol:
            out.append(f"battery {b.name}: plan starts at {plan.soc_pct[i, 0]:.3f} % not {x.soc_pct[i]:.3f} %")
        # SoC must follow from the powers with the efficiencies (charging at eta_c, discharging 1/eta_d).
        p_kw = plan.battery_kw[i]
        flow = dt_h * np.where(p_kw < 0, -p_kw * b.eta_charge, -p_kw / b.eta_discharge)
        d_soc = 100.0 * flow / b.capacity_kwh
        # Simultaneous charge and discharge is hidden in a net power, so only an upper bound holds:
        # the SoC can never rise more than the net charge allows.
        bad(f"battery {b.name} SoC dynamics", np.diff(plan.soc_pct[i]) > d_soc + soc_tol)
    t0 = step_starts_s(steps)
    for i, g in enumerate(p.gensets):
        on = plan.genset_on[i]
        a = available_fraction(g, on, bool(x.genset_on[i]), float(x.genset_state_s[i]), steps)
        bad(f"genset {g.name} above available rating", plan.genset_kw[i] > g.rating_kw * a + tol_kw)
        bad(f"genset {g.name} below min load", plan.genset_kw[i] < g.min_load_kw * a - tol_kw)
        bad(f"genset {g.name} output while off", (~on) & (plan.genset_kw[i] > tol_kw))
        # Minimum up/down: a switch at step k needs the previous state to have lasted long enough.
        prev = bool(x.genset_on[i])
        since = -float(x.genset_state_s[i])  # time the current state began, relative to now
        for k in range(steps.size):
            if bool(on[k]) != prev:
                lasted = t0[k] - since
                need = g.min_up_s if prev else g.min_down_s
                if lasted < need - 1e-6:
                    out.append(f"genset {g.name}: switch at step {k} after {lasted:.0f} s < {need:.0f} s")
                prev, since = bool(on[k]), t0[k]
    if p.gpu_classes:
        ub = gpu_upper_kw(p, np.asarray(x.gpu_demand_kw, float))
        lo = np.array([c.p_min_kw for c in p.gpu_classes])[:, None]
        bad("gpu below floor", plan.gpu_kw < lo - tol_kw)
        bad("gpu above demand/max", plan.gpu_kw > ub + tol_kw)
        prev_gpu = np.maximum(np.asarray(x.prev_gpu_kw, float), lo[:, 0])
        d = np.diff(np.concatenate((prev_gpu[:, None], plan.gpu_kw), axis=1), axis=1)
        rate = np.array([c.ramp_up_kw_per_s for c in p.gpu_classes])[:, None]
        bad("gpu ramp-up limit", d > rate * steps[None, :] + tol_kw)
    imp, exp = _grid_violations(p, x, plan, tol_kw, bad)
    load = np.asarray(x.other_load_kw, float) + (1 + p.facility_overhead) * plan.gpu_kw.sum(axis=0)
    supply = plan.pv_kw.sum(axis=0) + plan.battery_kw.sum(axis=0) + plan.genset_kw.sum(axis=0) + imp - exp
    resid = supply + plan.unserved_kw - load - plan.spill_kw
    bad("power balance", np.abs(resid) > tol_kw)
    bad("negative slack", (plan.unserved_kw < -tol_kw) | (plan.spill_kw < -tol_kw) | (plan.reserve_short_kw < -tol_kw))
    return out


def _grid_violations(p: SiteParams, x: DispatchInputs, plan: Plan, tol_kw: float,
                     bad: Callable[[str, np.ndarray], None]) -> tuple[np.ndarray, np.ndarray]:
    """Grid limits (nameplate and per step) and one direction per step; returns (import, export)."""
    T = p.horizon_steps
    if p.grid is None:
        return np.zeros(T), np.zeros(T)
    imp, exp = np.asarray(plan.grid_import_kw, float), np.asarray(plan.grid_export_kw, float)
    imp_max = np.minimum(p.grid.import_max_kw, np.inf if x.grid_import_max_kw is None else x.grid_import_max_kw)
    exp_max = np.minimum(p.grid.export_max_kw, np.inf if x.grid_export_max_kw is None else x.grid_export_max_kw)
    bad("grid import below 0 or above limit", (imp < -tol_kw) | (imp > imp_max + tol_kw))
    bad("grid export below 0 or above limit", (exp < -tol_kw) | (exp > exp_max + tol_kw))
    bad("grid import and export at once", (imp > tol_kw) & (exp > tol_kw))
    return imp, exp
