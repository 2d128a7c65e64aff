"""Battery limits that hold in every mode, and how much discharge the guard counts near the floor.

``clamp_battery_kw`` is the one clamp every dispatch path applies (plan, hold, manual): device
limits, no discharge at or below the SoC floor or the operator's reserve, no charge at the top, and
an unknown SoC (stale) allows no discharge. ``FloorLatch`` tapers the discharge the guard counts
from the full limit ``TAPER_BAND_PCT`` above the floor down to zero at it, and once the battery
has reached the floor counts nothing until the SoC is ``REARM_PCT`` above it again: a SoC that
hovers at the floor no longer swings the counted supply between zero and the full limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from powerctl.config import BatteryLimits

TAPER_BAND_PCT = 5.0  # BMSs derate discharge over the last few % (sim/plant/battery.py tapers 5 %)
REARM_PCT = 1.0


def clamp_battery_kw(p_kw: float, lim: BatteryLimits, soc_pct: float | None,
                     reserve_pct: float | None = None) -> float:
    """``p_kw`` (+ = discharge) inside the device limits and the SoC window (and reserve)."""
    p = min(max(float(p_kw), -lim.max_charge_kw), lim.max_discharge_kw)
    floor_pct = max(lim.soc_min_pct, reserve_pct if reserve_pct is not None else lim.soc_min_pct)
    if p > 0 and (soc_pct is None or soc_pct <= floor_pct):
        return 0.0
    if p < 0 and soc_pct is not None and soc_pct >= lim.soc_max_pct:
        return 0.0
    return p


def device_limited_kw(limit_kw: float, device_kw: float | None) -> float:
    """A configured power limit, lowered to what the device allows now where it reports that."""
    return limit_kw if device_kw is None else min(limit_kw, max(0.0, device_kw))


def charge_taper_fraction(soc_pct: float, soc_max_pct: float, band_pct: float = TAPER_BAND_PCT) -> float:
    """Share of the charge limit counted at ``soc_pct``: 0 at the top, 1 from top - band."""
    return taper_fraction(-soc_pct, -soc_max_pct, band_pct)


def taper_fraction(soc_pct: float, soc_min_pct: float, band_pct: float = TAPER_BAND_PCT) -> float:
    """Share of the discharge limit counted at ``soc_pct``: 0 at the floor, 1 from floor + band."""
    if band_pct <= 0:
        return 1.0 if soc_pct > soc_min_pct else 0.0
    return min(1.0, max(0.0, (soc_pct - soc_min_pct) / band_pct))


@dataclass
class FloorLatch:
    """The taper, with hysteresis at the floor (one per battery)."""

    empty: bool = False

    def fraction(self, soc_pct: float, soc_min_pct: float) -> float:
        if soc_pct <= soc_min_pct:
            self.empty = True
        elif soc_pct >= soc_min_pct + REARM_PCT:
            self.empty = False
        return 0.0 if self.empty else taper_fraction(soc_pct, soc_min_pct)
