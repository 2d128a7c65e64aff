"""Plausibility: a reading counts as supply only when physics allows it (trust physics, not readings).

Pure (no I/O, the clock is an argument); ``Plausibility`` carries the little state the checks need
between guard passes. ``assess(image, now_s, load_kw)`` returns which supply readings are suspect
and why; the guard counts a suspect reading as its worst case (a supply as zero, a SoC as its
floor) and reports each finding once, when it is raised and when it clears.

The checks (README, "Plausibility rules"):

- **nameplate**: PV ``p_kw`` above the array's ``max_ac_kw`` (else ``kwp``), a genset ``p_kw``
  above its ``rating_kw``, each by more than ``NAMEPLATE_TOL`` (+ ``NAMEPLATE_ABS_KW``);
- **balance**: the battery is the site's other view of the flow: with it, the genset, the grid
  and the load measured, PV delivers ``load - battery - genset - grid``; PV readings above that by
  more than ``balance_tol_kw`` for ``hold_s`` are suspect (the load includes the loop's slow estimate
  of unmetered load, so only a change the estimate has not followed shows), and so are PV readings while the battery sits
  at its discharge limit (when the load is not served, the balance includes the unserved part: a
  saturated battery is the evidence that the other sources do not give what they claim). The load
  is taken at the battery reading's timestamp, so a cap change between polls is not a mismatch. A
  PV reading found so stays suspect until it moves and agrees again for ``hold_s`` (a stuck lie
  would otherwise be trusted again as soon as the cut caps made the balance close);
- **cannot deliver**: when the load is not covered by what the sources deliver (by more than the
  tolerance, for ``hold_s``) while the battery delivers less than its SoC allows and no power flows
  at the meter (the battery, not the grid, balances the site), its SoC is suspect until the SoC reading moves (a battery that really delivers moves its SoC) or the
  balance has stayed closed for ``SOC_RETRUST_S`` (doubling per disowning in a row);
- **stuck**: a PV reading above zero that does not move beyond ``stuck_noise_kw`` for
  ``stuck_polls`` polls while the balance says PV moved by more than ``STUCK_MOVE_PCT`` of the
  nameplate is suspect (a stuck zero is harmless: it counts nothing);
- **SoC**: a SoC reading is checked against an estimate carried from the last trusted reading by
  integrating the battery's measured power over the capacity (without a power reading, by its
  power limits: the fastest the SoC can move); a reading off by more than the estimate's
  uncertainty (``SOC_TOL_PCT`` plus the integration drift) is suspect until it agrees again;
- **grid present**: the grid's import limit counts only while the meter shows the grid there:
  voltage (``v_v`` >= ``GRID_MIN_V``) and frequency (``f_hz`` inside ``GRID_HZ``) where the profile
  maps them, otherwise a power flow of at least ``GRID_FLOW_KW`` (a live meter reading 0 W says
  nothing about the grid).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from powerctl.control.battery import taper_fraction
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage

if TYPE_CHECKING:
    from powerctl.config import BatteryDevice, BatteryLimits, PvDevice, PvLimits, SiteConfig

NAMEPLATE_TOL = 0.05  # meters are rarely better than a few %: 5 % over nameplate is still believed
NAMEPLATE_ABS_KW = 1.0
SOC_TOL_PCT = 2.0  # SoC resolution and BMS recalibration steps
SOC_DRIFT = 0.1  # share of the integrated energy the estimate may be off by (efficiency, meter error)
# A SoC disowned because the battery did not deliver ("cannot deliver") is trusted again when its
# SoC moves, or after the balance has stayed closed this long; each disowning in a row doubles the
# wait (up to SOC_RETRUST_MAX_S): with its SoC counted as the floor the battery is asked for
# nothing, so its SoC may never move, and the caps stayed at the floor for good after a fault.
SOC_RETRUST_S = 10.0
SOC_RETRUST_MAX_S = 600.0
GRID_MIN_V = 80.0  # a dead grid reads ~0 V; any nominal (110-480 V) is far above
GRID_HZ = (45.0, 65.0)
GRID_FLOW_KW = 0.5
STUCK_MOVE_PCT = 10.0
GRID_KEY = "grid"  # "<meter>.grid": the grid is down (a state, not a lying reading)


@dataclass(frozen=True)
class Assessment:
    suspect: dict[str, str]  # "device.signal" (or "meter.grid") -> why it does not count
    raised: tuple[str, ...]  # findings new in this pass ("device.signal: why")
    cleared: tuple[str, ...]  # "device.signal" trusted again in this pass
    grid_present: dict[str, bool]  # meter -> grid shown present
    pv_balance_kw: float | None  # PV the power balance allows (None: the balance is not known)


@dataclass
class _SocTrack:
    est_pct: float
    t_s: float
    slack_pct: float = 0.0
    reading_ts: float = -math.inf


def pv_nameplate_kw(limits: PvLimits) -> float:
    return limits.max_ac_kw if limits.max_ac_kw is not None else limits.kwp


def over_nameplate(p_kw: float, nameplate_kw: float) -> bool:
    return p_kw > nameplate_kw * (1.0 + NAMEPLATE_TOL) + NAMEPLATE_ABS_KW


def supply_nameplate_kw(cfg: SiteConfig) -> float:
    """The most every source together could deliver: no load reading above it is physical."""
    total = sum(pv_nameplate_kw(d.limits) for d in cfg.by_nature(Nature.PV))
    total += sum(d.limits.max_discharge_kw for d in cfg.by_nature(Nature.BATTERY))
    total += sum(d.limits.rating_kw for d in cfg.by_nature(Nature.GENSET))
    total += sum(d.limits.max_import_kw for d in cfg.by_nature(Nature.METER))
    return total * (1.0 + NAMEPLATE_TOL) + NAMEPLATE_ABS_KW


def battery_power_plausible(p_kw: float, lim: BatteryLimits) -> bool:
    """A battery power reading inside what the battery can do (with the nameplate tolerance)."""
    return not (over_nameplate(p_kw, lim.max_discharge_kw) or over_nameplate(-p_kw, lim.max_charge_kw))


def soc_rate_pct_per_s(max_kw: float, capacity_kwh: float) -> float:
    """The fastest a SoC can move at ``max_kw`` (with 20 % to spare)."""
    return 1.2 * max_kw / capacity_kwh * 100.0 / 3600.0


def grid_shown_present(p_kw: float | None, v_v: float | None, f_hz: float | None,
                       has_v: bool, has_f: bool) -> bool:
    """Whether a meter's readings show a live grid (None = not GOOD)."""
    if p_kw is None:
        return False
    if has_v or has_f:
        v_ok = not has_v or (v_v is not None and v_v >= GRID_MIN_V)
        f_ok = not has_f or (f_hz is not None and GRID_HZ[0] <= f_hz <= GRID_HZ[1])
        return v_ok and f_ok
    return abs(p_kw) >= GRID_FLOW_KW


