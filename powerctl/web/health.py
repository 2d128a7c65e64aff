"""Is the daemon healthy? Pure: ages of the last loop and guard cycles and the stale signals in.

Healthy means all of: the dispatch loop ran within ``LATE_PERIODS`` of its period, the guard ran
within ``LATE_PERIODS`` of its period, no supply signal (PV, battery, genset, meter) is stale, the
guard is not holding the safe cap and the dispatcher has a usable plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

LATE_PERIODS = 5.0


@dataclass(frozen=True)
class Health:
    ok: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "status": "ok" if self.ok else "unhealthy", "reasons": self.reasons}


def _late(what: str, age_s: float | None, period_s: float) -> str | None:
    if age_s is None:
        return f"{what} has not run yet"
    if age_s > LATE_PERIODS * period_s:
        return f"{what} last ran {age_s:.1f} s ago (period {period_s:g} s)"
    return None


def assess(
    *,
    loop_age_s: float | None,
    loop_period_s: float,
    guard_age_s: float | None,
    guard_period_s: float,
    stale_supply: Sequence[str],
    safe: bool = False,
    no_plan: bool = False,
) -> Health:
    """``stale_supply``: "device.signal" of every supply signal that is not good."""
    reasons = [r for r in (_late("control loop", loop_age_s, loop_period_s),
                           _late("guard", guard_age_s, guard_period_s)) if r]
    if stale_supply:
        reasons.append("stale devices: " + ", ".join(sorted(stale_supply)))
    if safe:
        reasons.append("guard holds GPUs at the safe cap")
    if no_plan:
        reasons.append("no usable plan: dispatch at the safe-cap budget")
    return Health(not reasons, reasons)
