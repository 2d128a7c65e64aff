"""Genset: start/stop state machine with DSE engine status codes, min load, rating, affine fuel.

States (DSE GenComm engine status, register 1408):

- 0 stopped;
- 1 pre-start: ``start_delay_s`` after a run command (crank, pre-heat), no fuel counted yet;
- 2 warming up: engine turns at idle for ``warmup_s`` (config), burns idle fuel, takes no load;
- 3 running: takes load between ``min_load_pct`` x rating and the rating;
- 4 cooling down: ``cooldown_s`` at idle without load after a stop command, then 0.

A run command while cooling down goes straight back to running (the engine is warm). A stop command
during pre-start or warm-up stops at once. Transitions happen at their exact time inside a step.

Tank: ``tank_l``; an empty tank stops the engine. With ``refill_below_pct`` a delivery refills it
whenever the level falls below that share (replays use this: they compare dispatch, not fuel
logistics; the deliveries are counted).

Fuel: F [L/h] = f0 x rating + f1 x P while the engine turns (warm-up and cool-down at P = 0), the
affine HOMER form whose coefficients come from the config (given, or fitted on its fuel curve;
``fuel_coeffs_from_points`` fits them from ``sim/data/genset`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np


class GensetStatus(IntEnum):
    STOPPED = 0
    PRE_START = 1
    WARMING_UP = 2
    RUNNING = 3
    COOLING_DOWN = 4


_TURNING = (GensetStatus.WARMING_UP, GensetStatus.RUNNING, GensetStatus.COOLING_DOWN)


@dataclass
class Genset:
    name: str
    rating_kw: float
    min_load_pct: float = 30.0
    f0_l_per_h_per_kw: float = 0.015
    f1_l_per_kwh: float = 0.25
    start_delay_s: float = 10.0
    warmup_s: float = 60.0
    cooldown_s: float = 60.0
    tank_l: float = 1000.0
    fuel_l: float = 800.0
    ramp_kw_per_s: float | None = None
    refill_below_pct: float | None = None  # a fuel delivery refills the tank below this level
    status: GensetStatus = GensetStatus.STOPPED
    run_cmd: bool = False
    setpoint_kw: float | None = None  # base load (the controller's p_set_kw); None: it follows the load
    p_kw: float = 0.0
    # counters
    run_time_s: float = 0.0
    starts: int = 0
    e_kwh: float = 0.0
    fuel_used_l: float = 0.0
    deliveries: int = 0
    _in_state_s: float = 0.0

    @property
    def min_kw(self) -> float:
        return self.rating_kw * self.min_load_pct / 100.0

    @property
    def running(self) -> bool:
        """True when it can take load (status 3)."""
        return self.status is GensetStatus.RUNNING

    @property
    def fuel_pct(self) -> float:
        return 100.0 * self.fuel_l / self.tank_l if self.tank_l > 0 else 0.0

    def command(self, run: bool) -> None:
        self.run_cmd = bool(run)

    def advance_state(self, dt_s: float) -> None:
        """Move the state machine forward by ``dt_s`` seconds (exact transition times)."""
        left = dt_s
        while True:
            nxt, dur = self._transition()
            if nxt is None:
                self._in_state_s += left
                return
            need = max(dur - self._in_state_s, 0.0)
            if need > left:
                self._in_state_s += left
                return
            left -= need
            self._enter(nxt)

    def _transition(self) -> tuple[GensetStatus | None, float]:
        s, run = self.status, self.run_cmd
        if self.fuel_l <= 0 and s in (GensetStatus.RUNNING, GensetStatus.WARMING_UP, GensetStatus.PRE_START):
            return GensetStatus.STOPPED, 0.0  # out of fuel: the engine dies
        if s is GensetStatus.STOPPED:
            return (GensetStatus.PRE_START, 0.0) if run and self.fuel_l > 0 else (None, 0.0)
        if s is GensetStatus.PRE_START:
            return (GensetStatus.WARMING_UP, self.start_delay_s) if run else (GensetStatus.STOPPED, 0.0)
        if s is GensetStatus.WARMING_UP:
            return (GensetStatus.RUNNING, self.warmup_s) if run else (GensetStatus.STOPPED, 0.0)
        if s is GensetStatus.RUNNING:
            return (None, 0.0) if run else (GensetStatus.COOLING_DOWN, 0.0)
        # cooling down
        return (GensetStatus.RUNNING, 0.0) if run else (GensetStatus.STOPPED, self.cooldown_s)

    def _enter(self, s: GensetStatus) -> None:
        if s is GensetStatus.PRE_START:
            self.starts += 1
        self.status = s
        self._in_state_s = 0.0

    def output_range_kw(self) -> tuple[float, float]:
        """(min, max) kW it can deliver this step: (0, 0) unless running."""
        if not self.running:
            return 0.0, 0.0
        return self.min_kw, self.rating_kw

    def clamp_kw(self, p_kw: float, dt_s: float) -> float:
        lo, hi = self.output_range_kw()
        if hi <= 0:
            return 0.0
        if self.ramp_kw_per_s is not None and dt_s > 0:
            lo = max(lo, self.p_kw - self.ramp_kw_per_s * dt_s)
            hi = min(hi, max(self.p_kw, lo) + self.ramp_kw_per_s * dt_s)
        return max(lo, min(p_kw, hi))

    def deliver(self, p_kw: float, dt_s: float) -> None:
        """Record output ``p_kw`` (already clamped) over ``dt_s``: energy, fuel, run time."""
        self.p_kw = p_kw if self.running else 0.0
        h = dt_s / 3600.0
        self.e_kwh += self.p_kw * h
        if self.status in _TURNING:
            self.run_time_s += dt_s
            used = min(
                (self.f0_l_per_h_per_kw * self.rating_kw + self.f1_l_per_kwh * self.p_kw) * h, self.fuel_l
            )
            self.fuel_l -= used
            self.fuel_used_l += used
        if self.refill_below_pct is not None and self.fuel_pct < self.refill_below_pct:
            self.fuel_l = self.tank_l
            self.deliveries += 1

    def fuel_l_per_h(self, p_kw: float) -> float:
        return self.f0_l_per_h_per_kw * self.rating_kw + self.f1_l_per_kwh * p_kw


def fuel_coeffs_from_points(
    path: str | Path, source_id: str, rated_kw: float | None = None
) -> tuple[float, float]:
    """Fit (f0 L/h per kW rated, f1 L/kWh) on the 25-100 % rows of ``genset_fuel_points.csv``."""
    import pandas as pd

    g = pd.read_csv(path)
    for col in ("source_id", "rated_kw", "load_fraction", "output_kw", "fuel_l_per_h"):
        if col not in g.columns:
            raise ValueError(f"{path}: missing column {col!r}")
    g = g[(g.source_id == source_id) & (g.load_fraction >= 0.25)]
    if rated_kw is not None:
        g = g[g.rated_kw == rated_kw]
    if len(g) < 2:
        raise ValueError(f"{path}: fewer than 2 usable rows for source_id={source_id!r} rated_kw={rated_kw}")
    rated = float(g.rated_kw.iloc[0])
    slope, intercept = np.polyfit(g.output_kw.to_numpy(float), g.fuel_l_per_h.to_numpy(float), 1)
    return max(float(intercept), 0.0) / rated, max(float(slope), 0.0)