def meter_shows_grid(image: ProcessImage, name: str, now_s: float) -> bool:
    """Whether meter ``name``'s GOOD readings show a live grid (``grid_shown_present``)."""
    has_v, has_f = _declared(image, name, "v_v", now_s), _declared(image, name, "f_hz", now_s)
    return grid_shown_present(
        _value(image, name, "p_kw", now_s),
        _value(image, name, "v_v", now_s) if has_v else None,
        _value(image, name, "f_hz", now_s) if has_f else None,
        has_v, has_f,
    )


@dataclass
class Plausibility:
    cfg: SiteConfig
    balance_tol_kw: float = 3.0
    balance_tol_pct: float = 10.0  # of the load
    hold_s: float = 1.5
    stuck_polls: int = 10
    stuck_noise_kw: float = 0.02
    active: dict[str, str] = field(default_factory=dict)
    _soc: dict[str, _SocTrack] = field(default_factory=dict)
    _load: deque[tuple[float, float]] = field(default_factory=deque)
    _bal_bad_since: float | None = None
    _bal_ok_since: float | None = None
    _pv_latched: tuple[float, str] | None = None  # (PV reading, why) when the balance disowned it
    _soc_bad_since: float | None = None
    _soc_latched: dict[str, float] = field(default_factory=dict)  # battery -> SoC reading when disowned
    _soc_ok_since: float | None = None  # the balance closed since (for SOC_RETRUST_S)
    _soc_disowned: int = 0  # disownings in a row without the SoC moving (doubles the wait)
    _pv_polls: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    _implied: deque[tuple[float, float]] = field(default_factory=deque)
    _last_t_s: float | None = None

    def assess(self, image: ProcessImage, now_s: float, load_kw: float | None = None) -> Assessment:
        found: dict[str, str] = {}
        dt_s = 0.0 if self._last_t_s is None else min(max(0.0, now_s - self._last_t_s), 5.0)
        self._last_t_s = now_s
        if load_kw is not None:
            self._load.append((now_s, load_kw))
            while self._load and now_s - self._load[0][0] > 5.0:
                self._load.popleft()
        for d in self.cfg.by_nature(Nature.PV):
            p = _value(image, d.name, "p_kw", now_s)
            cap = pv_nameplate_kw(d.limits)
            if p is not None and over_nameplate(p, cap):
                found[f"{d.name}.p_kw"] = f"reads {p:.1f} kW, above the array's {cap:g} kW nameplate"
        for d in self.cfg.by_nature(Nature.GENSET):
            p = _value(image, d.name, "p_kw", now_s)
            if p is not None and over_nameplate(p, d.limits.rating_kw):
                found[f"{d.name}.p_kw"] = f"reads {p:.1f} kW, above its {d.limits.rating_kw:g} kW rating"
        for d in self.cfg.by_nature(Nature.BATTERY):
            p = _value(image, d.name, "p_kw", now_s)
            if p is not None and not battery_power_plausible(p, d.limits):
                found[f"{d.name}.p_kw"] = (f"reads {p:.1f} kW, beyond its {d.limits.max_discharge_kw:g} kW discharge "
                                           f"/ {d.limits.max_charge_kw:g} kW charge limits")
            why = self._check_soc(image, d, now_s, dt_s)
            if why:
                found[f"{d.name}.soc_pct"] = why
        present = {d.name: meter_shows_grid(image, d.name, now_s) for d in self.cfg.by_nature(Nature.METER)}
        for d in self.cfg.by_nature(Nature.METER):
            # only a meter that answers can say the grid is down (a stale one is stale: worst case)
            if d.limits.max_import_kw > 0 and not present[d.name] and _value(image, d.name, "p_kw", now_s) is not None:
                found[f"{d.name}.{GRID_KEY}"] = (
                    f"grid not shown present (p {_fmt(_value(image, d.name, 'p_kw', now_s), 'kW')}, "
                    f"v {_fmt(_value(image, d.name, 'v_v', now_s), 'V')}, "
                    f"f {_fmt(_value(image, d.name, 'f_hz', now_s), 'Hz')}): its import limit does not count")
        pv_balance = self._balance(image, now_s, found)
        raised = tuple(f"{k}: {v}" for k, v in found.items() if k not in self.active)
        cleared = tuple(k for k in self.active if k not in found)
        self.active = found
        return Assessment(dict(found), raised, cleared, present, pv_balance)

    # --- SoC ----------------------------------------------------------------------------------

    def _check_soc(self, image: ProcessImage, d: BatteryDevice, now_s: float, dt_s: float) -> str:
        name, lim = d.name, d.limits
        tr = self._soc.get(name)
        p = _value(image, name, "p_kw", now_s)
        if p is not None and not battery_power_plausible(p, lim):
            p = None  # a power the battery cannot have (garbage): integrate nothing from it
        if tr is not None:
            if p is not None:
                de = -p * dt_s / 3600.0 / lim.capacity_kwh * 100.0
                tr.est_pct += de
                tr.slack_pct += SOC_DRIFT * abs(de)
            else:  # no power reading: the SoC may have moved as fast as the battery can move it
                tr.slack_pct += soc_rate_pct_per_s(max(lim.max_charge_kw, lim.max_discharge_kw), lim.capacity_kwh) * dt_s
        try:
            sig = image.get(name, "soc_pct", now_s)
        except KeyError:
            return ""
        if not sig.good or sig.value is None:
            return ""  # stale: the guard already counts the floor
        soc = sig.value
        if tr is None:
            self._soc[name] = _SocTrack(soc, now_s, 0.0, sig.ts)
            return ""
        if sig.ts == tr.reading_ts:
            return self.active.get(f"{name}.soc_pct", "")  # no new reading: the verdict stands
        tr.reading_ts = sig.ts
        tol = SOC_TOL_PCT + tr.slack_pct
        if abs(soc - tr.est_pct) <= tol:
            tr.est_pct, tr.t_s, tr.slack_pct = soc, now_s, 0.0
            return ""
        return (f"reads {soc:.1f} %, but its power since the last trusted reading gives "
                f"{tr.est_pct:.1f} +- {tol:.1f} %")

    # --- balance and stuck --------------------------------------------------------------------

    def _load_at(self, t_s: float) -> float | None:
        if not self._load:
            return None
        return min(self._load, key=lambda x: abs(x[0] - t_s))[1]

    def _balance(self, image: ProcessImage, now_s: float, found: dict[str, str]) -> float | None:
        """PV the balance allows (``load - battery - genset - grid``), and the findings the balance
        gives: PV reading above it, a battery saturated at its limit under PV that claims headroom,
        a battery delivering less than its SoC claims. None when a term is missing or suspect."""
        pvs = self.cfg.by_nature(Nature.PV)
        bats = self.cfg.by_nature(Nature.BATTERY)
        if not pvs or not bats:
            return None
        bat_kw, bat_ts, bat_limit_kw = 0.0, now_s, 0.0
        for d in bats:
            try:
                sig = image.get(d.name, "p_kw", now_s)
            except KeyError:
                return None
            if (not sig.good or sig.value is None or f"{d.name}.soc_pct" in found
                    or not battery_power_plausible(sig.value, d.limits)):
                return None
            bat_kw, bat_ts = bat_kw + sig.value, min(bat_ts, sig.ts)
            soc = _value(image, d.name, "soc_pct", now_s)
            bat_limit_kw += d.limits.max_discharge_kw * taper_fraction(
                soc if soc is not None else d.limits.soc_min_pct, d.limits.soc_min_pct)
        others = 0.0
        for d in (*self.cfg.by_nature(Nature.GENSET), *self.cfg.by_nature(Nature.METER)):
            v = _value(image, d.name, "p_kw", now_s)
            if v is None or f"{d.name}.p_kw" in found or f"{d.name}.{GRID_KEY}" in found:
                return None  # a term missing, suspect, or the grid just went: no balance to check
            others += v
        load = self._load_at(bat_ts)
        if load is None:
            return None
        implied = max(0.0, load - bat_kw - others)
        self._implied.append((now_s, implied))
        self._stuck(image, pvs, now_s, found)
        reads = [_value(image, d.name, "p_kw", now_s) for d in pvs]
        if any(r is None for r in reads) or any(f"{d.name}.p_kw" in found for d in pvs):
            return implied
        pv_read = sum(max(0.0, r or 0.0) for r in reads)
        tol = self.balance_tol_kw + self.balance_tol_pct / 100.0 * load
        # While power flows at the meter (import or export), the grid, not the battery, balances the site:
        # a battery at its limit is then its setpoint, no evidence against PV (a lie shows in the balance).
        grid_in = sum(abs(_value(image, d.name, "p_kw", now_s) or 0.0) for d in self.cfg.by_nature(Nature.METER))
        # saturated although the readings claim headroom: the guard keeps the load below what it
        # counts, so a battery at its limit means a counted source is not there (a grid loss, where
        # the load really is above the sources, claims no headroom and blames no one)
        saturated = (bat_limit_kw > 1.0 and bat_kw >= bat_limit_kw - 1.0 and pv_read > 1.0
                     and pv_read + bat_limit_kw + others > load + 1.0) and grid_in < tol
        why = ""
        if pv_read > implied + tol:
            why = (f"PV reads {pv_read:.1f} kW, but the balance (load {load:.1f} - battery {bat_kw:.1f} "
                   f"- genset/grid {others:.1f} kW) gives {implied:.1f} kW")
        elif saturated:
            why = (f"PV reads {pv_read:.1f} kW, but the battery is at its {bat_limit_kw:.1f} kW limit "
                   f"under a {load:.1f} kW load")
        short_kw = load - (pv_read + others + bat_kw)
        if not why and short_kw > tol and bat_limit_kw > bat_kw + tol and grid_in < tol:
            # the load is not covered by what the sources deliver, and the battery holds back
            # although its SoC allows more: its SoC (or limit) is not what it delivers. Not while
            # power flows at the meter: the grid balances and the battery follows its setpoint, so
            # a battery below its limit is normal; a balance that does not close then says a load
            # or source reading is off, not the SoC (a true SoC lie shows as the grid making up
            # the battery's part, which closes the balance)
            self._soc_bad_since = self._soc_bad_since if self._soc_bad_since is not None else now_s
            self._soc_ok_since = None
        else:
            self._soc_bad_since = None
            self._soc_ok_since = self._soc_ok_since if self._soc_ok_since is not None else now_s
        if self._soc_bad_since is not None and now_s - self._soc_bad_since >= self.hold_s:
            self._soc_disowned += 0 if self._soc_latched else 1
            self._soc_latched = {d.name: _value(image, d.name, "soc_pct", now_s) or 0.0 for d in bats}
        wait_s = min(SOC_RETRUST_S * 2.0 ** max(0, self._soc_disowned - 1), SOC_RETRUST_MAX_S)
        if self._soc_latched and self._soc_ok_since is not None and now_s - self._soc_ok_since >= wait_s:
            self._soc_latched = {}  # closed for long enough: trusted again (on probation, see above)
        for d in bats:
            at = self._soc_latched.get(d.name)
            soc = _value(image, d.name, "soc_pct", now_s)
            if at is not None and soc is not None and abs(soc - at) < 0.5:
                found.setdefault(f"{d.name}.soc_pct", (
                    f"SoC reads {soc:.1f} % but the battery delivers {bat_kw:.1f} kW of the "
                    f"{bat_limit_kw:.1f} kW it allows while {short_kw:.1f} kW of load is not covered"))
            elif at is not None:
                del self._soc_latched[d.name]  # the SoC moved: the battery is doing something real
                self._soc_disowned = 0
        if why:
            self._bal_ok_since = None
            self._bal_bad_since = self._bal_bad_since if self._bal_bad_since is not None else now_s
        else:
            self._bal_bad_since = None
            self._bal_ok_since = self._bal_ok_since if self._bal_ok_since is not None else now_s
        if self._bal_bad_since is not None and now_s - self._bal_bad_since >= self.hold_s:
            self._pv_latched = (pv_read, why)
        if self._pv_latched is not None:
            moved = abs(pv_read - self._pv_latched[0]) > self.stuck_noise_kw
            if moved and self._bal_ok_since is not None and now_s - self._bal_ok_since >= self.hold_s:
                self._pv_latched = None  # the reading moved and agrees again: trusted
            else:
                for d in pvs:
                    found.setdefault(f"{d.name}.p_kw", why or self._pv_latched[1])
        return implied

    def _stuck(self, image: ProcessImage, pvs: Sequence[PvDevice], now_s: float, found: dict[str, str]) -> None:
        while self._implied and now_s - self._implied[0][0] > 60.0:
            self._implied.popleft()
        for d in pvs:
            name = d.name
            key = f"{name}.p_kw"
            try:
                sig = image.get(name, "p_kw", now_s)
            except KeyError:
                continue
            polls = self._pv_polls.setdefault(name, deque(maxlen=self.stuck_polls))
            if sig.good and sig.value is not None and (not polls or polls[-1][0] != sig.ts):
                polls.append((sig.ts, sig.value))
            if len(polls) < self.stuck_polls or key in found:
                continue
            vals = [v for _t, v in polls]
            if max(vals) <= 0.0 or max(vals) - min(vals) > self.stuck_noise_kw:
                continue
            t0 = polls[0][0]
            implied = [v for t, v in self._implied if t >= t0]
            cap = pv_nameplate_kw(d.limits)
            if len(implied) >= 2 and max(implied) - min(implied) > STUCK_MOVE_PCT / 100.0 * cap:
                found[key] = (f"stuck at {vals[-1]:.2f} kW for {len(vals)} polls while the balance moved "
                              f"{min(implied):.1f}..{max(implied):.1f} kW")


def is_reading(key: str) -> bool:
    """Whether a finding is about a reading (suspect: no rise) rather than the grid's state."""
    return not key.endswith("." + GRID_KEY)


def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:.1f} {unit}"


def _declared(image: ProcessImage, device: str, signal: str, now_s: float) -> bool:
    try:
        image.get(device, signal, now_s)
    except KeyError:
        return False
    return True


def _value(image: ProcessImage, device: str, signal: str, now_s: float) -> float | None:
    try:
        return image.value(device, signal, now_s)
    except KeyError:
        return None
