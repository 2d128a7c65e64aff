"""The process image: the latest value, timestamp and quality of every signal.

One writer per signal (the acquisition task of its device); many readers (planner, guard,
telemetry). Readers never get a silently old value: ``get`` ages a signal at read time against
its ``max_age_s``, and ``worst`` substitutes the worst case for anything that is not GOOD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from powerctl.natures import Nature, Worst, signal_spec


class Quality(StrEnum):
    GOOD = "good"
    STALE = "stale"  # too old, or the device stopped answering
    INVALID = "invalid"  # the device answered with something we do not trust
    MISSING = "missing"  # never seen


@dataclass(frozen=True, slots=True)
class Signal:
    value: float | None
    ts: float
    quality: Quality
    reason: str = ""

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


MISSING = Signal(None, 0.0, Quality.MISSING, "never received")


@dataclass(slots=True)
class _Slot:
    nature: Nature
    max_age_s: float
    signal: Signal = MISSING


class ProcessImage:
    """Signals keyed by (device, signal name)."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str], _Slot] = {}

    def declare(self, device: str, nature: Nature, signal: str, max_age_s: float) -> None:
        """Register a signal before use; its nature fixes unit, sign and worst case."""
        signal_spec(nature, signal)  # raises on an unknown name
        if max_age_s <= 0:
            raise ValueError(f"{device}.{signal}: max_age_s must be > 0")
        self._slots[(device, signal)] = _Slot(nature, max_age_s)

    def _slot(self, device: str, signal: str) -> _Slot:
        try:
            return self._slots[(device, signal)]
        except KeyError:
            raise KeyError(f"signal {device}.{signal} was not declared") from None

    def update(self, device: str, signal: str, value: float | None, ts: float, reason: str = "") -> None:
        """Store a fresh reading; ``None`` or a non-finite number is stored as INVALID."""
        slot = self._slot(device, signal)
        if value is None or value != value or value in (float("inf"), float("-inf")):
            slot.signal = Signal(None, ts, Quality.INVALID, reason or f"not a number: {value!r}")
        else:
            slot.signal = Signal(float(value), ts, Quality.GOOD)

    def mark(self, device: str, signal: str, quality: Quality, ts: float, reason: str) -> None:
        """Mark a signal STALE or INVALID (the value is dropped: nobody may use it)."""
        slot = self._slot(device, signal)
        slot.signal = Signal(None, ts, quality, reason)

    def mark_device(self, device: str, quality: Quality, ts: float, reason: str) -> None:
        """Mark every signal of one device (e.g. it stopped answering)."""
        for (dev, _sig), slot in self._slots.items():
            if dev == device:
                slot.signal = Signal(None, ts, quality, reason)

    def get(self, device: str, signal: str, now: float) -> Signal:
        """The signal, aged: a GOOD value older than its max age reads as STALE (value dropped)."""
        slot = self._slot(device, signal)
        sig = slot.signal
        if sig.quality is Quality.GOOD and now - sig.ts > slot.max_age_s:
            return Signal(None, sig.ts, Quality.STALE, f"older than {slot.max_age_s:g} s")
        if sig.quality is Quality.GOOD and sig.ts - now > slot.max_age_s:
            # A reading from the future means the clock stepped back: do not trust it either.
            return Signal(None, sig.ts, Quality.STALE, "timestamp ahead of the clock")
        return sig

    def value(self, device: str, signal: str, now: float) -> float | None:
        sig = self.get(device, signal, now)
        return sig.value if sig.good else None

    def worst(self, device: str, signal: str, now: float, *, low: float = 0.0, high: float) -> float:
        """The value if GOOD, else the worst case for this signal.

        ``low``/``high`` are the bounds of the signal's physical window (e.g. the SoC window or a
        load's maximum); which one applies comes from the nature's ``Worst`` rule.
        """
        sig = self.get(device, signal, now)
        if sig.good:
            assert sig.value is not None
            return sig.value
        rule = signal_spec(self._slot(device, signal).nature, signal).worst
        if rule is Worst.ZERO:
            return 0.0
        if rule is Worst.LOW:
            return low
        if rule is Worst.HIGH:
            return high
        raise LookupError(f"{device}.{signal} is {sig.quality.value} ({sig.reason}) and has no worst case")

    def items(self, now: float) -> Iterator[tuple[str, str, Signal]]:
        for (device, signal) in self._slots:
            yield device, signal, self.get(device, signal, now)

    def not_good(self, now: float) -> list[tuple[str, str, Signal]]:
        return [(d, s, sig) for d, s, sig in self.items(now) if not sig.good]
