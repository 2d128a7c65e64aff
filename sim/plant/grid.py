"""The plant's utility connection: import/export limits and outages (scheduled and random).

Random outages are a Poisson process (`outages_per_day`) with exponentially distributed lengths
(`mean_outage_s`), drawn from a seeded generator as simulated time advances, so a replay with
the same seed sees the same outages. Scheduled outages are given as (start_s, end_s) in the
plant's time. During an outage the plant islands: no import, no export, the meter reads 0 V.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Outage:
    start_s: float
    end_s: float


@dataclass
class GridConnection:
    import_max_kw: float
    export_max_kw: float
    scheduled: list[Outage] = field(default_factory=list)
    outages_per_day: float = 0.0
    mean_outage_s: float = 1800.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.import_max_kw < 0 or self.export_max_kw < 0:
            raise ValueError("grid limits must be >= 0")
        if self.outages_per_day < 0 or self.mean_outage_s <= 0:
            raise ValueError("outages_per_day must be >= 0 and mean_outage_s > 0")
        for o in self.scheduled:
            if not o.end_s > o.start_s:
                raise ValueError(f"scheduled outage {o}: end_s must be after start_s")
        self._rng = np.random.default_rng(self.seed)
        self._random: list[Outage] = []
        self._drawn_to_s = 0.0  # random outages are known up to this time

    @classmethod
    def from_windows(cls, import_max_kw: float, export_max_kw: float, windows: Iterable[tuple[float, float]],
                     **kw: float | int) -> GridConnection:
        return cls(import_max_kw, export_max_kw, [Outage(a, b) for a, b in windows], **kw)  # type: ignore[arg-type]

    @property
    def connected(self) -> bool:
        """The site has a grid connection at all (some limit > 0)."""
        return self.import_max_kw > 0 or self.export_max_kw > 0

    def _draw_until(self, t_s: float) -> None:
        if self.outages_per_day <= 0:
            return
        mean_gap_s = 86400.0 / self.outages_per_day
        while self._drawn_to_s <= t_s:
            start = self._drawn_to_s + float(self._rng.exponential(mean_gap_s))
            length = float(self._rng.exponential(self.mean_outage_s))
            self._random.append(Outage(start, start + length))
            self._drawn_to_s = start + length

    def outages(self, until_s: float) -> list[Outage]:
        """Every outage that starts before until_s, in time order."""
        self._draw_until(until_s)
        return sorted((o for o in [*self.scheduled, *self._random] if o.start_s < until_s), key=lambda o: o.start_s)

    def up(self, t_s: float) -> bool:
        """The grid is there at t_s (no outage covers it)."""
        if not self.connected:
            return False
        self._draw_until(t_s)
        return not any(o.start_s <= t_s < o.end_s for o in (*self.scheduled, *self._random))
