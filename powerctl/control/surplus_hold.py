"""Surplus PV held by the guard in an island: curtailed within one guard pass when nobody can take it.

Without a grid, PV beyond what the site consumes has to go into the batteries; a full battery (or
one charging at its limit) cannot take it, and a load that drops fast (caps cut, jobs ending)
between two plans would push it into the grid-forming inverter, which trips or sheds by frequency.
The plan curtails such PV, but only once per plan; this holds it on every guard pass::

    PV allowed = load - genset minimum load + battery charge headroom + margin

- ``load``: the site's measured consumption (the guard's GPU power with overhead + other load);
- running gensets must carry their minimum load (``min_load_pct`` of the rating), so PV leaves it;
- ``charge headroom``: each battery's ``max_charge_kw`` while its SoC reads GOOD below
  ``soc_max_pct`` (the lower of the config limit and a GOOD ``max_charge_kw`` reading); a SoC that
  is not GOOD counts as full (DESIGN.md "stale means worst case": the grid-forming battery covers
  a PV limit that is too low, not one that is too high);
- ``margin``: ``control.supply_margin_kw``, the plan's own curtailment headroom
  (powerctl.control.curtail), so a load that rises is served at once (the battery covers the step)
  and the limit follows it on the next pass.

Engaged when PV delivers more than it allows (by ``SURPLUS_TOL_KW``); it then follows the formula
up and down on every pass, and lets go once the allowance reaches the PV rating. Only while no
grid is seen (an islanded site, or a meter that shows the grid gone): with a grid the surplus is
export, which ``powerctl.control.export_hold`` caps. The limit is one percentage of the PV
inverters' ratings; the control loop writes the lower of it and the plan's (``merged_pct``).
"""

from __future__ import annotations

from powerctl.config import PvDevice, SiteConfig
from powerctl.control.curtail import RELEASED_PCT, rating_kw
from powerctl.control.planner import grid_fresh, grid_params
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage

SURPLUS_TOL_KW = 0.5  # PV this little above the allowance is measurement noise, not surplus


def _good(image: ProcessImage, device: str, signal: str, now_s: float) -> float | None:
    try:
        return image.value(device, signal, now_s)
    except KeyError:  # not measured by this device's profile
        return None


class SurplusHold:
    """Per guard pass: the PV limit (% of rating, per inverter) that keeps PV within what the
    island can take, or {} when not holding."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.pvs: list[PvDevice] = [d for d in cfg.devices if isinstance(d, PvDevice)]
        self.rating_kw = sum(rating_kw(pv) for pv in self.pvs)
        self.margin_kw = cfg.control.supply_margin_kw
        self.limit_kw: float | None = None  # None: not holding
        self.reason = ""

    def charge_headroom_kw(self, image: ProcessImage, now_s: float) -> float:
        total = 0.0
        for b in self.cfg.by_nature(Nature.BATTERY):
            soc = _good(image, b.name, "soc_pct", now_s)
            if soc is None or soc >= b.limits.soc_max_pct:
                continue  # full, or not known: takes nothing
            read = _good(image, b.name, "max_charge_kw", now_s)
            total += b.limits.max_charge_kw if read is None else min(b.limits.max_charge_kw, max(read, 0.0))
        return total

    def genset_floor_kw(self, image: ProcessImage, now_s: float) -> float:
        return sum(g.limits.rating_kw * g.limits.min_load_pct / 100.0
                   for g in self.cfg.by_nature(Nature.GENSET) if _good(image, g.name, "running", now_s))

    def allowed_kw(self, image: ProcessImage, now_s: float, load_kw: float) -> float:
        take = load_kw - self.genset_floor_kw(image, now_s) + self.charge_headroom_kw(image, now_s)
        return max(0.0, take + self.margin_kw)

    def _islanded(self, image: ProcessImage, now_s: float) -> bool:
        return grid_params(self.cfg) is None or not grid_fresh(self.cfg, image, now_s)

    def update(self, image: ProcessImage, now_s: float, load_kw: float) -> dict[str, float]:
        """The PV limits the island needs now ({} when not holding). ``load_kw``: the site's
        measured consumption (GPU power with overhead + other load)."""
        if not self.pvs or self.rating_kw <= 0 or not self._islanded(image, now_s):
            self.limit_kw, self.reason = None, ""
            return {}
        allowed = self.allowed_kw(image, now_s, load_kw)
        pv_kw = sum(max(0.0, _good(image, pv.name, "p_kw", now_s) or 0.0) for pv in self.pvs)
        if self.limit_kw is not None or pv_kw > allowed + SURPLUS_TOL_KW:
            self.limit_kw = allowed
            self.reason = (f"island surplus: PV {pv_kw:.1f} kW, the site takes {load_kw:.1f} kW and the "
                           f"batteries {self.charge_headroom_kw(image, now_s):.1f} kW: PV held to {allowed:.1f} kW")
        if self.limit_kw is not None and self.limit_kw >= self.rating_kw:
            self.limit_kw, self.reason = None, ""  # released
        if self.limit_kw is None:
            return {}
        pct = round(min(RELEASED_PCT, 100.0 * self.limit_kw / self.rating_kw), 1)
        return dict.fromkeys((pv.name for pv in self.pvs), pct)
