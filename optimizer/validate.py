"""Checks on site parameters and solve inputs: a clear InputError naming the field, never a bad number."""

from __future__ import annotations

import numpy as np

from powerctl.optimizer.params import DispatchInputs, FloatArray, InputError, SiteParams

# Supported solvers and the second rung each one falls back to.
SOLVERS = {"CLARABEL": "OSQP", "OSQP": "CLARABEL", "HIGHS": "CLARABEL"}
# "AUTO" picks per problem class: HiGHS's hot-started dual simplex for the LP (several times faster
# than an interior point here, see bench/optimizer.py), Clarabel when quadratic terms are on.
AUTO = "AUTO"


def primary_solver(p: SiteParams) -> str:
    """The solver the first rung uses for site `p` (resolves AUTO)."""
    name = p.solver.upper()
    if name == AUTO:
        return "CLARABEL" if p.ramp_quad_per_kw2 > 0 else "HIGHS"
    return name


def _finite(name: str, a: FloatArray) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise InputError(f"{name}: not finite (NaN or inf) at index {bad}")


def _shape(name: str, a: object, shape: tuple[int, ...]) -> FloatArray:
    arr = np.asarray(a, dtype=float)
    if arr.shape != shape:
        raise InputError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


def _nonneg(name: str, a: FloatArray) -> None:
    if np.any(a < 0):
        i = np.argwhere(a < 0)[0].tolist()
        raise InputError(f"{name}: negative value {float(a[tuple(i)]):.6g} at index {i}; must be >= 0")


def check_site(p: SiteParams) -> None:
    """Validate the static site description (raises InputError)."""
    steps = np.asarray(p.steps_s, dtype=float)
    if steps.ndim != 1 or steps.size == 0:
        raise InputError("steps_s: must be a non-empty 1-D array")
    _finite("steps_s", steps)
    if np.any(steps <= 0):
        raise InputError("steps_s: every step must be > 0 s")
    for i, b in enumerate(p.batteries):
        where = f"batteries[{i}] ({b.name})"
        if b.capacity_kwh <= 0 or b.max_charge_kw < 0 or b.max_discharge_kw < 0:
            raise InputError(f"{where}: capacity must be > 0 and power limits >= 0")
        if not 0 <= b.soc_min_pct < b.soc_max_pct <= 100:
            raise InputError(f"{where}: need 0 <= soc_min_pct < soc_max_pct <= 100")
        if not (0 < b.eta_charge <= 1 and 0 < b.eta_discharge <= 1):
            raise InputError(f"{where}: efficiencies must be in (0, 1]")
    for i, g in enumerate(p.gensets):
        where = f"gensets[{i}] ({g.name})"
        if not 0 <= g.min_load_kw <= g.rating_kw or g.rating_kw <= 0:
            raise InputError(f"{where}: need 0 <= min_load_kw <= rating_kw and rating_kw > 0")
        if min(g.f0_l_per_h, g.f1_l_per_kwh, g.fuel_price_per_l, g.start_cost) < 0:
            raise InputError(f"{where}: fuel curve, price and start cost must be >= 0")
        if min(g.min_up_s, g.min_down_s, g.warmup_s) < 0:
            raise InputError(f"{where}: min_up_s, min_down_s, warmup_s must be >= 0")
    for i, c in enumerate(p.gpu_classes):
        where = f"gpu_classes[{i}] ({c.name})"
        if not 0 <= c.p_min_kw <= c.p_max_kw:
            raise InputError(f"{where}: need 0 <= p_min_kw <= p_max_kw")
        bp = np.asarray(c.value_breakpoints_kw, dtype=float)
        v = np.asarray(c.value_per_h, dtype=float)
        if bp.shape != v.shape or bp.ndim != 1:
            raise InputError(f"{where}: value_breakpoints_kw and value_per_h must be 1-D of equal length")
        if bp.size == 1:
            raise InputError(f"{where}: a value curve needs at least two breakpoints")
        if bp.size >= 2:
            _finite(f"{where}.value_breakpoints_kw", bp)
            _finite(f"{where}.value_per_h", v)
            if np.any(np.diff(bp) <= 0):
                raise InputError(f"{where}: value_breakpoints_kw must be strictly increasing")
            slopes = np.diff(v) / np.diff(bp)
            if np.any(np.diff(slopes) > 1e-9 * max(1.0, float(np.max(np.abs(slopes))))):
                raise InputError(f"{where}: value curve must be concave (slopes non-increasing)")
        if c.ramp_penalty_per_kw < 0 or c.ramp_up_kw_per_s <= 0:
            raise InputError(f"{where}: ramp_penalty_per_kw must be >= 0 and ramp_up_kw_per_s > 0")
    if p.grid is not None:
        gr = p.grid
        for name in ("import_max_kw", "export_max_kw", "demand_charge_per_kw"):
            val = getattr(gr, name)
            if not np.isfinite(val) or val < 0:
                raise InputError(f"grid ({gr.name}).{name}: {val!r} must be finite and >= 0")
    if p.facility_overhead < 0:
        raise InputError("facility_overhead: must be >= 0")
    for name in ("unserved_penalty_per_kwh", "spill_penalty_per_kwh", "reserve_penalty_per_kwh",
                 "reserve_load_pct", "reserve_pv_pct", "ramp_quad_per_kw2"):
        if getattr(p, name) < 0:
            raise InputError(f"{name}: must be >= 0")
    if p.solver.upper() not in (*SOLVERS, AUTO):
        raise InputError(f"solver: {p.solver!r} is not one of {', '.join((*SOLVERS, AUTO))}")
    if p.solver.upper() == "HIGHS" and p.ramp_quad_per_kw2 > 0:
        raise InputError("solver: HIGHS solves the linear model only; set ramp_quad_per_kw2 = 0 or pick CLARABEL")


