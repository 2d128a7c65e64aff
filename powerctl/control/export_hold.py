"""Export limit held by the guard: PV curtailed within one meter poll when export passes the cap.

The plan curtails PV for a zero-export (or export-limited) site, but only once per plan: a load
that drops, or a cloud that clears, between two plans would export until the next one. The guard
holds the cap itself, on every new meter reading (signs: meter + = import)::

    PV allowed = PV now + meter + export cap - margin

which is the PV that leaves ``margin`` (half of ``control.supply_margin_kw``) below the cap.

- Cut at once when the export exceeds the cap by more than ``EXPORT_TOL_KW`` (meter noise); raise
  again when the meter is more than two margins short of the cap (the load came back); hold in
  between, so a meter that reads 0 in an island (no voltage register to tell) does not ratchet PV
  down. A site that exports at its cap as planned (an export price) is left alone.
- A PV reading that is not GOOD counts as 0 in the formula (the worst case: the most curtailment).
- A limit the PV stays well below for ``RELEASE_AFTER_S`` is let go: a new surplus is cut again
  on the next meter reading.
- A meter that goes stale is the worst case (DESIGN.md "stale means worst case"): PV is bounded by
  what the site is seen to take, ``load - battery discharge - gensets + cap - margin``, each missing
  reading at its worst (battery at its discharge limit, a genset at its rating). Before the meter's
  first reading (start) nothing is held: the guard keeps the GPUs at the safe cap meanwhile.
- The grid shown gone (islanded): nothing to hold, the grid-forming inverter curtails by itself.

The limit is shared over the PV inverters as one percentage of their ratings; the control loop
(powerctl.control.loop) writes the lower of it and the plan's own limit (powerctl.control.curtail).
Compute and the battery take the surplus through the plan; the guard only curtails, which acts
within one write and needs no plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from powerctl.config import PvDevice, SiteConfig
from powerctl.control.curtail import RELEASED_PCT, rating_kw
from powerctl.control.planner import grid_fresh, grid_params
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage

EXPORT_TOL_KW = 0.2  # meter noise: an export this small above the threshold is not acted on
RAISE_MARGINS = 2.0  # the meter this many margins short of the cap lets the limit rise
RELEASE_AFTER_S = 5.0  # a limit PV has stayed well below this long is let go (it holds nothing)


class ExportHold:
    """Per guard pass: the PV limit (% of rating, per inverter) that holds the export cap, or {}."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.meters = [m.name for m in cfg.by_nature(Nature.METER)]
        self.cap_kw = sum(m.limits.max_export_kw for m in cfg.by_nature(Nature.METER))
        self.pvs: list[PvDevice] = [d for d in cfg.devices if isinstance(d, PvDevice)]
        self.rating_kw = sum(rating_kw(pv) for pv in self.pvs)
        self.margin_kw = max(cfg.control.supply_margin_kw / 2.0, 2.0 * EXPORT_TOL_KW)
        # a meter with no limits is an island's (grid_params None): nothing to hold there
        self.active = bool(self.pvs and self.rating_kw > 0 and grid_params(cfg) is not None)
        self.limit_kw: float | None = None  # None: not holding
        self.reason = ""
        self._meter_ts: float | None = None
        self._seen_meter = False  # a meter read GOOD once: from then on stale means worst case
        self._slack_since: float | None = None  # since when PV reads well below the limit

    def _meter(self, image: ProcessImage, now_s: float) -> tuple[float, float] | None:
        """(meter kW summed, newest timestamp) when every meter reads GOOD, else None."""
        total, ts = 0.0, -1.0
        for name in self.meters:
            s = image.get(name, "p_kw", now_s)
            if not s.good or s.value is None:
                return None
            total, ts = total + float(s.value), max(ts, s.ts)
        return total, ts

    def _read(self, image: ProcessImage, dev: str, sig: str, now_s: float, worst: float) -> float:
        try:
            v = image.value(dev, sig, now_s)
        except KeyError:
            return worst
        return worst if v is None else float(v)

    def _pv_kw(self, image: ProcessImage, now_s: float) -> float:
        return sum(max(0.0, self._read(image, pv.name, "p_kw", now_s, 0.0)) for pv in self.pvs)

    def _stale_bound_kw(self, image: ProcessImage, now_s: float, load_kw: float) -> float:
        batt = sum(self._read(image, d.name, "p_kw", now_s, d.limits.max_discharge_kw)
                   for d in self.cfg.by_nature(Nature.BATTERY))
        gen = sum(max(0.0, self._read(image, d.name, "p_kw", now_s, d.limits.rating_kw))
                  for d in self.cfg.by_nature(Nature.GENSET))
        return load_kw - batt - gen + self.cap_kw - self.margin_kw

    def update(self, image: ProcessImage, now_s: float, load_kw: float) -> dict[str, float]:
        """The PV limits the export cap needs now ({} when not holding). ``load_kw``: the site's
        measured consumption (GPU power with overhead + other load), for a stale meter."""
        if not self.active:
            return {}
        meter = self._meter(image, now_s)
        if meter is None and not self._seen_meter:
            return self.limits_pct()  # start: nothing read yet (caps are at the safe cap meanwhile)
        if meter is None:
            bound = max(0.0, self._stale_bound_kw(image, now_s, load_kw))
            self.limit_kw = bound if self.limit_kw is None else min(self.limit_kw, bound)
            self.reason = f"meter stale: PV bounded by the load seen, {self.limit_kw:.1f} kW"
            self._meter_ts = None
        elif not grid_fresh(self.cfg, image, now_s):
            self.limit_kw, self.reason = None, ""  # islanded: the grid-forming inverter curtails
        elif meter[1] != self._meter_ts:  # act once per new meter reading
            self._meter_ts, self._seen_meter = meter[1], True
            p_kw = meter[0]
            target = self._pv_kw(image, now_s) + p_kw + self.cap_kw - self.margin_kw
            export_kw = -p_kw
            if export_kw > self.cap_kw + EXPORT_TOL_KW:
                self.limit_kw = max(0.0, target if self.limit_kw is None else min(self.limit_kw, target))
                self.reason = f"export {export_kw:.1f} kW over the cap {self.cap_kw:g} kW: PV held to {self.limit_kw:.1f} kW"
            elif self.limit_kw is not None and p_kw + self.cap_kw > RAISE_MARGINS * self.margin_kw:
                self.limit_kw = max(self.limit_kw, target)
                self.reason = f"PV held to {self.limit_kw:.1f} kW (export cap {self.cap_kw:g} kW)"
            self._release_when_slack(image, now_s)
        if self.limit_kw is not None and self.limit_kw >= self.rating_kw:
            self.limit_kw, self.reason = None, ""  # released
        return self.limits_pct()

    def _release_when_slack(self, image: ProcessImage, now_s: float) -> None:
        """Let go of a limit the PV has stayed well below for RELEASE_AFTER_S (a cloud, a load
        that came back): a new surplus is cut again within one meter poll."""
        if self.limit_kw is None or self._pv_kw(image, now_s) >= self.limit_kw - 2.0 * self.margin_kw:
            self._slack_since = None
            return
        if self._slack_since is None:
            self._slack_since = now_s
        elif now_s - self._slack_since >= RELEASE_AFTER_S:
            self.limit_kw, self.reason, self._slack_since = None, "", None

    def limits_pct(self) -> dict[str, float]:
        if self.limit_kw is None:
            return {}
        pct = round(min(RELEASED_PCT, max(0.0, 100.0 * self.limit_kw / self.rating_kw)), 1)
        return {pv.name: pct for pv in self.pvs}


def merged_pct(plan_pct: Mapping[str, float], hold_pct: Mapping[str, float]) -> dict[str, float]:
    """The lower of the plan's limit and the hold's, per PV (a PV in neither is left out)."""
    out = dict(plan_pct)
    for name, pct in hold_pct.items():
        out[name] = min(pct, out.get(name, RELEASED_PCT))
    return out
