"""KPIs of a replay, from the plant's energy counters and the per-step time series.

Headline: ``value_minus_fuel`` = value of compute delivered - fuel cost. Value of compute is what the
plant measured (per GPU, its actual power through its class's cap-vs-throughput curve, times the
class value; only the served share of a step counts), not what the planner hoped for.

``energy_balance_error_pct``: |sources - sinks| / sources over the run, where sources = PV delivered
+ battery discharge + genset + grid import + unserved and sinks = load + spill + battery charge +
grid export. ``battery_balance_error_pct``: |charge - discharge - losses - change in stored energy|
relative to the battery throughput. Both are tested to stay below 0.1 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from powerctl.natures import Nature


def compute_kpis(res: Any) -> dict[str, Any]:
    plant, s, cfg = res.plant, res.series, res.plant.cfg
    e = plant.e
    gpu = plant.gpu
    gens = list(plant.gensets.values())
    bats = list(plant.batteries.values())
    fuel_l = sum(g.fuel_used_l for g in gens)
    prices = {d.name: d.limits for d in cfg.by_nature(Nature.GENSET)}
    fuel_cost = sum(g.fuel_used_l * prices[g.name].fuel_price_per_l for g in gens)
    co2_kg = sum(g.fuel_used_l * prices[g.name].co2_kg_per_l for g in gens)
    start_cost = sum(g.starts * prices[g.name].start_cost for g in gens)
    window_kwh = sum(b.capacity_kwh * (b.soc_max_pct - b.soc_min_pct) / 100.0 for b in bats)
    stored_now = plant.stored_kwh()
    stored0 = float(res.series.attrs.get("stored0_kwh", np.nan))

    sources = e["pv"] + e["battery_discharge"] + e["genset"] + e["grid_import"] + e["unserved"]
    sinks = e["load"] + e["spill"] + e["battery_charge"] + e["grid_export"]
    balance_pct = 100.0 * abs(sources - sinks) / max(sources, 1e-9)
    bat_through = e["battery_charge"] + e["battery_discharge"]
    d_stored = stored_now - stored0 if np.isfinite(stored0) else np.nan
    bat_resid = e["battery_charge"] - e["battery_discharge"] - plant.battery_loss_kwh() - d_stored
    bat_pct = 100.0 * abs(bat_resid) / max(bat_through, 1e-9) if np.isfinite(d_stored) else float("nan")

    dur_h = res.sim_s / 3600.0
    k: dict[str, Any] = {
        "value_minus_fuel": gpu.value - fuel_cost,
        "compute_value": gpu.value,
        "compute_energy_kwh": gpu.e_kwh,
        "compute_work_gpu_h": {n: float(w) for n, w in zip(gpu.class_names, gpu.work_gpu_h, strict=True)},
        "mean_gpu_kw": e["gpu"] / dur_h if dur_h > 0 else 0.0,
        "pv_available_kwh": e["pv_available"],
        "pv_used_kwh": e["pv"],
        "renewable_to_compute_pct": 100.0 * e["pv"] / e["pv_available"] if e["pv_available"] > 0 else 0.0,
        "pv_curtailed_kwh": e["pv_curtailed"],
        "unserved_kwh": e["unserved"],
        "unserved_steps": int((s["unserved_kw"] > 1e-6).sum()),
        "spill_kwh": e["spill"],
        "load_kwh": e["load"],
        "genset_energy_kwh": e["genset"],
        "genset_hours": sum(g.run_time_s for g in gens) / 3600.0,
        "genset_starts": sum(g.starts for g in gens),
        "fuel_l": fuel_l,
        "fuel_deliveries": sum(g.deliveries for g in gens),
        "fuel_cost": fuel_cost,
        "start_cost": start_cost,
        "co2_kg": co2_kg,
        "battery_charge_kwh": e["battery_charge"],
        "battery_discharge_kwh": e["battery_discharge"],
        "battery_loss_kwh": plant.battery_loss_kwh(),
        "battery_equivalent_cycles": e["battery_discharge"] / window_kwh if window_kwh > 0 else 0.0,
        "soc_end_pct": {b.name: b.soc_pct for b in bats},
        "gpu_cap_changes": int(s["gpu_caps_changed"].sum()),
        "guard_cut_steps": int(s["guard_cut"].sum()),
        "limit_violations": limit_violations(res),
        "energy_balance_error_pct": balance_pct,
        "battery_balance_error_pct": bat_pct,
        "controller": res.controller.stats(),
        "sim_days": res.sim_s / 86400.0,
        "wall_s": res.wall_s,
        "speed_x_real_time": res.sim_s / res.wall_s if res.wall_s > 0 else float("inf"),
        "forecast_peeked": bool(getattr(res.forecaster, "peeked", False)),  # LiveForecaster: past only
    }
    k.update(grid_kpis(res))
    # The headline for grid-tied sites (= value_minus_fuel without a grid).
    k["value_minus_energy"] = k["value_minus_fuel"] - k.get("energy_cost", 0.0) - k.get("demand_charge", 0.0) \
        + k.get("export_revenue", 0.0)
    return k


DEMAND_INTERVAL_S = 900.0  # utilities bill the peak of 15-minute mean import


def grid_kpis(res: Any) -> dict[str, Any]:
    """Grid energy in/out, energy cost, export revenue and demand charge (grid-tied sites only).

    Prices are the site's tariff at the trace's calendar time (powerctl.tariffs); the demand charge
    is the rate times the peak 15-minute mean import of each billing period the replay touches,
    pro rata of the part of that period the replay covers (a 7-day replay carries 7/30 of a
    month's charge, as it carries 7 days of energy cost; `demand_charge_full` is the whole bill's).
    """
    cfg, s, e = res.plant.cfg, res.series, res.plant.e
    meters = cfg.by_nature(Nature.METER)
    if not any(m.limits.max_import_kw > 0 or m.limits.max_export_kw > 0 for m in meters) or s.empty:
        return {}
    from powerctl.tariff_config import Tariff
    from powerctl.tariffs import TariffPrices, billing_key, period_bounds_s

    tariff = cfg.tariff if cfg.tariff is not None else Tariff()
    t_rel = s["t_s"].to_numpy(float)
    dt_s = np.diff(np.append(t_rel, res.sim_s))
    t_abs = pd.Timestamp(res.trace.t0).timestamp() + t_rel
    hp = TariffPrices.from_config(tariff).horizon(float(t_abs[0]), dt_s)
    grid_kw = s["grid_kw"].to_numpy(float)
    imp, exp = np.maximum(grid_kw, 0.0), np.maximum(-grid_kw, 0.0)
    dt_h = dt_s / 3600.0
    interval = np.floor(t_abs / DEMAND_INTERVAL_S)
    mean_imp = pd.Series(imp * dt_s).groupby(interval).sum() / pd.Series(dt_s).groupby(interval).sum()
    keys = billing_key(np.asarray(mean_imp.index, float) * DEMAND_INTERVAL_S, tariff.billing_period,
                       tariff.utc_offset_h)
    peaks = mean_imp.groupby(keys).max()
    share = []
    for key in peaks.index:
        in_p = billing_key(t_abs, tariff.billing_period, tariff.utc_offset_h) == key
        start, end = period_bounds_s(float(t_abs[in_p][0]), tariff.billing_period, tariff.utc_offset_h)
        share.append(float(dt_s[in_p].sum()) / (end - start))
    out: dict[str, Any] = {
        "grid_import_kwh": e["grid_import"],
        "grid_export_kwh": e["grid_export"],
        "energy_cost": float(np.sum(imp * hp.import_per_kwh * dt_h)),
        "export_revenue": float(np.sum(exp * hp.export_per_kwh * dt_h)),
        "demand_charge": float(tariff.demand_charge_per_kw * np.dot(peaks.to_numpy(float), share)),
        "demand_charge_full": float(tariff.demand_charge_per_kw * peaks.sum()),
        "peak_import_kw": float(peaks.max()),
        "grid_outage_steps": int((~s["grid_up"].astype(bool)).sum()) if "grid_up" in s else 0,
    }
    if tariff.co2_kg_per_kwh is not None:
        out["grid_co2_kg"] = e["grid_import"] * tariff.co2_kg_per_kwh
    return out


def limit_violations(res: Any) -> dict[str, int]:
    """Steps where something left its device limits (the plant clamps physics; these count what
    reached it) plus steps with unserved load (supply short: a real site would trip)."""
    plant, s = res.plant, res.series
    cfg = plant.cfg
    out = {
        "gpu_cap_outside_range": 0,
        "battery_setpoint_outside_limits": 0,
        "soc_outside_window": 0,
        "unserved_load": int((s["unserved_kw"] > 1e-6).sum()),
    }
    # caps are checked by the plant's clamp; count requests that needed clamping
    out["gpu_cap_outside_range"] = int(res.series.attrs.get("caps_clamped", 0))
    bats = cfg.by_nature(Nature.BATTERY)
    if bats:
        lim_c = sum(b.limits.max_charge_kw for b in bats)
        lim_d = sum(b.limits.max_discharge_kw for b in bats)
        sp = s["battery_set_kw"].to_numpy(float)
        out["battery_setpoint_outside_limits"] = int(np.sum((sp < -lim_c - 1e-6) | (sp > lim_d + 1e-6)))
        for b in bats:
            col = f"soc_pct.{b.name}"
            if col in s:
                v = s[col].to_numpy(float)
                out["soc_outside_window"] += int(
                    np.sum((v < b.limits.soc_min_pct - 1e-6) | (v > b.limits.soc_max_pct + 1e-6))
                )
    return out


_ORDER = [
    ("value_minus_energy", "value - fuel - grid cost + export", "{:,.2f}"),
    ("value_minus_fuel", "value of compute - fuel", "{:,.2f}"),
    ("compute_value", "value of compute", "{:,.2f}"),
    ("compute_energy_kwh", "compute energy (GPU IT) kWh", "{:,.1f}"),
    ("renewable_to_compute_pct", "PV available turned into use %", "{:.1f}"),
    ("pv_available_kwh", "PV available kWh", "{:,.1f}"),
    ("pv_curtailed_kwh", "PV curtailed kWh", "{:,.1f}"),
    ("unserved_kwh", "unserved kWh", "{:,.3f}"),
    ("spill_kwh", "spilled kWh", "{:,.2f}"),
    ("genset_hours", "genset hours", "{:.2f}"),
    ("genset_starts", "genset starts", "{}"),
    ("fuel_l", "fuel L", "{:,.1f}"),
    ("fuel_cost", "fuel cost", "{:,.2f}"),
    ("fuel_deliveries", "fuel deliveries (tank refills)", "{}"),
    ("co2_kg", "CO2 kg", "{:,.1f}"),
    ("grid_import_kwh", "grid import kWh", "{:,.1f}"),
    ("grid_export_kwh", "grid export kWh", "{:,.1f}"),
    ("energy_cost", "grid energy cost", "{:,.2f}"),
    ("export_revenue", "export revenue", "{:,.2f}"),
    ("demand_charge", "demand charge", "{:,.2f}"),
    ("peak_import_kw", "peak import (15-min mean) kW", "{:,.1f}"),
    ("grid_co2_kg", "grid CO2 kg", "{:,.1f}"),
    ("battery_discharge_kwh", "battery discharge kWh", "{:,.1f}"),
    ("battery_equivalent_cycles", "battery equivalent cycles", "{:.2f}"),
    ("gpu_cap_changes", "GPU cap changes", "{:,}"),
    ("guard_cut_steps", "guard cut steps", "{:,}"),
    ("energy_balance_error_pct", "energy balance error %", "{:.2e}"),
    ("battery_balance_error_pct", "battery balance error %", "{:.2e}"),
    ("speed_x_real_time", "speed (x real time)", "{:,.0f}"),
]


def format_kpis(k: dict[str, Any]) -> str:
    """A plain-text KPI table."""
    lines = []
    run = k.get("run")
    if run:
        lines.append(
            f"controller {run['controller']}{' (perfect foresight)' if run['perfect_foresight'] else ''}, "
            f"{run['days']:g} days from {run['start']}, trace {run['trace']}"
        )
    for key, label, fmt in _ORDER:
        if key in k:
            lines.append(f"  {label:<34} {fmt.format(k[key])}")
    lines.append(f"  {'limit violations':<34} {k.get('limit_violations')}")
    c = k.get("controller", {})
    if c.get("plans"):
        lines.append(
            f"  {'plans by rung':<34} {c.get('plan_rungs')}  (solve p50 {c.get('solve_ms_p50', 0):.1f} ms, "
            f"p99 {c.get('solve_ms_p99', 0):.1f} ms)"
        )
    return "\n".join(lines)


def compare_table(results: dict[str, dict[str, Any]]) -> str:
    """Side-by-side headline KPIs of several replays (name -> kpis)."""
    keys = [
        "value_minus_fuel",
        "compute_value",
        "fuel_cost",
        "unserved_kwh",
        "genset_hours",
        "genset_starts",
        "renewable_to_compute_pct",
        "battery_equivalent_cycles",
    ]
    if any("energy_cost" in r for r in results.values()):  # grid-tied: what the grid costs and pays
        keys = ["value_minus_energy", *keys[:3], "energy_cost", "demand_charge", "export_revenue", "grid_import_kwh",
                "grid_export_kwh", *keys[3:]]
    head = f"{'':<28}" + "".join(f"{n:>16}" for n in results)
    rows = [head]
    for key in keys:
        rows.append(f"{key:<28}" + "".join(f"{results[n].get(key, float('nan')):>16,.2f}" for n in results))
    return "\n".join(rows)
