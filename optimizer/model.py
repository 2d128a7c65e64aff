"""The convex dispatch model, built once as a DPP cvxpy problem.

Only the right-hand sides change between solves (forecasts, current SoC, genset availability from
the commitment candidate, previous GPU budget, extra reserve), so every Parameter enters the
problem affinely in a constraint's constant side: cvxpy compiles the problem once and the solver
data's matrices never change. That is what lets `optimizer.direct` skip cvxpy at solve time.

Per step t (length dt_h[t] hours; steps may grow along the horizon):
  PV        0 <= pv <= forecast                        (curtailment allowed)
  battery   0 <= ch <= ch_max, 0 <= dis <= dis_max;   e_t = e_{t-1} + dt (eta_c ch - dis / eta_d)
            e_min <= e_t <= e_max   (e is the energy at the END of step t)
  genset    min_load * a <= g <= rating * a            a = available fraction of the step (0 off,
                                                      partial while warming up), a Parameter
  GPU       p_min <= gpu <= ub (ub = demand clipped to [p_min, p_max]); value of compute by the
            concave PWL curve restricted to [p_min, p_max] (`segments_on`), see the two forms below
  ramp      d = gpu_t - gpu_{t-1}: L1 penalty on |d|, d <= ramp_up * dt (hard; only increases)
  balance   pv + (dis - ch) + g + unserved >= (1 + overhead) gpu + other       spill = lhs - rhs
  grid      0 <= imp <= imp_max, 0 <= exp <= exp_max (Parameters per step: 0 = grid gone, zero export);
            balance gets + imp - exp, reserve + (imp_max - imp); cost dt (price_imp imp - price_exp exp)
            + demand charge on the billing period's peak (see _grid)
  reserve   sum(rating a - g) + sum_b min(dis_max - (dis - ch), (e - e_min) eta_d / duration) + short
              >= r_load (load) + r_pv pv + extra                  (see _reserve_rows)

Two equivalent forms of the GPU terms, chosen by the solver (same optimum, checked by the tests):
  simplex form (HiGHS)   value: gpu = p_min + sum_s seg_s, 0 <= seg_s <= width_s, value = sum_s
                         slope_s seg_s (slopes fall, so the optimum fills segments in order);
                         ramp: d = up - down, up, down >= 0, penalty on up + down, up <= ramp_up dt.
                         Bounded variables cost a simplex nothing, rows do: 2 rows per class and step.
  interior-point form    value: v <= slope_s gpu + icpt_s per segment (hypograph);
  (Clarabel, OSQP)       ramp: r >= d, r >= -d, penalty on r.  Every bound is a row for these
                         solvers, so fewer variables win: 16 variables and 37 rows per step for the
                         bench site against 25 and 52 in the simplex form.

Objective (minimise, currency): variable fuel + wear + ramp + penalties(unserved, spill, reserve
short) + grid import cost + demand charge - export revenue - terminal energy value - value of compute. Idle fuel and start costs depend only on the
commitment candidate, so they are added outside the convex solve (`costs.commitment_cost`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from powerctl.optimizer.params import BatteryParams, FloatArray, GensetParams, SiteParams


@dataclass
class Model:
    """The compiled-once problem and handles to its variables and parameters (None when absent)."""

    problem: cp.Problem
    dt_h: FloatArray
    # variables
    pv: cp.Variable | None
    ch: cp.Variable | None
    dis: cp.Variable | None
    e: cp.Variable | None
    g: cp.Variable | None
    gpu: cp.Variable | None
    unserved: cp.Variable
    short: cp.Variable
    imp: cp.Variable | None
    exp: cp.Variable | None
    # parameters
    pv_ub: cp.Parameter | None
    gpu_ub: cp.Parameter | None
    other: cp.Parameter
    e0: cp.Parameter | None
    avail: cp.Parameter | None
    prev_gpu: cp.Parameter | None
    extra: cp.Parameter
    quad: bool
    grid: GridModel | None = None

    def parameters(self) -> list[cp.Parameter]:
        """All Parameters in a fixed order (the order `direct` identifies them in)."""
        ps = [self.pv_ub, self.gpu_ub, self.other, self.e0, self.avail, self.prev_gpu, self.extra]
        if self.grid is not None:
            ps += self.grid.parameters()
        return [p for p in ps if p is not None]


@dataclass
class GridModel:
    """The grid's Parameters (prices in the objective, limits and billing masks in the rows)."""

    imp_price: cp.Parameter
    exp_price: cp.Parameter
    imp_ub: cp.Parameter
    exp_ub: cp.Parameter
    peak_floor: cp.Parameter | None
    m_cur: cp.Parameter | None
    m_next: cp.Parameter | None
    peak_cur: cp.Variable | None
    peak_next: cp.Variable | None
    rate_cur: cp.Parameter | None = None
    rate_next: cp.Parameter | None = None

    def parameters(self) -> list[cp.Parameter]:
        ps = [self.imp_price, self.exp_price, self.imp_ub, self.exp_ub, self.peak_floor, self.m_cur, self.m_next,
              self.rate_cur, self.rate_next]
        return [p for p in ps if p is not None]


