"""The simulated site: PV arrays, batteries, gensets, GPU cluster, facility overhead, other load.

No I/O and no wall clock: ``step(t_s)`` advances the physics to ``t_s`` (any step length). Each
step holds its powers constant over ``(t_prev, t_s]`` (zero-order hold), so energy counters are
exact sums of power x dt and the balance closes to round-off.

How the power balance is closed (islanded site, the default)
------------------------------------------------------------
The battery inverter is **grid-forming**: it sets voltage and frequency and so absorbs whatever
mismatch remains. Its *setpoint* therefore cannot be obeyed literally in an island; it is used as
the *preference* that steers the other sources:

1. load = GPU power x (1 + facility overhead) + other load;
2. every genset that is running (status 3) follows ``load - PV available - battery setpoints``
   (so a charge setpoint makes the genset pick up more), clamped to ``[min load, rating]`` and its
   ramp, shared between running gensets by rating; a genset given a base-load setpoint
   (``set_genset_kw``) holds it instead, as long as a battery or the grid takes the balance, and
   does not pick up a load step by itself;
3. the batteries deliver the rest, ``load - PV - gensets``, clamped to what the BMS allows now
   (limits taper near the SoC ends and one step cannot cross the window), shared by their limits;
   With more than one battery, only the **first battery of the site** (config order,
   ``Plant.grid_former``) is grid-forming and takes this residual; every other battery is
   grid-following and runs at its own setpoint (clamped). When the grid-forming battery cannot
   take the whole residual (at its limit or its SoC edge), the followers cover what is left from
   their remaining headroom, shared by that headroom (frequency-watt support, as IEEE 1547
   inverters do when the frequency moves), so a setpoint never makes load unserved that the
   batteries together could have carried;
4. if supply is still short, the shortfall is **unserved** load (a real site would trip: the KPI
   and the safety tests count it); if there is still excess (battery full, genset at min load),
   PV is **curtailed** (the grid-forming inverter raises frequency, PV droops), and anything left
   after that (a genset held at min load) is **spilled** into a dump load.

With a grid meter whose ``max_import_kw`` or ``max_export_kw`` is > 0 the grid is the
grid-forming source instead: batteries follow their setpoints (clamped), gensets follow as above,
and the grid takes the mismatch within its import/export limits; beyond that, unserved/curtail/spill.

Balance identity every step (tested): PV + battery + genset + grid import + unserved
= load + spill, where battery is + discharge and ``grid`` is + import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.sim.plant.battery import Battery
from powerctl.sim.plant.genset import Genset, GensetStatus
from powerctl.sim.plant.gpu_cluster import DemandFn, GpuCluster
from powerctl.sim.plant.grid import GridConnection
from powerctl.sim.plant.pv import PvArray, demo_pv_kw_fn

_EPS = 1e-9


class Plant:
    """In-process simulated site: PV, batteries, gensets, GPU cluster, facility overhead. No I/O; time is an argument.

    ``pv_kw_fn(t_s)`` gives the available PV kW for the whole site (shared between arrays by kWp);
    default: ``demo_pv_kw_fn`` (clear-sky-like day with a passing cloud, ``time_scale`` x faster than
    ``t_s``). ``gpu_demand_fn(t_s)`` gives uncapped GPU demand in W: a float (every GPU), a mapping
    class name -> W per GPU, or one value per GPU; default: every GPU wants ``max_w``.
    ``other_load_kw`` is a constant or a function of ``t_s`` (auxiliary load besides the facility overhead).
    """

    def __init__(
        self,
        cfg: SiteConfig,
        pv_kw_fn: Callable[[float], float] | None = None,
        gpu_demand_fn: DemandFn | None = None,
        t0_s: float = 0.0,
        *,
        time_scale: float = 20.0,
        soc0_pct: float = 50.0,
        other_load_kw: float | Callable[[float], float] = 0.0,
        genset_start_delay_s: float = 10.0,
        genset_cooldown_s: float = 60.0,
        genset_tank_l: float | None = None,
        genset_refill_below_pct: float | None = None,
        gpu_tau_s: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.t_s = float(t0_s)
        self.pvs: dict[str, PvArray] = {}
        for d in cfg.by_nature(Nature.PV):
            lim = d.limits
            self.pvs[d.name] = PvArray(d.name, lim.kwp, lim.max_ac_kw or lim.kwp)
        self.kwp_total = sum(p.kwp for p in self.pvs.values())
        self.pv_kw_fn = pv_kw_fn or demo_pv_kw_fn(self.kwp_total, time_scale=time_scale, t0_s=t0_s)
        self.batteries: dict[str, Battery] = {}
        for d in cfg.by_nature(Nature.BATTERY):
            b = d.limits
            self.batteries[d.name] = Battery(
                d.name,
                b.capacity_kwh,
                b.max_charge_kw,
                b.max_discharge_kw,
                b.soc_min_pct,
                b.soc_max_pct,
                b.eta_charge,
                b.eta_discharge,
                soc_pct=min(max(soc0_pct, b.soc_min_pct), b.soc_max_pct),
            )
        # island with several batteries: this one forms the grid and takes the residual (module doc)
        self.grid_former: str | None = next(iter(self.batteries), None)
        self.gensets: dict[str, Genset] = {}
        for d in cfg.by_nature(Nature.GENSET):
            g = d.limits
            f0, f1 = g.fuel_coeffs()
            tank = (
                genset_tank_l if genset_tank_l is not None else 24.0 * (f0 * g.rating_kw + f1 * g.rating_kw)
            )
            self.gensets[d.name] = Genset(
                d.name,
                g.rating_kw,
                g.min_load_pct,
                f0,
                f1,
                genset_start_delay_s,
                g.warmup_s,
                genset_cooldown_s,
                tank_l=tank,
                fuel_l=tank,
                ramp_kw_per_s=g.ramp_kw_per_s,
                refill_below_pct=genset_refill_below_pct,
            )
        meters = cfg.by_nature(Nature.METER)
        self.grid_import_max_kw = sum(m.limits.max_import_kw for m in meters)
        self.grid_export_max_kw = sum(m.limits.max_export_kw for m in meters)
        self.meter_names = [m.name for m in meters]
        self.grid_up = True  # False: a grid outage; the site islands on its battery inverter
        # True: an export limiter at the connection holds max_export_kw (what the replays model).
        # False: physics only, the grid takes any surplus, so only the controller holds the cap
        # (tests/faults/test_zero_export.py).
        self.export_limiter = True
        # Scheduled and random outages on top (sim/plant/grid.py); a replay may replace it.
        self.grid = GridConnection(self.grid_import_max_kw, self.grid_export_max_kw)
        self.gpu = GpuCluster(cfg.gpu, gpu_demand_fn, tau_s=gpu_tau_s)
        self.overhead = cfg.gpu.facility_overhead
        self._other = other_load_kw
        # last-step powers
        self.load_kw = 0.0
        self.other_kw = 0.0
        self.grid_kw = 0.0
        self.unserved_kw_now = 0.0
        self.spill_kw = 0.0
        # energy counters (kWh)
        self.e = dict.fromkeys(
            (
                "pv",
                "pv_available",
                "pv_curtailed",
                "battery_discharge",
                "battery_charge",
                "genset",
                "grid_import",
                "grid_export",
                "load",
                "gpu",
                "overhead",
                "other",
                "unserved",
                "spill",
            ),
            0.0,
        )

    # --- commands -------------------------------------------------------------------------
    def set_battery_kw(self, name: str, p_kw: float) -> float:
        """Battery power setpoint, + = discharge; clamped to the limits allowed now. Returns it."""
        b = self.batteries[name]
        b.setpoint_kw = b.clamp_kw(float(p_kw))
        return b.setpoint_kw

    def set_genset_kw(self, name: str, p_kw: float) -> None:
        """Base-load setpoint: a running genset holds it (clamped to [min load, rating] and its ramp)
        while a battery or the grid takes the balance (module doc, step 2)."""
        self.gensets[name].setpoint_kw = max(0.0, float(p_kw)) if math.isfinite(p_kw) else None

    def set_genset_run(self, name: str, run: bool) -> None:
        """Start (pre-start delay, then warm-up, then running) or stop (cool-down, then stopped)."""
        self.gensets[name].command(run)

    def set_gpu_caps_w(self, caps_w: list[float] | np.ndarray) -> np.ndarray:
        """Per-GPU caps in W (config class order), clamped to [min_w, max_w]; returns enforced caps."""
        return self.gpu.set_caps_w(caps_w)

    def set_pv_limit_pct(self, name: str, pct: float) -> None:
        """Inverter active-power limit in % of its AC rating (SunSpec WMaxLimPct)."""
        self.pvs[name].limit_pct = min(max(float(pct), 0.0), 100.0)

    # --- physics --------------------------------------------------------------------------
    def other_load_at(self, t_s: float) -> float:
        return float(self._other(t_s)) if callable(self._other) else float(self._other)

    def pv_available_kw_at(self, t_s: float) -> float:
        p = float(self.pv_kw_fn(t_s))
        if not np.isfinite(p):
            raise ValueError(f"PV function returned {p} at t_s={t_s}")
        return max(p, 0.0)

    def step(self, t_s: float) -> None:
        """Advance the physics to ``t_s`` (>= the current time) and close the power balance."""
        dt = float(t_s) - self.t_s
        if dt < 0:
            raise ValueError(f"Plant.step: time went backwards ({t_s} < {self.t_s})")
        for g in self.gensets.values():
            g.advance_state(dt)
        self.gpu.advance(t_s, dt)
        gpu_kw = self.gpu.power_kw()
        self.other_kw = self.other_load_at(t_s)
        load = gpu_kw * (1.0 + self.overhead) + self.other_kw

        pv_total = self.pv_available_kw_at(t_s)
        for pv in self.pvs.values():
            pv.available_kw = pv_total * pv.kwp / self.kwp_total if self.kwp_total > 0 else 0.0
        pv_head = {n: pv.headroom_kw() for n, pv in self.pvs.items()}
        pv_head_total = sum(pv_head.values())

        grid_forming_grid = self.grid_present(t_s) and (self.grid_import_max_kw > 0 or self.grid_export_max_kw > 0)
        bat_pref = sum(b.setpoint_kw for b in self.batteries.values())
        gen_kw = self._dispatch_gensets(load - pv_head_total - bat_pref, dt, bool(self.batteries) or grid_forming_grid)
        gen_total = sum(gen_kw.values())

        need = load - pv_head_total - gen_total  # what batteries (+ grid) must supply
        if grid_forming_grid:
            bat_kw = {n: b.clamp_kw(b.setpoint_kw, dt) for n, b in self.batteries.items()}
            export_max_kw = self.grid_export_max_kw if self.export_limiter else math.inf
            grid = min(max(need - sum(bat_kw.values()), -export_max_kw), self.grid_import_max_kw)
        else:
            bat_kw = self._island_batteries(need, dt)
            grid = 0.0
        residual = need - sum(bat_kw.values()) - grid
        if abs(residual) < 1e-9:  # float round-off, not a shortfall or a surplus
            residual = 0.0
        unserved = max(residual, 0.0)
        excess = max(-residual, 0.0)
        curtail = min(excess, pv_head_total)
        spill = excess - curtail

        # apply
        pv_scale = (pv_head_total - curtail) / pv_head_total if pv_head_total > _EPS else 0.0
        for n, pv in self.pvs.items():
            pv.deliver(pv_head[n] * pv_scale, dt)
        for n, b in self.batteries.items():
            bat_kw[n] = b.apply(bat_kw[n], dt)
        for n, g in self.gensets.items():
            g.deliver(gen_kw[n], dt)

        self.gpu.book(dt, 1.0 - unserved / load if load > _EPS else 1.0)
        self.load_kw, self.grid_kw, self.unserved_kw_now, self.spill_kw = load, grid, unserved, spill
        self._book(dt, pv_total, gpu_kw, load, bat_kw, gen_total, grid, unserved, spill)
        self.t_s = float(t_s)

    def _dispatch_gensets(self, want_kw: float, dt: float, balanced: bool) -> dict[str, float]:
        """Running gensets' output: a base-loaded one holds its setpoint where something else
        (``balanced``: a battery or the grid) takes the balance; the others share the rest."""
        running = {n: g for n, g in self.gensets.items() if g.running}
        out = dict.fromkeys(self.gensets, 0.0)
        based = {n: g.setpoint_kw for n, g in running.items() if balanced and g.setpoint_kw is not None}
        for n, set_kw in based.items():
            out[n] = running[n].clamp_kw(set_kw, dt)
        rest_kw = want_kw - sum(out[n] for n in based)
        total_rating = sum(g.rating_kw for n, g in running.items() if n not in based)
        for n, g in running.items():
            if n not in based:
                out[n] = g.clamp_kw(rest_kw * g.rating_kw / total_rating, dt)
        return out

    def _island_batteries(self, need_kw: float, dt: float) -> dict[str, float]:
        """Island: the grid-forming battery takes the residual, the others follow their setpoints (module doc)."""
        former = self.grid_former
        if len(self.batteries) < 2 or former not in self.batteries:
            return self._share_batteries(need_kw, dt)
        out = {n: b.clamp_kw(b.setpoint_kw, dt) for n, b in self.batteries.items() if n != former}
        rest_kw = need_kw - sum(out.values())
        out[former] = self.batteries[former].clamp_kw(rest_kw, dt)
        short_kw = rest_kw - out[former]  # + still short of supply, - still a surplus
        if abs(short_kw) > _EPS:
            head = {n: self._headroom_kw(n, out[n], short_kw > 0, dt) for n in out if n != former}
            total = sum(head.values())
            frac = min(abs(short_kw) / total, 1.0) if total > _EPS else 0.0
            sign = 1.0 if short_kw > 0 else -1.0
            for n, h in head.items():
                out[n] += sign * h * frac
        return {n: out[n] for n in self.batteries}

    def _headroom_kw(self, name: str, p_kw: float, discharge: bool, dt: float) -> float:
        """How much further battery ``name`` can go from ``p_kw`` towards discharge (or charge), >= 0."""
        b = self.batteries[name]
        return max(b.discharge_limit_kw(dt) - p_kw if discharge else p_kw + b.charge_limit_kw(dt), 0.0)

    def _share_batteries(self, need_kw: float, dt: float) -> dict[str, float]:
        """Grid-forming share of ``need_kw`` (+ discharge) in proportion to each battery's limit."""
        if need_kw >= 0:
            lim = {n: b.discharge_limit_kw(dt) for n, b in self.batteries.items()}
        else:
            lim = {n: b.charge_limit_kw(dt) for n, b in self.batteries.items()}
        total = sum(lim.values())
        if total <= _EPS:
            return dict.fromkeys(self.batteries, 0.0)
        frac = min(abs(need_kw) / total, 1.0)
        sign = 1.0 if need_kw >= 0 else -1.0
        return {n: sign * lim[n] * frac for n in self.batteries}

    def _book(
        self,
        dt: float,
        pv_avail: float,
        gpu_kw: float,
        load: float,
        bat_kw: dict[str, float],
        gen_kw: float,
        grid: float,
        unserved: float,
        spill: float,
    ) -> None:
        h = dt / 3600.0
        e = self.e
        pv_kw = sum(p.p_kw for p in self.pvs.values())
        e["pv"] += pv_kw * h
        e["pv_available"] += pv_avail * h
        e["pv_curtailed"] += sum(p.curtailed_kw for p in self.pvs.values()) * h
        e["battery_discharge"] += sum(max(p, 0.0) for p in bat_kw.values()) * h
        e["battery_charge"] += sum(max(-p, 0.0) for p in bat_kw.values()) * h
        e["genset"] += gen_kw * h
        e["grid_import"] += max(grid, 0.0) * h
        e["grid_export"] += max(-grid, 0.0) * h
        e["load"] += load * h
        e["gpu"] += gpu_kw * h
        e["overhead"] += gpu_kw * self.overhead * h
        e["other"] += self.other_kw * h
        e["unserved"] += unserved * h
        e["spill"] += spill * h

    # --- measurements ---------------------------------------------------------------------
    def pv_kw(self, name: str) -> float:
        return self.pvs[name].p_kw

    def pv_available_kw(self, name: str) -> float:
        return self.pvs[name].available_kw

    def pv_e_kwh(self, name: str) -> float:
        return self.pvs[name].e_kwh

    def pv_state(self, name: str) -> int:
        return self.pvs[name].state()

    def battery_kw(self, name: str) -> float:
        return self.batteries[name].p_kw

    def battery_soc_pct(self, name: str) -> float:
        return self.batteries[name].soc_pct

    def battery_max_charge_kw(self, name: str) -> float:
        return self.batteries[name].charge_limit_kw()

    def battery_max_discharge_kw(self, name: str) -> float:
        return self.batteries[name].discharge_limit_kw()

    def genset_kw(self, name: str) -> float:
        return self.gensets[name].p_kw

    def genset_running(self, name: str) -> bool:
        return self.gensets[name].running

    def genset_status(self, name: str) -> int:
        """DSE engine status: 0 stopped, 1 pre-start, 2 warming up, 3 running, 4 cooling down."""
        return int(self.gensets[name].status)

    def genset_run_time_s(self, name: str) -> float:
        return self.gensets[name].run_time_s

    def genset_fuel_pct(self, name: str) -> float:
        return self.gensets[name].fuel_pct

    def genset_starts(self, name: str) -> int:
        return self.gensets[name].starts

    def gpu_power_kw(self) -> float:
        return self.gpu.power_kw()

    def gpu_power_w(self) -> np.ndarray:
        return self.gpu.power_w.copy()

    def gpu_caps_w(self) -> np.ndarray:
        return self.gpu.caps_w.copy()

    def site_load_kw(self) -> float:
        """Total consumption: GPU x (1 + overhead) + other load (last step)."""
        return self.load_kw

    def unserved_kw(self) -> float:
        return self.unserved_kw_now

    def meter_kw(self, name: str | None = None) -> float:
        """Grid import (+) / export (-) at the point of connection (0 in an island)."""
        return self.grid_kw

    def meter_v(self, name: str | None = None) -> float:
        """Phase voltage at the point of connection: nominal while the grid is up, 0 V in an outage."""
        return 230.0 if self.grid_present(self.t_s) else 0.0

    def grid_present(self, t_s: float) -> bool:
        """The grid is there: not switched off by a test (``grid_up``) and no outage at t_s."""
        return self.grid_up and self.grid.up(t_s)

    def snapshot(self) -> dict[str, Any]:
        """Every current value, flat, for time series (replay) and status tables."""
        row: dict[str, Any] = {
            "t_s": self.t_s,
            "pv_kw": sum(p.p_kw for p in self.pvs.values()),
            "pv_available_kw": sum(p.available_kw for p in self.pvs.values()),
            "battery_kw": sum(b.p_kw for b in self.batteries.values()),
            "genset_kw": sum(g.p_kw for g in self.gensets.values()),
            "gpu_kw": self.gpu.power_kw(),
            "gpu_cap_kw": float(self.gpu.caps_w.sum()) / 1000.0,
            "gpu_demand_kw": float(np.minimum(self.gpu.demand_w, self.gpu.max_w).sum()) / 1000.0,
            "load_kw": self.load_kw,
            "grid_kw": self.grid_kw,
            "grid_up": int(self.grid_present(self.t_s)),
            "unserved_kw": self.unserved_kw_now,
            "spill_kw": self.spill_kw,
            "value_rate_per_h": self.gpu.value_rate_per_h(),
        }
        for n, b in self.batteries.items():
            row[f"soc_pct.{n}"] = b.soc_pct
        for n, g in self.gensets.items():
            row[f"genset_status.{n}"] = int(g.status)
        for c, p in self.gpu.class_power_kw().items():
            row[f"gpu_kw.{c}"] = p
        return row

    def stored_kwh(self) -> float:
        return sum(b.stored_kwh for b in self.batteries.values())

    def battery_loss_kwh(self) -> float:
        return sum(b.loss_kwh for b in self.batteries.values())


__all__ = ["GensetStatus", "Plant"]
