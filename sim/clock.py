"""Clocks. The controller core takes time as an argument; these provide it.

``WallClock`` is real time; ``SimClock`` is a settable simulated time for replay and tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class SimClock:
    t_s: float = 0.0

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> float:
        if dt_s < 0:
            raise ValueError("SimClock cannot go backwards by advance(); use set() to model a clock step")
        self.t_s += dt_s
        return self.t_s

    def set(self, t_s: float) -> None:
        self.t_s = t_s


class WallClock:
    def __call__(self) -> float:
        return time.time()