def _grid(p: SiteParams, dt_h: FloatArray) -> tuple[GridModel, cp.Variable, cp.Variable,
                                                    list[cp.Constraint], list[cp.Expression]]:
    """Import/export variables, their limits, energy prices and the demand charge.

    Prices are Parameters in the objective (cost c depends on them; `optimizer.direct` maps them like
    the right-hand side). The demand charge prices one peak per billing period met in the horizon:
    peak_cur >= max(peak so far, import in the current period), peak_next >= import after it; a
    step outside a period gets a big-M right-hand side (M = the import nameplate), so which steps
    belong where is a Parameter and the matrix stays fixed.
    """
    assert p.grid is not None
    T = dt_h.shape[0]
    imp = cp.Variable(T, name="grid_import_kw")
    exp = cp.Variable(T, name="grid_export_kw")
    imp_price = cp.Parameter(T, name="import_price_per_kwh")
    exp_price = cp.Parameter(T, name="export_price_per_kwh")
    imp_ub = cp.Parameter(T, nonneg=True, name="grid_import_max_kw")
    exp_ub = cp.Parameter(T, nonneg=True, name="grid_export_max_kw")
    cons: list[cp.Constraint] = [imp >= 0, exp >= 0, imp <= imp_ub, exp <= exp_ub]
    cost: list[cp.Expression] = [cp.multiply(imp_price, dt_h) @ imp - cp.multiply(exp_price, dt_h) @ exp]
    gm = GridModel(imp_price, exp_price, imp_ub, exp_ub, None, None, None, None, None)
    if p.grid.demand_charge_per_kw > 0:
        gm.peak_floor = cp.Parameter(nonneg=True, name="peak_import_kw")
        gm.m_cur = cp.Parameter(T, nonneg=True, name="demand_mask_current")
        gm.m_next = cp.Parameter(T, nonneg=True, name="demand_mask_next")
        gm.peak_cur = cp.Variable(name="peak_import_current_kw")
        gm.peak_next = cp.Variable(name="peak_import_next_kw")
        cons += [gm.peak_cur >= gm.peak_floor, gm.peak_next >= 0,
                 imp - gm.peak_cur <= gm.m_cur, imp - gm.peak_next <= gm.m_next]
        # The rates are Parameters: a plan prices a peak pro rata of the billing period it covers.
        gm.rate_cur = cp.Parameter(nonneg=True, name="demand_charge_per_kw")
        gm.rate_next = cp.Parameter(nonneg=True, name="demand_charge_next_per_kw")
        cost.append(gm.rate_cur * gm.peak_cur + gm.rate_next * gm.peak_next)
    return gm, imp, exp, cons, cost


