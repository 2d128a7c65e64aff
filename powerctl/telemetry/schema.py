"""The telemetry schema: measurements, their fields and units. Tags: ``site``, ``module`` always;
``device`` on per-device points; ``class`` on GPU budget points; ``node`` on per-node GPU points
(``gpu.backend = "agents"``: ``p_kw``, ``cap_kw``, ``reachable`` of one GPU server); ``source`` where noted.

Per-device measurements carry the nature's signals (``powerctl.natures.SIGNALS``) that were GOOD at
that cycle: a stale or invalid signal is left out, never written as a number. The dashboard test
checks that every query in ``dashboards/`` uses only what is listed here.
"""

from __future__ import annotations

from powerctl.natures import SIGNALS, Nature

# measurement name per nature
NATURE_MEASUREMENT = {
    Nature.PV: "pv",
    Nature.BATTERY: "battery",
    Nature.GENSET: "genset",
    Nature.METER: "meter",
    Nature.GPU_POOL: "gpu",
}

# measurement -> field -> (unit, description)
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    NATURE_MEASUREMENT[n]: {s.name: (s.unit, s.description) for s in sigs.values()} for n, sigs in SIGNALS.items()
}
SCHEMA["gpu"]["budget_kw"] = ("kW", "dispatched GPU budget of one workload class (tag class)")
SCHEMA["gpu"]["reachable"] = ("", "1 while the node's agent answers, 0 while it counts at its lease (tag node)")
SCHEMA["site"] = {
    "mode": ("", "controller mode: auto / hold / manual (string)"),
    "available_kw": ("kW", "supply the guard counts on (worst case applied)"),
    "stale_signals": ("", "number of signals not GOOD (controller uses worst-case substitutes)"),
    "caps_w_mean": ("W", "mean GPU cap"),
    "guard_cuts": ("", "guard cuts so far"),
    "solve_ms": ("ms", "last planner solve time"),
}
SCHEMA["plan"] = {
    "solve_ms": ("ms", "solve time of this plan"),
    "rung": ("", "fallback ladder rung that produced it (string)"),
    "status": ("", "solver status (string)"),
    "pv_kw": ("kW", "first step: PV used"),
    "battery_kw": ("kW", "first step: battery, + = discharge"),
    "genset_kw": ("kW", "first step: genset output"),
    "gpu_kw": ("kW", "first step: GPU budget"),
    "unserved_kw": ("kW", "first step: load the plan cannot serve (slack)"),
    # grid-tied sites only (powerctl.grid_billing.plan_grid_fields)
    "grid_kw": ("kW", "first step: grid power, + = import"),
    "import_price_per_kwh": ("currency/kWh", "first step: import price"),
    "export_price_per_kwh": ("currency/kWh", "first step: export price"),
    "price_source": ("", "where the first step's import price came from: csv:<path>, tou:<season>/<period>, flat"),
    "grid_import_cost": ("currency", "plan: grid energy cost over the horizon"),
    "export_revenue": ("currency", "plan: export revenue over the horizon"),
    "demand_charge": ("currency", "plan: demand charge added above the billing period's peak so far"),
    "peak_import_kw": ("kW", "plan: the billing period's peak import (so far or planned)"),
}
SCHEMA["event"] = {
    "kind": ("", "guard_cut, shed, restore, readback_mismatch, write_error, stopped, implausible, "
                 "plausible_again, ... (string)"),
    "reason": ("", "why (string)"),
    "message": ("", "details (string)"),
    "class": ("", "workload class for shed/restore (string)"),
    "gpus": ("", "GPUs affected"),
    "caps_w": ("W", "cap applied (stopped)"),
    "finding": ("", "implausible / plausible_again: 'device.signal: why' (powerctl/control/plausibility.py)"),
}
