"""What the guard's decisions mean to an operator: state changes, not one line per 200 ms tick.

The guard decides every ``guard_period_s``; fitting caps to the supply is its normal job. This
turns the stream of decisions into events: a cut starts / ends, the safe cap starts / ends, a
class is shed / restored. Each event is logged once at its priority (a cut is INFO, the safe cap
and shedding are WARNING, the ends are INFO) and raised as an MQTT alarm. A cut "ends" only after
``END_HOLD_S`` without one, so a guard that trims every other tick makes one pair of lines, not
thousands. Pure: decisions and times in, events out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from powerctl.control.guard import GuardDecision

END_HOLD_S = 5.0


@dataclass(frozen=True)
class GuardEvent:
    kind: str  # guard_cut, guard_cut_end, safe_cap, safe_cap_end, shed, restore
    level: int
    fmt: str  # a logging format string (constant per kind, so repeats are counted together)
    args: tuple[Any, ...]
    alarm: dict[str, Any]


@dataclass
class _Episode:
    since_s: float | None = None
    last_s: float = 0.0
    ticks: int = 0


@dataclass
class GuardEvents:
    cut: _Episode = field(default_factory=_Episode)
    safe: _Episode = field(default_factory=_Episode)

    def _track(self, ep: _Episode, active: bool, now: float, start: tuple[str, int, str, tuple[Any, ...]],
               end: tuple[str, str], reason: str) -> list[GuardEvent]:
        out: list[GuardEvent] = []
        if active:
            if ep.since_s is None:
                ep.since_s, ep.ticks = now, 0
                kind, level, fmt, args = start
                out.append(GuardEvent(kind, level, fmt, args, {"t_s": now, "kind": kind, "reason": reason}))
            ep.last_s = now
            ep.ticks += 1
        elif ep.since_s is not None and now - ep.last_s >= END_HOLD_S:
            kind, fmt = end
            dur = ep.last_s - ep.since_s
            out.append(GuardEvent(kind, logging.INFO, fmt, (dur, ep.ticks),
                                  {"t_s": now, "kind": kind, "duration_s": dur, "ticks": ep.ticks}))
            ep.since_s = None
        return out

    def on_decision(self, d: GuardDecision, now: float) -> list[GuardEvent]:
        out = self._track(self.safe, d.safe, now,
                          ("safe_cap", logging.WARNING, "guard: GPUs at the safe cap: %s", (d.reason,)),
                          ("safe_cap_end", "guard: safe cap lifted after %.0f s (%d ticks)"), d.reason)
        out += self._track(self.cut, d.cut and not d.safe, now,
                           ("guard_cut", logging.INFO, "guard: caps cut to fit the supply: %s", (d.reason,)),
                           ("guard_cut_end", "guard: caps fit the request again after %.0f s (%d ticks cut)"), d.reason)
        for a in d.shed:
            out.append(GuardEvent("shed", logging.WARNING, "guard: shed %s (%d GPUs): %s", (a.klass, a.gpus, a.reason),
                                  {"t_s": now, "kind": "shed", "class": a.klass, "gpus": a.gpus, "reason": a.reason}))
        for a in d.restore:
            out.append(GuardEvent("restore", logging.INFO, "guard: restored %s (%d GPUs): %s",
                                  (a.klass, a.gpus, a.reason),
                                  {"t_s": now, "kind": "restore", "class": a.klass, "gpus": a.gpus, "reason": a.reason}))
        return out
