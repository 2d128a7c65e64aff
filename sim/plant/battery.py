"""Battery: SoC with charge/discharge efficiencies, power limits tapering near the SoC window ends.

Sign: ``p_kw`` + = discharge (AC power delivered to the site), - = charge. Energy bookkeeping
(what the energy-balance test checks):

- discharging ``p`` kW for ``dt`` takes ``p*dt/eta_discharge`` out of the cells;
- charging ``|p|`` kW for ``dt`` puts ``|p|*dt*eta_charge`` into the cells;
- the difference is ``loss_kwh``.

The BMS window is ``[soc_min_pct, soc_max_pct]`` from the config: the device itself will not go
outside it. Within ``taper_pct`` of either end the allowed power falls linearly to
``taper_floor`` x the rating at the end (CV phase on charge, voltage sag on discharge), and it is
further limited so that one step cannot cross the window edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Battery:
    name: str
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    soc_pct: float = 50.0
    taper_pct: float = 5.0
    taper_floor: float = 0.0
    p_kw: float = 0.0
    setpoint_kw: float = 0.0
    # counters
    e_discharge_kwh: float = 0.0  # AC side
    e_charge_kwh: float = 0.0  # AC side
    loss_kwh: float = 0.0

    @property
    def stored_kwh(self) -> float:
        return self.capacity_kwh * self.soc_pct / 100.0

    def _taper(self, distance_pct: float) -> float:
        if self.taper_pct <= 0 or distance_pct >= self.taper_pct:
            return 1.0
        frac = max(distance_pct, 0.0) / self.taper_pct
        return self.taper_floor + (1.0 - self.taper_floor) * frac

    def discharge_limit_kw(self, dt_s: float | None = None) -> float:
        """Discharge power the BMS allows now (>= 0); with ``dt_s``, also what one step can take."""
        p = self.max_discharge_kw * self._taper(self.soc_pct - self.soc_min_pct)
        if self.soc_pct <= self.soc_min_pct:
            return 0.0
        if dt_s:
            e_avail_kwh = self.capacity_kwh * (self.soc_pct - self.soc_min_pct) / 100.0
            p = min(p, e_avail_kwh * self.eta_discharge * 3600.0 / dt_s)
        return max(p, 0.0)

    def charge_limit_kw(self, dt_s: float | None = None) -> float:
        """Charge power the BMS allows now (>= 0, magnitude); with ``dt_s``, what one step can take."""
        p = self.max_charge_kw * self._taper(self.soc_max_pct - self.soc_pct)
        if self.soc_pct >= self.soc_max_pct:
            return 0.0
        if dt_s:
            room_kwh = self.capacity_kwh * (self.soc_max_pct - self.soc_pct) / 100.0
            p = min(p, room_kwh / self.eta_charge * 3600.0 / dt_s)
        return max(p, 0.0)

    def clamp_kw(self, p_kw: float, dt_s: float | None = None) -> float:
        return max(-self.charge_limit_kw(dt_s), min(p_kw, self.discharge_limit_kw(dt_s)))

    def apply(self, p_kw: float, dt_s: float) -> float:
        """Run at ``p_kw`` (clamped) for ``dt_s``; update SoC and counters; return the actual kW."""
        p = self.clamp_kw(p_kw, dt_s)
        h = dt_s / 3600.0
        if p >= 0:
            cell_kwh = p * h / self.eta_discharge
            self.e_discharge_kwh += p * h
            self.loss_kwh += cell_kwh - p * h
            d_kwh = -cell_kwh
        else:
            cell_kwh = -p * h * self.eta_charge
            self.e_charge_kwh += -p * h
            self.loss_kwh += -p * h - cell_kwh
            d_kwh = cell_kwh
        soc = self.soc_pct + 100.0 * d_kwh / self.capacity_kwh
        # float round-off only: the clamp above already keeps the step inside the window
        if p > 0 and soc < self.soc_min_pct <= self.soc_pct:
            soc = self.soc_min_pct
        elif p < 0 and soc > self.soc_max_pct >= self.soc_pct:
            soc = self.soc_max_pct
        self.soc_pct = soc
        self.p_kw = p
        return p
