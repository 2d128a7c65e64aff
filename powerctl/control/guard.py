"""The guard: every ``guard_period_s``, from the latest measurements alone, keep load within the
supply that is actually available, and hold every outgoing cap to its device limits.

Supply available (kW) = PV now (at most its nameplate, and at most what the power balance allows
when a PV reading is suspect) + battery discharge limit tapered over the last ``TAPER_BAND_PCT`` above
the SoC floor (zero at the floor until it is ``REARM_PCT`` above it again; powerctl.control.battery)
+ genset rating (only while it runs and reads GOOD and plausible; a genset held at a base load
counts at that load, powerctl/control/genset_output.py) + grid import limit (only while the
meter reads GOOD and shows the grid present). Stale means worst case (``ProcessImage.worst``): a
stale supply reads 0, a stale SoC reads the floor; so does a reading that fails a plausibility check
(powerctl.control.plausibility), and caps then go to the safe cap and do not rise.
Margin = ``supply_margin_kw`` + ``supply_margin_pct`` of the supply.

The GPU power the supply allows is (available - margin - other load) / (1 + facility overhead).
A falling supply is projected ahead by ``lookahead_s`` (the time until a cut shows in GPU power:
measurement age + guard period + the GPUs' power lag), because GPU power trails a cap by ~0.5 s and a
cloud edge can take 60 % of the PV in one second. PV that falls to the limit the controller itself
commanded (``pv_ceiling_kw``, set by powerctl.control.loop: the plan's curtailment or the export
hold's) is no cloud edge and projects nothing: the trend sees past PV at most at that ceiling, so a
fall below it still counts. In observe-only no limit is written, so none is assumed.
Caps are cut at once so that their sum fits it (least important class first); what floors cannot
absorb is shed (``ShedPolicy``). When any supply signal is stale, caps go to the safe cap and are
never raised. The guard needs no planner: with the planner dead it works from the safe cap.

``Guard`` is the pure core (no I/O, clock passed in); ``powerctl.guard_task`` runs it (through
``ControlLoop.guard_tick``) on an asyncio task.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from powerctl.control.battery import FloorLatch, device_limited_kw
from powerctl.control.genset_output import counted_kw
from powerctl.control.plausibility import Plausibility, is_reading, pv_nameplate_kw
from powerctl.control.shed import ShedAction, ShedPolicy
from powerctl.control.slew import SlewLimiter
from powerctl.control.split import GpuSlot, cut_to_total
from powerctl.gpu.base import READBACK_TOL_W
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage

if TYPE_CHECKING:
    from powerctl.config import SiteConfig

log = logging.getLogger("powerctl.guard")


@dataclass(frozen=True)
class SupplyView:
    pv_kw: float
    battery_kw: float  # discharge the battery can add now
    genset_kw: float  # output + headroom of running gensets
    grid_kw: float
    available_kw: float
    margin_kw: float
    stale: tuple[str, ...]  # "device.signal" of every supply signal that is not GOOD
    suspect: tuple[str, ...] = ()  # "device.signal: why" of every reading that failed a plausibility check
    raised: tuple[str, ...] = ()  # plausibility findings new in this pass (report once)
    cleared: tuple[str, ...] = ()  # findings that cleared in this pass


@dataclass(frozen=True)
class GuardDecision:
    caps_w: dict[int, float]  # caps to send now: clamped to device limits, slew-limited
    cut: bool  # caps were cut below what was requested to fit the supply
    safe: bool  # fail-safe: supply stale or planner dead, caps at or below the safe cap
    available_kw: float
    margin_kw: float
    load_kw: float  # measured: GPU power x (1 + overhead) + other load
    gpu_allowed_kw: float
    shed: tuple[ShedAction, ...] = ()
    restore: tuple[ShedAction, ...] = ()
    deficit_kw: float = 0.0  # GPU power neither caps nor shedding could remove
    reason: str = ""
    findings: tuple[str, ...] = ()  # plausibility findings raised in this pass ("device.signal: why")
    cleared: tuple[str, ...] = ()  # plausibility findings that cleared in this pass


@dataclass
class Guard:
    cfg: SiteConfig
    gpus: Sequence[GpuSlot]
    hooked_classes: Sequence[str] = ()
    last_caps_w: dict[int, float] = field(default_factory=dict)
    last_t_s: float | None = None
    gpu_lag_s: float = 0.5  # GPU power time constant after a cap change (NVML's power reading is a ~1 s average)
    trend_window_s: float = 0.6
    lookahead_s: float | None = None  # None: guard period + slowest supply poll + gpu_lag_s
    pv_ceiling_kw: float | None = None  # the PV limit in force, summed (kW); None: none commanded
    # base loads sent to gensets (kW, set by powerctl.control.loop): such a genset counts at its
    # setpoint, not its rating (powerctl/control/genset_output.py)
    genset_base_kw: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.cfg.gpu
        self.k_overhead = 1.0 + g.facility_overhead
        self.slew = SlewLimiter(g.ramp_up_kw_per_s, g.facility_overhead)
        self.shedder = ShedPolicy(
            self.gpus,
            self.hooked_classes,
            idle_w=g.idle_w,
            restore_margin_w=g.shed_restore_margin_kw * 1000.0 / self.k_overhead,
            hold_s=g.shed_restore_hold_s,
        )
        if self.lookahead_s is None:
            polls = [d.poll_period_s for d in self.cfg.devices if d.nature in (Nature.PV, Nature.BATTERY)]
            self.lookahead_s = self.cfg.control.guard_period_s + max(polls, default=1.0) + self.gpu_lag_s
        self._hist: deque[tuple[float, float, float]] = deque()  # (t_s, available_kw, of which PV kW)
        self._last_cut_s: float | None = None
        self.plausibility = Plausibility(self.cfg)
        self._floor: dict[str, FloorLatch] = {}
        self._lowered_outside = False  # a limit below our cap was seen (logged once per episode)

    def projected_kw(self, available_kw: float, now_s: float, pv_kw: float = 0.0) -> float:
        """Supply projected ``lookahead_s`` ahead when it is falling (never above the supply now).
        ``pv_kw``: the part of ``available_kw`` that is PV; the trend takes past PV at most at
        ``pv_ceiling_kw`` (a commanded curtailment is no loss of supply)."""
        hist = self._hist
        hist.append((now_s, available_kw, pv_kw))
        while hist and now_s - hist[0][0] > self.trend_window_s:
            hist.popleft()
        t0, a0, pv0_kw = hist[0]
        ceiling_kw = None if self.cfg.control.observe_only else self.pv_ceiling_kw
        if ceiling_kw is not None and pv0_kw > ceiling_kw:
            a0 -= pv0_kw - max(ceiling_kw, 0.0)
        if now_s - t0 <= 0 or available_kw >= a0:
            return available_kw
        rate_kw_per_s = (available_kw - a0) / (now_s - t0)
        assert self.lookahead_s is not None
        return max(0.0, available_kw + rate_kw_per_s * self.lookahead_s)

    # --- supply -------------------------------------------------------------------------------

    def supply(self, image: ProcessImage, now_s: float, load_kw: float | None = None) -> SupplyView:
        """What the supply can carry now, from readings that pass the plausibility checks
        (``powerctl.control.plausibility``): each source bounded by its nameplate, a suspect reading
        at its worst case. ``load_kw`` (measured) feeds the power-balance cross-check."""
        stale: list[str] = []
        pa = self.plausibility.assess(image, now_s, load_kw)
        bad = pa.suspect

        def read(dev: str, sig: str, *, low: float = 0.0, high: float = 0.0, required: bool = True) -> float | None:
            try:
                s = image.get(dev, sig, now_s)
            except KeyError:
                if required:
                    stale.append(f"{dev}.{sig}")
                    return low if sig == "soc_pct" else 0.0
                return None  # optional and not mapped by the profile
            if not s.good:
                stale.append(f"{dev}.{sig}")
            if f"{dev}.{sig}" in bad:
                return low if sig == "soc_pct" else 0.0  # suspect: worst case
            return image.worst(dev, sig, now_s, low=low, high=high)

        pv = 0.0
        for d in self.cfg.by_nature(Nature.PV):
            pv += min(max(0.0, read(d.name, "p_kw") or 0.0), pv_nameplate_kw(d.limits))
        if pa.pv_balance_kw is not None and any(f"{d.name}.p_kw" in bad for d in self.cfg.by_nature(Nature.PV)):
            pv = min(pv, pa.pv_balance_kw)
        batt = 0.0
        for d in self.cfg.by_nature(Nature.BATTERY):
            lim = d.limits
            soc = read(d.name, "soc_pct", low=lim.soc_min_pct, high=lim.soc_max_pct)
            dev_max = read(d.name, "max_discharge_kw", required=False)
            p = device_limited_kw(lim.max_discharge_kw, dev_max)
            latch = self._floor.setdefault(d.name, FloorLatch())
            batt += p * latch.fraction(soc if soc is not None else lim.soc_min_pct, lim.soc_min_pct)
        gen = 0.0
        for d in self.cfg.by_nature(Nature.GENSET):
            running = read(d.name, "running")
            p_kw = read(d.name, "p_kw")
            key = f"{d.name}.p_kw"
            if running and running >= 0.5 and key not in stale and key not in bad:
                # output + headroom: never more than its rating; a base-loaded one has no headroom
                base_kw = None if self.cfg.control.observe_only else self.genset_base_kw.get(d.name)
                ramp = d.limits.ramp_kw_per_s
                rise_kw = math.inf if ramp is None else ramp * self.cfg.control.guard_period_s
                gen += counted_kw(d.limits.rating_kw, base_kw, p_kw, rise_kw)
        grid = 0.0
        for d in self.cfg.by_nature(Nature.METER):
            if d.limits.max_import_kw > 0:
                read(d.name, "p_kw", high=math.inf)
                if f"{d.name}.p_kw" not in stale and pa.grid_present.get(d.name, False):
                    grid += d.limits.max_import_kw
        available = pv + batt + gen + grid
        c = self.cfg.control
        margin = c.supply_margin_kw + c.supply_margin_pct / 100.0 * available
        for f in pa.raised:
            log.warning("plausibility: %s: counted as worst case", f)
        for k in pa.cleared:
            log.warning("plausibility: %s trusted again", k)
        suspect = tuple(f"{k}: {v}" for k, v in bad.items() if is_reading(k))
        return SupplyView(pv, batt, gen, grid, available, margin, tuple(stale), suspect, pa.raised, pa.cleared)

    # --- decision -----------------------------------------------------------------------------

    def clamp(self, caps_w: Mapping[int, float]) -> dict[int, float]:
        """Every cap held to its GPU's [min, max]; a missing or NaN cap becomes the safe cap."""
        out: dict[int, float] = {}
        safe = self.cfg.gpu.safe_cap_w
        for s in self.gpus:
            v = caps_w.get(s.index, safe)
            v = safe if v != v else v
            out[s.index] = max(s.min_w, min(s.max_w, v))
        return out

    def safe_caps(self) -> dict[int, float]:
        """The safe cap, but never above the caps in force (a safe cap must not raise load)."""
        safe = self.cfg.gpu.safe_cap_w
        return self.clamp({s.index: min(safe, self.last_caps_w.get(s.index, safe)) for s in self.gpus})

    def follow_enforced(self, enforced_w: Mapping[int, float]) -> None:
        """Take as in force what the GPUs obey when it is below our cap: something outside the
        guard (the watchdog, ``apply-safe-caps``, a lease expiry, an operator's nvidia-smi, a BMC)
        lowered it, and writing our old, higher cap back would be a rise the slew never saw."""
        lowered = {i: w for i, w in enforced_w.items()
                   if w == w and w < self.last_caps_w.get(i, -math.inf) - READBACK_TOL_W}
        if lowered and not self._lowered_outside:
            i, w = next(iter(lowered.items()))
            log.warning("GPU limits lowered outside the guard (%d GPUs, e.g. GPU %d %.0f W -> %.0f W): "
                        "rising from there at the slew limit", len(lowered), i, self.last_caps_w[i], w)
        self._lowered_outside = bool(lowered)
        self.last_caps_w.update(lowered)

    def evaluate(
        self,
        image: ProcessImage,
        now_s: float,
        *,
        requested_caps_w: Mapping[int, float] | None,
        gpu_power_w: float | None,
        other_load_kw: float = 0.0,
        held_w: Mapping[int, float] | None = None,
        enforced_w: Mapping[int, float] | None = None,
    ) -> GuardDecision:
        """Caps to send now. ``requested_caps_w`` None means no plan (planner dead): safe caps.

        ``gpu_power_w`` is the measured GPU power (None when unreadable: the caps in force are then
        taken as the worst case). ``enforced_w``: the limits the GPUs obey now (read back); where
        one is below the cap the guard last sent, the rise budget starts from it (``follow_enforced``).
        """
        if enforced_w and self.last_caps_w:
            self.follow_enforced(enforced_w)
        # The balance cross-check needs the whole load: unmetered load is the loop's slow estimate
        # (powerctl.control.loop, 10 s), which holds while the guard has findings, so a sudden lie
        # shows as a mismatch and is not absorbed into "other load".
        meas_load_kw = None
        if gpu_power_w is not None and gpu_power_w == gpu_power_w:
            meas_load_kw = gpu_power_w / 1000.0 * self.k_overhead + max(0.0, other_load_kw)
        sv = self.supply(image, now_s, meas_load_kw)
        reasons: list[str] = []
        safe = False
        if requested_caps_w is None:
            want = self.safe_caps()
            safe = True
            reasons.append("no plan: safe cap")
        else:
            want = self.clamp(requested_caps_w)
        if sv.stale:
            # Stale supply: safe cap, and nothing goes up until the data is back.
            held = self.safe_caps()
            want = {i: min(want[i], held[i]) for i in want}
            safe = True
            reasons.append("stale supply (" + ", ".join(sv.stale) + "): safe cap, no rise")
        if sv.suspect:
            # A reading physics does not allow: it counts as worst case, and nothing goes up on it.
            held = self.safe_caps()
            want = {i: min(want[i], held[i]) for i in want}
            safe = True
            reasons.append("implausible supply (" + "; ".join(sv.suspect) + "): safe cap, no rise")

        in_force_w = sum(self.last_caps_w.values()) if self.last_caps_w else sum(want.values())
        if gpu_power_w is None or gpu_power_w != gpu_power_w:
            gpu_power_w = in_force_w  # unknown load reads as its maximum
        other_kw = max(0.0, other_load_kw)
        load_kw = gpu_power_w / 1000.0 * self.k_overhead + other_kw
        projected_kw = self.projected_kw(sv.available_kw, now_s, sv.pv_kw)
        if projected_kw < sv.available_kw - 1e-9:
            reasons.append(f"supply falling: {sv.available_kw:.1f} kW now, {projected_kw:.1f} kW projected "
                           f"in {self.lookahead_s:g} s")
        usable_kw = projected_kw - sv.margin_kw
        allowed_w = max(0.0, (usable_kw - other_kw) / self.k_overhead * 1000.0)
        if load_kw > usable_kw:
            reasons.append(f"load {load_kw:.1f} kW > supply {sv.available_kw:.1f} - margin {sv.margin_kw:.1f} kW")
            settled = self._last_cut_s is None or now_s - self._last_cut_s > 3 * self.gpu_lag_s
            if settled and self.last_caps_w:
                # GPUs settled above their caps (floor overshoot, outside load): cut that much deeper.
                # Right after a cut the excess is only lag, which decays by itself.
                allowed_w = max(0.0, allowed_w - max(0.0, gpu_power_w - in_force_w))

        # Shedding is slow and drastic: decide it on the supply now, not on the projection.
        allowed_now_w = max(0.0, (sv.available_kw - sv.margin_kw - other_kw) / self.k_overhead * 1000.0)
        shed_now = self.shedder.update(allowed_now_w, now_s)
        # ``held_w``: GPUs no cap reaches now (a node agent that does not answer, powerctl.gpu.agents)
        # at the highest cap they may still hold. Room for them first; the others are cut to fit.
        held = {i: w for i, w in (held_w or {}).items() if i in want}
        free = [s for s in self.gpus if s.index not in held] if held else self.gpus
        cut = cut_to_total({s.index: want[s.index] for s in free}, max(0.0, allowed_w - sum(held.values())), free,
                           shed_classes=self.shedder.shed, idle_w=self.cfg.gpu.idle_w)
        cut.caps_w.update({i: want[i] for i in held})
        is_cut = any(cut.caps_w[i] < want[i] - 1e-9 for i in want)
        if is_cut:
            reasons.append(f"caps cut to {sum(cut.caps_w.values()) / 1000:.1f} kW (allowed {allowed_w / 1000:.1f} kW)")
        if cut.deficit_w > 0:
            reasons.append(f"{cut.deficit_w / 1000:.1f} kW over even at floors: shed needed")
        dt_s = 0.0 if self.last_t_s is None else max(0.0, now_s - self.last_t_s)
        # A forward clock step (NTP) must not hand out a large rise budget at once: the guard runs
        # every period, so more than two periods between passes is a clock jump or a stall.
        dt_s = min(dt_s, 2.0 * self.cfg.control.guard_period_s)
        caps = self.slew.limit(self.last_caps_w, cut.caps_w, dt_s, self.gpus) if self.last_caps_w else cut.caps_w
        caps = self.clamp(caps)
        if any(caps[i] < self.last_caps_w.get(i, math.inf) - 1e-9 for i in caps):
            self._last_cut_s = now_s
        if sv.stale or sv.suspect or requested_caps_w is None:
            caps = {i: min(c, self.last_caps_w.get(i, c)) for i, c in caps.items()}
        self.last_caps_w, self.last_t_s = dict(caps), now_s
        return GuardDecision(
            caps_w=caps,
            cut=is_cut,
            safe=safe,
            available_kw=sv.available_kw,
            margin_kw=sv.margin_kw,
            load_kw=load_kw,
            gpu_allowed_kw=allowed_w / 1000.0,
            shed=tuple(a for a in shed_now if a.action == "shed"),
            restore=tuple(a for a in shed_now if a.action == "restore"),
            deficit_kw=cut.deficit_w / 1000.0,
            reason="; ".join(reasons),
            findings=sv.raised,
            cleared=sv.cleared,
        )