def check_inputs(p: SiteParams, x: DispatchInputs) -> DispatchInputs:
    """Validate one solve's inputs against the site; returns them as float/bool numpy arrays."""
    T = p.horizon_steps
    n_pv, n_bat, n_gen, n_cls = len(p.pv), len(p.batteries), len(p.gensets), len(p.gpu_classes)
    pv = _shape("pv_forecast_kw", x.pv_forecast_kw, (n_pv, T))
    gpu = _shape("gpu_demand_kw", x.gpu_demand_kw, (n_cls, T))
    other = _shape("other_load_kw", x.other_load_kw, (T,))
    soc = _shape("soc_pct", x.soc_pct, (n_bat,))
    gen_on_raw = np.asarray(x.genset_on)
    if gen_on_raw.shape != (n_gen,):
        raise InputError(f"genset_on: expected shape {(n_gen,)}, got {gen_on_raw.shape}")
    state = _shape("genset_state_s", x.genset_state_s, (n_gen,))
    prev = _shape("prev_gpu_kw", x.prev_gpu_kw, (n_cls,))
    extra = (np.zeros(T) if x.reserve_extra_kw is None
             else _shape("reserve_extra_kw", x.reserve_extra_kw, (T,)))
    for name, a in (("pv_forecast_kw", pv), ("gpu_demand_kw", gpu), ("other_load_kw", other),
                    ("soc_pct", soc), ("genset_state_s", state), ("prev_gpu_kw", prev),
                    ("reserve_extra_kw", extra)):
        _finite(name, a)
        _nonneg(name, a)
    for i, b in enumerate(p.batteries):
        # A hair of tolerance: a plan's own end SoC fed back may sit 1e-9 outside after rounding.
        if not b.soc_min_pct - 1e-6 <= soc[i] <= b.soc_max_pct + 1e-6:
            raise InputError(
                f"soc_pct[{i}] ({b.name}): {soc[i]:.3f} % is outside the window "
                f"[{b.soc_min_pct}, {b.soc_max_pct}] %"
            )
    soc = np.clip(soc, [b.soc_min_pct for b in p.batteries], [b.soc_max_pct for b in p.batteries])
    out = DispatchInputs(pv_forecast_kw=pv, gpu_demand_kw=gpu, other_load_kw=other, soc_pct=soc,
                         genset_on=gen_on_raw.astype(bool), genset_state_s=state, prev_gpu_kw=prev,
                         reserve_extra_kw=extra)
    return _check_grid_inputs(p, x, out) if p.grid is not None else out


def _check_grid_inputs(p: SiteParams, x: DispatchInputs, out: DispatchInputs) -> DispatchInputs:
    """Grid prices, limits, billing mask and peak: shapes and finiteness (prices may be negative)."""
    T = p.horizon_steps

    def opt(name: str, a: object, nonneg: bool) -> FloatArray | None:
        if a is None:
            return None
        arr = _shape(name, a, (T,))
        _finite(name, arr)
        if nonneg:
            _nonneg(name, arr)
        return arr

    out.import_price_per_kwh = opt("import_price_per_kwh", x.import_price_per_kwh, False)
    out.export_price_per_kwh = opt("export_price_per_kwh", x.export_price_per_kwh, False)
    out.grid_import_max_kw = opt("grid_import_max_kw", x.grid_import_max_kw, True)
    out.grid_export_max_kw = opt("grid_export_max_kw", x.grid_export_max_kw, True)
    out.co2_kg_per_kwh = opt("co2_kg_per_kwh", x.co2_kg_per_kwh, True)
    if x.in_billing_period is not None:
        mask = np.asarray(x.in_billing_period)
        if mask.shape != (T,):
            raise InputError(f"in_billing_period: expected shape {(T,)}, got {mask.shape}")
        out.in_billing_period = mask.astype(bool)
    peak = float(x.peak_import_kw)
    if not np.isfinite(peak) or peak < 0:
        raise InputError(f"peak_import_kw: {peak!r} must be finite and >= 0")
    out.peak_import_kw = peak
    for name in ("demand_charge_per_kw", "demand_charge_next_per_kw"):
        rate = getattr(x, name)
        if rate is not None and (not np.isfinite(rate) or rate < 0):
            raise InputError(f"{name}: {rate!r} must be finite and >= 0")
        setattr(out, name, None if rate is None else float(rate))
    out.price_source = str(x.price_source)[:200]
    return out
