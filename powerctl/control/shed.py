"""Shedding below the floor: whole workload classes are paused through hooks, and come back with
hysteresis.

``ShedPolicy`` (pure) decides: when even every running GPU at its floor does not fit the GPU power
the supply allows, it sheds classes that have a hook, least important first (highest priority
number), as many as needed at once. A shed class is restored (most important first, one at a time)
only after the supply has carried its floors plus ``restore_margin_w`` for ``hold_s`` without a
break. The hooks themselves run in ``powerctl.hooks`` (I/O), in the order decided here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from powerctl.control.split import GpuSlot

Action = Literal["shed", "restore"]


@dataclass(frozen=True)
class ShedAction:
    klass: str
    action: Action
    gpus: int
    priority: int
    at_s: float
    reason: str = ""


@dataclass
class _Class:
    name: str
    priority: int
    gpus: int
    floor_w: float  # all its GPUs at their minimum cap
    idle_w: float  # all its GPUs idle (work shed)
    has_hook: bool


@dataclass
class ShedPolicy:
    """Which classes are shed now, and when to shed or restore (pure; the caller runs the hooks)."""

    gpus: Sequence[GpuSlot]
    hooked_classes: Iterable[str]
    idle_w: float
    restore_margin_w: float
    hold_s: float
    retry_s: float = 10.0
    shed: list[str] = field(default_factory=list)  # in the order they were shed
    _ok_since: float | None = None
    _retry_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hooked = set(self.hooked_classes)
        self._classes: dict[str, _Class] = {}
        for g in self.gpus:
            c = self._classes.setdefault(g.klass, _Class(g.klass, g.priority, 0, 0.0, 0.0, g.klass in hooked))
            c.gpus += 1
            c.floor_w += g.min_w
            c.idle_w += self.idle_w

    def floors_w(self, shed: Iterable[str]) -> float:
        """GPU power with every running GPU at its floor and shed classes idle."""
        s = set(shed)
        return sum(c.idle_w if c.name in s else c.floor_w for c in self._classes.values())

    def update(self, allowed_w: float, now_s: float) -> list[ShedAction]:
        """Actions to take now, given the GPU power the supply allows (W)."""
        actions: list[ShedAction] = []
        candidates = sorted(
            (c for c in self._classes.values() if c.has_hook and c.name not in self.shed),
            key=lambda c: (-c.priority, c.name),
        )
        for c in candidates:
            if self.floors_w(self.shed) <= allowed_w:
                break
            if self._retry_at.get(c.name, -1.0) > now_s:
                continue
            reason = (f"supply allows {allowed_w / 1000:.1f} kW of GPU power, floors need "
                      f"{self.floors_w(self.shed) / 1000:.1f} kW")
            self.shed.append(c.name)
            actions.append(ShedAction(c.name, "shed", c.gpus, c.priority, now_s, reason))
        if actions:
            self._ok_since = None
            return actions
        if not self.shed:
            return actions
        # Restore the most important shed class first; one at a time, each after a full hold.
        nxt = min((self._classes[n] for n in self.shed), key=lambda c: (c.priority, c.name))
        need_w = self.floors_w([n for n in self.shed if n != nxt.name]) + self.restore_margin_w
        if allowed_w < need_w or self._retry_at.get(nxt.name, -1.0) > now_s:
            self._ok_since = None
            return actions
        if self._ok_since is None:
            self._ok_since = now_s
        if now_s - self._ok_since >= self.hold_s:
            self.shed.remove(nxt.name)
            self._ok_since = None
            reason = f"supply carried {need_w / 1000:.1f} kW (floors + margin) for {self.hold_s:g} s"
            actions.append(ShedAction(nxt.name, "restore", nxt.gpus, nxt.priority, now_s, reason))
        return actions

    def hook_failed(self, action: ShedAction, now_s: float) -> None:
        """A hook did not work: undo the state change and retry later."""
        self._retry_at[action.klass] = now_s + self.retry_s
        if action.action == "shed" and action.klass in self.shed:
            self.shed.remove(action.klass)
        elif action.action == "restore" and action.klass not in self.shed:
            self.shed.append(action.klass)