def value_segments(bp_kw: FloatArray, v_per_h: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Slopes and intercepts of a concave PWL curve given by breakpoints: v(p) = min_s slope_s p + icpt_s."""
    slopes = np.diff(v_per_h) / np.diff(bp_kw)
    icpts = v_per_h[:-1] - slopes * bp_kw[:-1]
    return slopes, icpts


def segments_on(bp_kw: FloatArray, v_per_h: FloatArray, lo_kw: float,
                hi_kw: float) -> tuple[FloatArray, FloatArray, float]:
    """The concave curve restricted to [lo, hi] as segments: (widths, slopes, value at lo).

    The curve extends linearly beyond its end breakpoints (as `value_segments` does), so the
    value at lo and hi is the minimum over all segment lines.
    """
    slopes_all, icpts = value_segments(bp_kw, v_per_h)

    def value(p_kw: float) -> float:
        return float(np.min(slopes_all * p_kw + icpts))

    inner = bp_kw[(bp_kw > lo_kw) & (bp_kw < hi_kw)]
    pts = np.concatenate(([lo_kw], inner, [hi_kw])) if hi_kw > lo_kw else np.array([lo_kw])
    vals = np.array([value(float(q)) for q in pts])
    widths = np.diff(pts)
    return widths, np.diff(vals) / np.where(widths > 0, widths, 1.0), vals[0]


def _reserve_rows(have: cp.Expression, need: cp.Expression,
                  bat: list[tuple[cp.Expression, cp.Expression]], T: int) -> list[cp.Constraint]:
    """have + sum_b min(power_b, energy_b) >= need, without auxiliary variables for <= 2 batteries.

    A sum of minima is >= need iff every choice of one term per battery is (2^n rows per step);
    that is smaller than a variable plus two rows per battery for n <= 2. Both terms are >= 0 on
    the feasible set (net <= dis_max, e >= e_min), so no clamp at zero is needed.
    """
    if len(bat) <= 2:
        rows: list[cp.Constraint] = []
        for choice in itertools.product((0, 1), repeat=len(bat)):
            total = have
            for (pw, en), c in zip(bat, choice, strict=True):
                total = total + (pw if c == 0 else en)
            rows.append(total >= need)
        return rows
    rb = cp.Variable((len(bat), T), name="battery_reserve_kw")
    rows = [rb[i, :] <= pw for i, (pw, _en) in enumerate(bat)]
    rows += [rb[i, :] <= en for i, (_pw, en) in enumerate(bat)]
    return [*rows, have + cp.sum(rb, axis=0) >= need]


def _battery_ramps(bats: list[BatteryParams], net: cp.Expression, steps_s: FloatArray) -> list[cp.Constraint]:
    """|net_t - net_{t-1}| <= ramp dt_t between steps, only where the limit can bind (ramp dt below
    the full swing), so a fast battery adds no rows. The first step is not limited: it changes from
    the power applied now, which the guard and the PCS pace anyway."""
    rows: list[cp.Constraint] = []
    for i, b in enumerate(bats):
        lim = b.ramp_kw_per_s * steps_s[1:]
        if steps_s.size < 2 or not np.any(lim < b.max_charge_kw + b.max_discharge_kw):
            continue
        d = net[i, 1:] - net[i, :-1]
        rows += [d <= lim, -d <= lim]
    return rows


def _genset_ramps(gens: list[GensetParams], g: cp.Variable, avail: cp.Parameter,
                  steps_s: FloatArray) -> list[cp.Constraint]:
    """Output change between steps of a running genset <= ramp dt. A step after one not fully
    available (off, warming up) may rise freely (to the minimum load a start brings), and one before
    a step not fully available may fall freely (a stop): the slack rating (1 - a) does that with a
    as a Parameter on the right-hand side, so the matrix stays fixed (optimizer.direct)."""
    rows: list[cp.Constraint] = []
    for i, k in enumerate(gens):
        lim = k.ramp_kw_per_s * steps_s[1:]
        if steps_s.size < 2 or not np.any(lim < k.rating_kw):
            continue
        d = g[i, 1:] - g[i, :-1]
        rows += [d <= lim + k.rating_kw * (1.0 - avail[i, :-1]), -d <= lim + k.rating_kw * (1.0 - avail[i, 1:])]
    return rows


def build(p: SiteParams, simplex_form: bool = True) -> Model:
    """Build the DPP problem for site `p` (validated beforehand by `validate.check_site`)."""
    steps_s = np.asarray(p.steps_s, dtype=float)
    T = steps_s.shape[0]
    dt_h = steps_s / 3600.0
    n_pv, n_bat, n_gen, n_cls = len(p.pv), len(p.batteries), len(p.gensets), len(p.gpu_classes)
    # Variables carry no attributes (nonneg=...): cvxpy would substitute them with new variables,
    # and `optimizer.direct` maps solver columns back by the original variable ids.
    cons: list[cp.Constraint] = []
    cost: list[cp.Expression] = []

    other = cp.Parameter(T, nonneg=True, name="other_load_kw")
    # Signed: a stopped genset that can start in time lowers it (solution.standby_kw).
    extra = cp.Parameter(T, name="reserve_extra_kw")
    unserved = cp.Variable(T, name="unserved_kw")
    short = cp.Variable(T, name="reserve_short_kw")
    cons += [unserved >= 0, short >= 0]
    supply: cp.Expression = unserved
    reserve_have: cp.Expression = short
    reserve_need: cp.Expression = extra

    pv = pv_ub = None
    if n_pv:
        pv_ub = cp.Parameter((n_pv, T), nonneg=True, name="pv_forecast_kw")
        pv = cp.Variable((n_pv, T), name="pv_kw")
        cons += [pv >= 0, pv <= pv_ub]
        pv_sum = cp.sum(pv, axis=0)
        supply = supply + pv_sum
        reserve_need = reserve_need + (p.reserve_pv_pct / 100.0) * pv_sum

    ch = dis = e = e0 = None
    bat_reserve: list[tuple[cp.Expression, cp.Expression]] = []
    if n_bat:
        bats = p.batteries
        col = lambda xs: np.array(xs, dtype=float)[:, None]  # noqa: E731 - tiny local helper
        cap = col([b.capacity_kwh for b in bats])
        ch = cp.Variable((n_bat, T), name="charge_kw")
        dis = cp.Variable((n_bat, T), name="discharge_kw")
        e = cp.Variable((n_bat, T), name="energy_kwh")
        e0 = cp.Parameter(n_bat, nonneg=True, name="energy0_kwh")
        eta_c, eta_d = col([b.eta_charge for b in bats]), col([b.eta_discharge for b in bats])
        flow = cp.multiply(eta_c * dt_h[None, :], ch) - cp.multiply(dt_h[None, :] / eta_d, dis)
        e_min = cap * col([b.soc_min_pct for b in bats]) / 100.0
        e_max = cap * col([b.soc_max_pct for b in bats]) / 100.0
        dis_max = col([b.max_discharge_kw for b in bats])
        cons += [
            ch >= 0,
            dis >= 0,
            ch <= col([b.max_charge_kw for b in bats]) * np.ones((1, T)),
            dis <= dis_max * np.ones((1, T)),
            e[:, 0] == e0 + flow[:, 0],
            e[:, 1:] == e[:, :-1] + flow[:, 1:],
            e >= e_min * np.ones((1, T)),
            e <= e_max * np.ones((1, T)),
        ]
        net = dis - ch
        supply = supply + cp.sum(net, axis=0)
        cons += _battery_ramps(bats, net, steps_s)
        dur_h = max(p.reserve_duration_s, 1.0) / 3600.0
        # Reserve a battery can give: min(power headroom, energy above the floor over the duration).
        bat_reserve = [(dis_max[i, 0] - net[i, :], (eta_d[i, 0] / dur_h) * (e[i, :] - e_min[i, 0]))
                       for i in range(n_bat)]
        wear = col([b.wear_cost_per_kwh for b in bats]) * dt_h[None, :]
        cost.append(cp.sum(cp.multiply(wear, ch + dis)))
        tv = np.array([b.terminal_value_per_kwh for b in bats])
        cost.append(-(tv @ e[:, T - 1]))

    g = avail = None
    if n_gen:
        gens = p.gensets
        rating = np.array([k.rating_kw for k in gens])[:, None]
        min_kw = np.array([k.min_load_kw for k in gens])[:, None]
        # g >= 0 follows from g >= min_load * a (both >= 0).
        g = cp.Variable((n_gen, T), name="genset_kw")
        avail = cp.Parameter((n_gen, T), nonneg=True, name="genset_available")
        cap_kw = cp.multiply(rating * np.ones((1, T)), avail)
        cons += [g <= cap_kw, g >= cp.multiply(min_kw * np.ones((1, T)), avail)]
        supply = supply + cp.sum(g, axis=0)
        reserve_have = reserve_have + cp.sum(cap_kw - g, axis=0)
        cons += _genset_ramps(gens, g, avail, steps_s)
        fuel = np.array([k.fuel_price_per_l * k.f1_l_per_kwh for k in gens])[:, None] * dt_h[None, :]
        cost.append(cp.sum(cp.multiply(fuel, g)))

    gpu = gpu_ub = prev = None
    gpu_load: cp.Expression = cp.Constant(np.zeros(T))  # (1 + overhead) * GPU power, per step
    quad = p.ramp_quad_per_kw2 > 0
    if n_cls:
        cls = p.gpu_classes
        gpu = cp.Variable((n_cls, T), name="gpu_kw")
        gpu_ub = cp.Parameter((n_cls, T), nonneg=True, name="gpu_ub_kw")
        prev = cp.Parameter(n_cls, nonneg=True, name="prev_gpu_kw")
        cons += [gpu >= np.array([c.p_min_kw for c in cls])[:, None] * np.ones((1, T)), gpu <= gpu_ub]
        gpu_load = (1.0 + p.facility_overhead) * cp.sum(gpu, axis=0)
        # Budget change per step; the first step changes from the last applied budget.
        dgpu = cp.hstack([cp.reshape(gpu[:, 0] - prev, (n_cls, 1), order="F"), gpu[:, 1:] - gpu[:, :-1]])
        pen = np.array([c.ramp_penalty_per_kw for c in cls])
        rate = np.array([c.ramp_up_kw_per_s for c in cls])
        if simplex_form and (np.any(pen > 0) or np.any(np.isfinite(rate))):
            # Split into up and down parts (both >= 0): one equality row per class and step instead
            # of two |d| rows, and the hard ramp-up limit becomes a bound on `up`.
            up = cp.Variable((n_cls, T), name="gpu_ramp_up_kw")
            down = cp.Variable((n_cls, T), name="gpu_ramp_down_kw")
            cons += [dgpu == up - down, up >= 0, down >= 0]
            if np.any(pen > 0):
                cost.append(cp.sum(cp.multiply(pen[:, None] * np.ones((1, T)), up + down)))
            for k in np.nonzero(np.isfinite(rate))[0]:
                cons.append(up[k, :] <= rate[k] * steps_s)
        elif not simplex_form:
            if np.any(pen > 0):
                r = cp.Variable((n_cls, T), name="gpu_ramp_kw")  # r >= 0 follows from r >= |d|
                cons += [r >= dgpu, r >= -dgpu]
                cost.append(cp.sum(cp.multiply(pen[:, None] * np.ones((1, T)), r)))
            for k in np.nonzero(np.isfinite(rate))[0]:
                cons.append(dgpu[k, :] <= rate[k] * steps_s)
        if quad:
            cost.append(p.ramp_quad_per_kw2 * cp.sum_squares(dgpu))
        for j, c in enumerate(cls):
            bp = np.asarray(c.value_breakpoints_kw, dtype=float)
            if bp.size < 2:
                continue
            widths, slopes, v_min = segments_on(bp, np.asarray(c.value_per_h, dtype=float), c.p_min_kw, c.p_max_kw)
            # value = v(p_min) + (the part above p_min, by one of the forms below)
            cost.append(cp.Constant(-v_min * float(np.sum(dt_h))))
            if widths.size == 1:
                cost.append(-slopes[0] * (dt_h @ (gpu[j, :] - c.p_min_kw)))
            elif widths.size > 1 and simplex_form:
                # Concave value as filled segments: gpu = p_min + sum_s seg_s, 0 <= seg_s <= width_s.
                # Slopes fall from segment to segment, so the optimum fills them in order and the value
                # is exactly the curve; one row per step instead of one hypograph row per segment.
                seg = cp.Variable((widths.size, T), name=f"gpu_segment_kw[{c.name}]")
                cons += [seg >= 0, seg <= widths[:, None] * np.ones((1, T)),
                         gpu[j, :] == c.p_min_kw + cp.sum(seg, axis=0)]
                cost.append(-cp.sum(cp.multiply(slopes[:, None] * dt_h[None, :], seg)))
            elif widths.size > 1:
                # Hypograph: v <= each segment's line, one row per segment (all but the first line
                # through (p_min, 0) after taking v(p_min) out as a constant).
                knots = c.p_min_kw + np.concatenate(([0.0], np.cumsum(widths)[:-1]))
                vals = np.concatenate(([0.0], np.cumsum(slopes * widths)[:-1]))
                icpts = vals - slopes * knots
                v = cp.Variable(T, name=f"gpu_value_per_h[{c.name}]")
                cons.append(v[None, :] <= slopes[:, None] @ gpu[j:j + 1, :] + icpts[:, None] * np.ones((1, T)))
                cost.append(-(dt_h @ v))

    imp = exp = gm = None
    if p.grid is not None:
        gm, imp, exp, g_cons, g_cost = _grid(p, dt_h)
        cons += g_cons
        cost += g_cost
        supply = supply + imp - exp
        # Import headroom is reserve: the grid takes a load step within its limit.
        reserve_have = reserve_have + (gm.imp_ub - imp)

    load = other + gpu_load
    cons.append(supply >= load)
    # Spill = supply - load. Its penalty leaves out the other-load Parameter: a constant that does
    # not move the optimum, and a Parameter in the objective would stop `optimizer.direct` from
    # reusing the compiled data (plans price spill in full, see solution.make_plan).
    spill_vars = supply - gpu_load
    reserve_need = reserve_need + (p.reserve_load_pct / 100.0) * load
    cons += _reserve_rows(reserve_have, reserve_need, bat_reserve, T)
    cost.append((p.unserved_penalty_per_kwh * dt_h) @ unserved)
    if p.spill_penalty_per_kwh > 0:
        cost.append((p.spill_penalty_per_kwh * dt_h) @ spill_vars)
    cost.append((p.reserve_penalty_per_kwh * dt_h) @ short)

    problem = cp.Problem(cp.Minimize(sum(cost, cp.Constant(0.0))), cons)
    return Model(problem=problem, dt_h=dt_h, pv=pv, ch=ch, dis=dis, e=e, g=g, gpu=gpu, unserved=unserved,
                 short=short, imp=imp, exp=exp, pv_ub=pv_ub, gpu_ub=gpu_ub, other=other, e0=e0, avail=avail,
                 prev_gpu=prev, extra=extra, quad=quad, grid=gm)
