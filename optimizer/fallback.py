"""Rule-based dispatch and the safe plan: no solver, always answer, always inside hard limits.

Rules (per step, in order), the third rung of the ladder:
  1. Gensets keep their current commitment, except that an off genset whose minimum down time has
     passed is started now when PV plus battery cannot carry the essential load (other load plus
     GPU floors) at the first step. A started set carries load only after its warm-up.
  2. GPU classes start at their floor. Extra compute is given only from energy that is really there
     this step: PV and committed genset headroom left after the essential load (the battery is kept
     for the essential load, never spent on extra compute). Extra goes to classes by their first
     value slope, within demand and the ramp-up limit.
  3. The battery covers any remaining deficit (power- and SoC-limited) and absorbs surplus; then the
     grid imports the rest of a deficit and exports PV surplus, within the step's limits; then PV is
     curtailed; what is left is unserved load or spill. (Grid import counts as supply in rules 1-2.)
The safe plan (fourth rung) is even simpler: GPUs at their floor, battery idle, gensets as they are.
"""

from __future__ import annotations

import numpy as np

from powerctl.optimizer.commitment import Schedule, stay_schedule
from powerctl.optimizer.params import DispatchInputs, FloatArray, SiteParams
from powerctl.optimizer.solution import Dispatch, ParamValues, param_values


def _first_slope(p: SiteParams, j: int) -> float:
    c = p.gpu_classes[j]
    bp, v = np.asarray(c.value_breakpoints_kw, float), np.asarray(c.value_per_h, float)
    return float((v[1] - v[0]) / (bp[1] - bp[0])) if bp.size >= 2 else 0.0


def _import_max_kw(p: SiteParams, x: DispatchInputs) -> FloatArray:
    """Grid import limit per step (zeros without a grid)."""
    if p.grid is None:
        return np.zeros(p.horizon_steps)
    lim = np.full(p.horizon_steps, p.grid.import_max_kw)
    return lim if x.grid_import_max_kw is None else np.minimum(lim, x.grid_import_max_kw)


