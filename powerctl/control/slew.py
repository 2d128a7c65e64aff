"""Slew limits on GPU caps: cuts apply at once, rises are rate-limited and staggered.

A cap rise can raise site load by the same amount (times facility overhead) within a second, and
the battery inverter or genset has to pick that up. So the sum of cap increases per step is held to
``ramp_up_kw_per_s`` (site kW/s) x dt, handed out GPU by GPU (most important class first, and
round-robin inside a priority so the same GPUs do not always go first), not to all GPUs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from powerctl.control.split import GpuSlot


@dataclass
class SlewLimiter:
    ramp_up_kw_per_s: float
    facility_overhead: float = 0.0  # site kW per GPU kW is 1 + overhead
    _turn: int = field(default=0, repr=False)

    def rise_budget_w(self, dt_s: float) -> float:
        """GPU watts of cap increase allowed over ``dt_s``."""
        return max(0.0, dt_s) * self.ramp_up_kw_per_s * 1000.0 / (1.0 + self.facility_overhead)

    def limit(
        self,
        prev_caps_w: Mapping[int, float],
        target_caps_w: Mapping[int, float],
        dt_s: float,
        gpus: Sequence[GpuSlot],
    ) -> dict[int, float]:
        """Caps to send now: decreases in full, increases within the step's rise budget."""
        out: dict[int, float] = {}
        rising: list[GpuSlot] = []
        for g in gpus:
            target = target_caps_w[g.index]
            prev = prev_caps_w.get(g.index)
            if prev is None or target <= prev:
                out[g.index] = target  # a cut (or no history): at once
            else:
                out[g.index] = prev
                rising.append(g)
        if not rising:
            return out
        budget_w = self.rise_budget_w(dt_s)
        self._turn += 1
        order = sorted(rising, key=lambda g: (g.priority, (g.index - self._turn) % len(gpus)))
        for g in order:
            if budget_w <= 0:
                break
            step = min(budget_w, target_caps_w[g.index] - out[g.index])
            out[g.index] += step
            budget_w -= step
        return out
