"""Genset output: the plan's kW, commanded where the genset controller takes a base-load setpoint.

A paralleling controller (ComAp IGS-NT with ``Load ctrl PtM = ANEXT BASELOAD``, see
device_profiles/comap/intelisys_nt.yaml) can run its genset at a kW setpoint while another source
(the grid-forming battery inverter, or the grid) takes the balance. Where the profile maps the
genset nature's ``p_set_kw``, the dispatcher sends the plan's output for the running genset, held
to ``[minimum load, rating]``: the minimum load the plan counts on is what the genset is asked to
carry. Where it does not (DSE GenComm: no documented register), the genset follows the load on its
own governor and nothing is sent.

A base-loaded genset does not pick up a load step by itself: only its setpoint moves it. So the
guard counts it at the base load in force, no faster than its ramp from what it delivers, never
at its rating (``counted_kw``); the rating is counted only where the genset follows the load.

The plan is minutes old and its forecast may be wrong; the battery that balances may be at its
SoC floor (where its BMS derates) or full. So the plan's outputs are fitted, on every dispatch,
into what the balancing sources can take now (``fit_to_balance``): never less than the load beyond
PV (measured, or planned if more) that the batteries (and a grid that is there) cannot deliver
now, never more than the measured load plus what they can absorb; serving the load wins. With a
supply reading not GOOD the bounds are unknown and the plan's outputs stand (the guard caps the
GPUs at the safe cap then anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from powerctl.config import GensetDevice, SiteConfig
from powerctl.control.battery import charge_taper_fraction, device_limited_kw, taper_fraction
from powerctl.control.plausibility import _value, meter_shows_grid
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.profiles import ProfileError

SETPOINT_SIGNAL = "p_set_kw"


def base_load_gensets(cfg: SiteConfig) -> dict[str, GensetDevice]:
    """The site's gensets whose profile maps ``p_set_kw`` (a base-load setpoint), by name (once, at
    start-up: it reads their profiles)."""
    from powerctl.profiles.library import device_profile

    found: dict[str, GensetDevice] = {}
    for d in cfg.devices:
        if not isinstance(d, GensetDevice):
            continue
        try:
            prof = device_profile(d, cfg.control.profiles_dir)
        except ProfileError:
            continue  # `powerctl check` and the daemon's start report the profile itself
        if prof.supports(SETPOINT_SIGNAL):
            found[d.name] = d
    return found


def setpoint_kw(plan_kw: float, genset: GensetDevice) -> float:
    """The output to command for a running genset: the plan's, held to [minimum load, rating] (a
    plan that is not a number asks for the minimum load, which the plan always counts on)."""
    lim = genset.limits
    min_kw = lim.rating_kw * lim.min_load_pct / 100.0
    if not math.isfinite(plan_kw):
        return min_kw
    return min(max(plan_kw, min_kw), lim.rating_kw)


def counted_kw(rating_kw: float, base_kw: float | None, measured_kw: float | None, rise_kw: float = math.inf) -> float:
    """What the guard may count of a running, trusted genset: its rating where it follows the load
    (``base_kw`` None); else the base load in force, but no more than it delivers plus ``rise_kw``
    (what its ramp adds within one guard period: a genset ramping down to a lower base load is
    about to deliver less, one ramping up gets there at its ramp), never above the rating."""
    if base_kw is None:
        return rating_kw
    now_kw = max(0.0, measured_kw if measured_kw is not None else 0.0)
    return max(0.0, min(rating_kw, base_kw, now_kw + max(0.0, rise_kw)))


def balance_bounds_kw(cfg: SiteConfig, image: ProcessImage, now_s: float,
                      planned_kw: float = 0.0) -> tuple[float, float] | None:
    """(lo, hi) kW for the sum of the base loads: the load beyond PV (batteries + gensets + grid
    import as measured now, or ``planned_kw``, what the plan has them supply now, if more: a
    load the guard holds down because the battery cannot give what the plan counted on is still
    the plan's load) less what the batteries and a present grid can still deliver, plus
    ``supply_margin_kw``; and the measured load plus what they can still absorb, less the margin.
    None while a battery, genset or meter power reading is not GOOD (the load is unknown)."""
    residual_kw = 0.0
    for d in (*cfg.by_nature(Nature.BATTERY), *cfg.by_nature(Nature.GENSET), *cfg.by_nature(Nature.METER)):
        p = _value(image, d.name, "p_kw", now_s)
        if p is None:
            return None
        residual_kw += p
    deliver_kw = absorb_kw = 0.0
    for b in cfg.by_nature(Nature.BATTERY):
        lim = b.limits
        soc = _value(image, b.name, "soc_pct", now_s)
        if soc is None:
            continue  # unknown SoC: it can deliver and absorb nothing (stale means worst case)
        # tapered over the last TAPER_BAND_PCT at either end, as the guard counts it (BMSs derate there)
        deliver_kw += (device_limited_kw(lim.max_discharge_kw, _value(image, b.name, "max_discharge_kw", now_s))
                       * taper_fraction(soc, lim.soc_min_pct))
        absorb_kw += (device_limited_kw(lim.max_charge_kw, _value(image, b.name, "max_charge_kw", now_s))
                      * charge_taper_fraction(soc, lim.soc_max_pct))
    for m in cfg.by_nature(Nature.METER):
        if meter_shows_grid(image, m.name, now_s):
            deliver_kw += m.limits.max_import_kw
            absorb_kw += m.limits.max_export_kw
    margin_kw = cfg.control.supply_margin_kw
    return max(residual_kw, planned_kw) - deliver_kw + margin_kw, residual_kw + absorb_kw - margin_kw


def fit_to_balance(setpoints_kw: Mapping[str, float], gensets: Mapping[str, GensetDevice],
                   bounds_kw: tuple[float, float] | None) -> dict[str, float]:
    """The base loads moved, together, into ``bounds_kw`` (``balance_bounds_kw``), each within
    [minimum load, rating]: lowered towards the minimum loads above ``hi``, then raised towards
    the ratings below ``lo`` (serving the load wins). Each moves in proportion to its room."""
    out = dict(setpoints_kw)
    if bounds_kw is None or not out:
        return out
    lo_kw, hi_kw = bounds_kw
    total = sum(out.values())
    if total > hi_kw:
        room = {n: out[n] - gensets[n].limits.rating_kw * gensets[n].limits.min_load_pct / 100.0 for n in out}
        _move(out, room, -(total - hi_kw))
        total = sum(out.values())
    if total < lo_kw:
        room = {n: gensets[n].limits.rating_kw - out[n] for n in out}
        _move(out, room, lo_kw - total)
    return out


def _move(out: dict[str, float], room_kw: Mapping[str, float], delta_kw: float) -> None:
    """Shift the sum of ``out`` by ``delta_kw``, each in proportion to its room (never beyond it)."""
    total_room = sum(max(0.0, r) for r in room_kw.values())
    if total_room <= 0.0:
        return
    frac = min(1.0, abs(delta_kw) / total_room)
    for n, r in room_kw.items():
        out[n] += math.copysign(max(0.0, r) * frac, delta_kw)