def _grid_fill(v: ParamValues, residual_kw: FloatArray, pv_left_kw: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Import for the residual deficit, export of the PV left over, within the step's limits."""
    if v.grid is None:
        return np.zeros_like(residual_kw), np.zeros_like(residual_kw)
    return (np.minimum(np.maximum(residual_kw, 0.0), v.grid.imp_ub),
            np.minimum(np.maximum(pv_left_kw, 0.0), v.grid.exp_ub))


def rule_schedule(p: SiteParams, x: DispatchInputs) -> Schedule:
    """Current commitment, plus a start now for an off genset when the essential load is not covered."""
    T = p.horizon_steps
    sched = stay_schedule(x.genset_on, T)
    if not p.gensets:
        return sched
    floors = sum(c.p_min_kw for c in p.gpu_classes)
    essential = float(x.other_load_kw[0]) + (1.0 + p.facility_overhead) * floors
    dt_h0 = float(p.steps_s[0]) / 3600.0
    bat = 0.0
    for i, b in enumerate(p.batteries):
        e_avail = b.capacity_kwh * (x.soc_pct[i] - b.soc_min_pct) / 100.0 * b.eta_discharge
        bat += min(b.max_discharge_kw, e_avail / dt_h0)
    deficit = essential - float(x.pv_forecast_kw[:, 0].sum()) - bat - _import_max_kw(p, x)[0]
    if deficit <= 0:
        return sched
    on = sched.on.copy()
    for i, g in enumerate(p.gensets):
        if not x.genset_on[i] and x.genset_state_s[i] >= g.min_down_s and deficit > 0:
            on[i, :] = True
            deficit -= g.rating_kw
    return Schedule(on=on, label="rule")


def rule_dispatch(p: SiteParams, x: DispatchInputs) -> tuple[Schedule, ParamValues, Dispatch]:
    """The rule-based plan (see module docstring)."""
    sched = rule_schedule(p, x)
    v = param_values(p, x, sched)
    T = p.horizon_steps
    steps = np.asarray(p.steps_s, dtype=float)
    dt_h = steps / 3600.0
    n_bat, n_gen, n_cls = len(p.batteries), len(p.gensets), len(p.gpu_classes)
    oh = 1.0 + p.facility_overhead
    pv = np.zeros_like(v.pv_ub)
    ch, dis = np.zeros((n_bat, T)), np.zeros((n_bat, T))
    g = np.zeros((n_gen, T))
    gpu = np.zeros((n_cls, T))
    e = v.e0.astype(float).copy()
    rating = np.array([k.rating_kw for k in p.gensets])
    gmin = np.array([k.min_load_kw for k in p.gensets])
    floors = np.array([c.p_min_kw for c in p.gpu_classes])
    ramp = np.array([c.ramp_up_kw_per_s for c in p.gpu_classes])
    order = sorted(range(n_cls), key=lambda j: -_first_slope(p, j))
    prev = v.prev.astype(float).copy()
    grid_kw = np.zeros(T) if v.grid is None else v.grid.imp_ub
    residual_end, pv_left = np.zeros(T), np.zeros(T)
    for t in range(T):
        pv_avail = float(v.pv_ub[:, t].sum())
        g_lo, g_hi = gmin * v.avail[:, t], rating * v.avail[:, t]
        essential = float(v.other[t]) + oh * float(floors.sum())
        # Extra compute from PV + genset headroom + grid import left after the essential load.
        spare = max(0.0, pv_avail + float(g_hi.sum()) + float(grid_kw[t]) - essential)
        gpu[:, t] = floors
        for j in order:
            cap = min(float(v.gpu_ub[j, t]), prev[j] + ramp[j] * steps[t])
            add = max(0.0, min(cap - floors[j], spare / oh))
            gpu[j, t] = floors[j] + add
            spare -= add * oh
        load = float(v.other[t]) + oh * float(gpu[:, t].sum())
        # Gensets at min load while available, raised only if PV cannot cover the load.
        g[:, t] = g_lo
        need = load - pv_avail - float(g_lo.sum()) - float(grid_kw[t])
        if need > 0 and n_gen:
            room = g_hi - g_lo
            share = room / room.sum() if room.sum() > 0 else room
            g[:, t] = g_lo + share * min(need, float(room.sum()))
        residual = load - float(g[:, t].sum())  # to be met by PV and battery
        pv_use = min(pv_avail, max(residual, 0.0))
        residual -= pv_use
        for i, b in enumerate(p.batteries):
            e_min = b.capacity_kwh * b.soc_min_pct / 100.0
            e_max = b.capacity_kwh * b.soc_max_pct / 100.0
            if residual > 0:
                d = min(residual, b.max_discharge_kw, max(0.0, (e[i] - e_min) * b.eta_discharge / dt_h[t]))
                dis[i, t] = d
                residual -= d
            else:
                surplus = pv_avail - pv_use
                c = min(surplus, b.max_charge_kw, max(0.0, (e_max - e[i]) / (b.eta_charge * dt_h[t])))
                ch[i, t] = c
                pv_use += c
            e[i] += dt_h[t] * (b.eta_charge * ch[i, t] - dis[i, t] / b.eta_discharge)
        residual_end[t], pv_left[t] = residual, pv_avail - pv_use
        _imp_t, exp_t = _grid_fill(v, residual_end[t:t + 1], pv_left[t:t + 1])
        pv_use += float(exp_t[0])
        # Split PV use over inverters in proportion to their forecast.
        pv[:, t] = v.pv_ub[:, t] * (pv_use / pv_avail) if pv_avail > 0 else 0.0
        prev = gpu[:, t].copy()
    imp, exp = _grid_fill(v, residual_end, pv_left)
    return sched, v, Dispatch(pv=pv, ch=ch, dis=dis, g=g, gpu=gpu,
                              imp=None if v.grid is None else imp, exp=None if v.grid is None else exp)


def safe_dispatch(p: SiteParams, x: DispatchInputs) -> tuple[Schedule, ParamValues, Dispatch]:
    """GPUs at their floor (never at maximum), battery idle, gensets as they are, PV to the load."""
    sched = stay_schedule(x.genset_on, p.horizon_steps)
    v = param_values(p, x, sched)
    T = p.horizon_steps
    floors = np.array([c.p_min_kw for c in p.gpu_classes])
    hi = np.array([c.p_max_kw for c in p.gpu_classes])
    safe = np.maximum(floors, np.minimum(hi, p.safe_gpu_fraction * hi))
    gpu = np.minimum(np.repeat(safe[:, None], T, axis=1), np.maximum(v.gpu_ub, floors[:, None]))
    load = v.other + (1.0 + p.facility_overhead) * gpu.sum(axis=0)
    rating = np.array([k.rating_kw for k in p.gensets])[:, None]
    gmin = np.array([k.min_load_kw for k in p.gensets])[:, None]
    pv_avail = v.pv_ub.sum(axis=0)
    lo, hi_g = gmin * v.avail, rating * v.avail
    need = np.maximum(0.0, load - pv_avail - lo.sum(axis=0))
    room = hi_g - lo
    room_sum = room.sum(axis=0)
    share: FloatArray = np.divide(room, room_sum, out=np.zeros_like(room), where=room_sum > 0)
    g = lo + share * np.minimum(need, room_sum)
    pv_use = np.minimum(pv_avail, np.maximum(0.0, load - g.sum(axis=0)))
    imp, _exp = _grid_fill(v, load - g.sum(axis=0) - pv_use, np.zeros(T))
    frac = np.divide(pv_use, pv_avail, out=np.zeros_like(pv_use), where=pv_avail > 0)
    pv = v.pv_ub * frac
    z = np.zeros((len(p.batteries), T))
    # The safe plan never exports (PV only to the load).
    return sched, v, Dispatch(pv=pv, ch=z, dis=z.copy(), g=g, gpu=gpu, imp=None if v.grid is None else imp,
                              exp=None if v.grid is None else np.zeros(T))
