"""PV curtailment commands: the plan's PV power, where it is below what the sun gives, as a limit.

The optimizer curtails PV when nobody can take the power (battery full, compute capped, no
export allowed): its ``pv_kw`` is then below the forecast. That limit has to reach the inverter
(SunSpec 704 ``WMaxLimPct``, the nature signal ``p_limit_pct``), or the power spills into a
grid-forming inverter that cannot take it. A PV the plan does not curtail is released (100 %).

The limit carries a headroom of ``headroom_kw`` above the plan: a forecast that is a little low
must not starve the site (in an island the grid-forming inverter sheds a small excess by itself;
a missing kW is a load it cannot serve).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from powerctl.config import PvDevice

RELEASED_PCT = 100.0
CURTAILED_BELOW_KW = 1.0  # plan this far below the forecast = curtailed (solver tolerance above it)


def rating_kw(pv: PvDevice) -> float:
    """What 100 % of the inverter's active power limit is (AC rating, else the array's kWp)."""
    return pv.limits.max_ac_kw if pv.limits.max_ac_kw is not None else pv.limits.kwp


def ceiling_kw(pvs: Sequence[PvDevice], pct: Mapping[str, float]) -> float:
    """The PV power the limits ``pct`` (% of rating per PV; a PV not named is released) allow,
    summed over ``pvs`` (kW)."""
    return sum(rating_kw(pv) * min(RELEASED_PCT, max(0.0, pct.get(pv.name, RELEASED_PCT))) / 100.0 for pv in pvs)


def limit_pct(pv: PvDevice, planned_kw: float, forecast_kw: float | None, headroom_kw: float) -> float:
    """The active power limit for one PV in % of its rating (100 = released).

    A plan or forecast that is not a number releases: a NaN compares false everywhere and used to
    come out as a 0 % limit, the whole array's supply cut on a number nobody can trust (the
    guard's export and surplus holds still bound what a released PV may push).
    """
    if forecast_kw is None or not (math.isfinite(planned_kw) and math.isfinite(forecast_kw) and math.isfinite(headroom_kw)):
        return RELEASED_PCT
    if planned_kw >= forecast_kw - CURTAILED_BELOW_KW:
        return RELEASED_PCT
    pct = 100.0 * (max(planned_kw, 0.0) + headroom_kw) / rating_kw(pv)
    return round(min(RELEASED_PCT, max(0.0, pct)), 1)


def pv_limits_pct(
    pvs: Sequence[PvDevice],
    planned_kw: Sequence[float],
    forecast_kw: Sequence[float] | None,
    headroom_kw: float,
    spill_kw: float = 0.0,
) -> dict[str, float]:
    """Per PV device, in config order: the limit to write now.

    A plan may send surplus to ``spill`` (a dump load) rather than curtail: the solver is
    indifferent when neither costs. A site without a dump load cannot spill, so the planned
    spill comes off the PV (shared by planned power) before the limit is computed.
    """
    total_kw = sum(max(float(p), 0.0) for p in planned_kw)
    share = min(1.0, max(spill_kw, 0.0) / total_kw) if total_kw > 0 else 0.0
    return {
        pv.name: limit_pct(
            pv,
            max(float(planned_kw[i]), 0.0) * (1.0 - share),
            None if forecast_kw is None else float(forecast_kw[i]),
            headroom_kw,
        )
        for i, pv in enumerate(pvs)
    }
