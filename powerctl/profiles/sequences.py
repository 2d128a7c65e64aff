"""Write sequences: one nature setpoint (``p_set_kw``) mapped onto a vendor's ordered writes.

Many devices take a power setpoint as several registers written in order: a mode register, then
a direction, then the power (evcc's ordered ``sequence`` writes, templates sungrow-hybrid.yaml and
huawei-sun2000-hybrid.yaml, are the pattern). A profile says so as data::

    sequences:
      p_set_kw:
        keepalive_s: 60
        steps:
          - {setpoint: EmsMode, value: 2}                          # a constant: mode first
          - {setpoint: ChargeCommand, value: direction, sign: -1}  # -1 / 0 / +1
          - {setpoint: ForcedPower, value: magnitude}              # |p| in the setpoint's unit

A step's ``value`` is a constant or one of ``ValueKind``; it is computed from the signal value
``x`` (nature unit and sign: kW, + = discharge), times ``sign``, converted into the setpoint's
unit (W, kW) or, with ``percent_of: <point>``, into percent of that point's last reading.

A sequence may name a ``release``: constant writes, in order, that hand the device back to its
own control (Sungrow: stop command, power 0, EMS mode 0 self-consumption). The daemon writes it
on the way out (``powerctl.writes.WriteQueue.release``), so a forced mode never outlives us::

        release:
          - {setpoint: ChargeCommand, value: 0}
          - {setpoint: EmsMode, value: 0}

``step_values`` is the daemon's direction (signal -> every step's value, in order);
``signal_from_steps`` is the simulator's (the values in the registers -> the signal the device
now follows, or None while a mode step does not hold its constant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from powerctl.profiles.model import Profile


class ValueKind(StrEnum):
    SIGNAL = "signal"  # x itself (signed)
    MAGNITUDE = "magnitude"  # |x|
    CHARGE = "charge"  # |x| while charging (x < 0), else 0
    DISCHARGE = "discharge"  # x while discharging (x > 0), else 0
    DIRECTION = "direction"  # -1 charge, 0 idle, +1 discharge (no unit)


_POWER_UNITS = {"W": 1e-3, "kW": 1.0}  # point unit -> kW per unit (percent_of references)


def _signal_per_unit(unit: str, signal_unit: str, where: str) -> float:
    """Signal units per setpoint unit (1e-3 for a W setpoint of a kW signal)."""
    from powerctl.profiles.model import signal_factor

    return signal_factor(unit, signal_unit, where)


def _factor(profile: Profile, seq: WriteSequence, setpoint: str) -> float:
    from powerctl.natures import signal_spec

    return _signal_per_unit(profile.setpoint(setpoint).unit, signal_spec(profile.nature, seq.signal).unit, setpoint)


@dataclass(frozen=True, slots=True)
class Step:
    setpoint: str
    kind: ValueKind | None  # None: a constant
    constant: float = 0.0
    sign: float = 1.0
    percent_of: str | None = None  # point whose reading is 100 %


@dataclass(frozen=True, slots=True)
class WriteSequence:
    signal: str
    steps: tuple[Step, ...]
    keepalive_s: float | None = None
    description: str = ""
    release: tuple[tuple[str, float], ...] = ()  # (setpoint, constant) written in order on stop


class SequenceError(ValueError):
    """A sequence that cannot be computed now (e.g. the percent reference is not read yet)."""


def parse_sequences(raw: Mapping[str, Any]) -> dict[str, WriteSequence]:
    out: dict[str, WriteSequence] = {}
    for signal, body in raw.items():
        steps = []
        for s in body["steps"]:
            v = s["value"]
            kind = None if isinstance(v, int | float) else ValueKind(v)
            steps.append(
                Step(
                    setpoint=s["setpoint"],
                    kind=kind,
                    constant=float(v) if kind is None else 0.0,
                    sign=float(s.get("sign", 1)),
                    percent_of=s.get("percent_of"),
                )
            )
        release = tuple((str(r["setpoint"]), float(r["value"])) for r in body.get("release", []))
        out[signal] = WriteSequence(signal, tuple(steps), body.get("keepalive_s"), str(body.get("description", "")), release)
    return out


def check_sequences(profile: Profile, where: str) -> None:
    """Steps name setpoints without a signal of their own, in a unit the kind can be put in."""
    from powerctl.natures import signal_spec
    from powerctl.profiles.model import ProfileError

    names = {p.name for p in profile.points}
    for signal, seq in profile.sequences.items():
        at = f"{where}: sequences.{signal}"
        try:
            spec = signal_spec(profile.nature, signal)
        except KeyError as exc:
            raise ProfileError(f"{at}: {exc.args[0]}") from None
        if not spec.writable:
            raise ProfileError(f"{at}: signal {signal!r} is not writable")
        if any(sp.signal == signal for sp in profile.setpoints):
            raise ProfileError(f"{at}: a setpoint already feeds {signal!r}; use one or the other")
        for i, st in enumerate(seq.steps):
            here = f"{at}.steps[{i}]"
            try:
                sp = profile.setpoint(st.setpoint)
            except KeyError:
                raise ProfileError(f"{here}: setpoint {st.setpoint!r} is not a setpoint of this profile") from None
            if sp.signal:
                raise ProfileError(f"{here}: setpoint {sp.name} feeds {sp.signal!r} itself; a step writes a plain setpoint")
            if st.percent_of is not None:
                if st.percent_of not in names:
                    raise ProfileError(f"{here}: percent_of {st.percent_of!r} is not a point")
                if sp.unit not in ("%", "Pct"):
                    raise ProfileError(f"{here}: percent_of needs a setpoint in %, {sp.name} is in {sp.unit!r}")
            elif st.kind not in (None, ValueKind.DIRECTION):
                _signal_per_unit(sp.unit, spec.unit, here)  # raises ProfileError: a unit the signal cannot take
        for i, (name, v) in enumerate(seq.release):
            here = f"{at}.release[{i}]"
            if name not in {st.setpoint for st in seq.steps}:
                raise ProfileError(f"{here}: setpoint {name!r} is not a step of this sequence")
            sp = profile.setpoint(name)
            if sp.value_map is not None and v not in sp.value_map:
                raise ProfileError(f"{here}: {v:g} is not one of {name}'s values {sorted(sp.value_map)}")
            if sp.value_map is None and not sp.range_min <= v <= sp.range_max:
                raise ProfileError(f"{here}: {v:g} is outside {name}'s range [{sp.range_min:g}, {sp.range_max:g}]")
        if not any(st.kind not in (None, ValueKind.DIRECTION) for st in seq.steps):
            raise ProfileError(f"{at}: no step carries the power (signal, magnitude, charge or discharge)")


def _kind_value(kind: ValueKind, x: float) -> float:
    if kind is ValueKind.SIGNAL:
        return x
    if kind is ValueKind.MAGNITUDE:
        return abs(x)
    if kind is ValueKind.CHARGE:
        return max(-x, 0.0)
    if kind is ValueKind.DISCHARGE:
        return max(x, 0.0)
    return float((x > 0) - (x < 0))


def _reference_kw(profile: Profile, point: str, readings: Mapping[str, float | None]) -> float:
    ref = readings.get(point)
    unit = profile.point(point).unit
    if ref is None or not math.isfinite(ref) or ref <= 0 or unit not in _POWER_UNITS:
        raise SequenceError(f"{profile.key}: {point} (100 % of the setpoint) is {ref!r} {unit}: cannot scale the power")
    return ref * _POWER_UNITS[unit]


def step_values(profile: Profile, seq: WriteSequence, x: float, readings: Mapping[str, float | None]) -> list[float]:
    """Each step's value in its setpoint's own unit, in order (what is written)."""
    if not math.isfinite(x):
        raise SequenceError(f"{profile.key}: refusing non-finite {seq.signal} {x!r}")
    out: list[float] = []
    for st in seq.steps:
        if st.kind is None:
            out.append(st.constant)
            continue
        v = _kind_value(st.kind, x) * st.sign
        if st.kind is ValueKind.DIRECTION:
            out.append(v)
        elif st.percent_of is not None:
            out.append(round(100.0 * v / _reference_kw(profile, st.percent_of, readings), 6))
        else:
            out.append(v / _factor(profile, seq, st.setpoint))
    return out


def signal_from_steps(
    profile: Profile, seq: WriteSequence, values: Mapping[str, float], readings: Mapping[str, float | None]
) -> float | None:
    """The signal a device follows given its step registers (None: not in the commanded mode)."""
    direction: float | None = None
    kw_of: dict[ValueKind, float] = {}
    for st in seq.steps:
        v = values.get(st.setpoint)
        if v is None:
            return None
        if st.kind is None:
            if not math.isclose(v, st.constant, abs_tol=1e-9):
                return None
            continue
        v *= st.sign
        if st.kind is ValueKind.DIRECTION:
            direction = v
        elif st.percent_of is not None:
            kw_of[st.kind] = v / 100.0 * _reference_kw(profile, st.percent_of, readings)
        else:
            kw_of[st.kind] = v * _factor(profile, seq, st.setpoint)
    if ValueKind.SIGNAL in kw_of:
        return kw_of[ValueKind.SIGNAL]
    charge, discharge = kw_of.get(ValueKind.CHARGE), kw_of.get(ValueKind.DISCHARGE)
    mag = kw_of.get(ValueKind.MAGNITUDE)
    if direction is None:
        if discharge:
            return discharge
        return -charge if charge else (mag or 0.0)
    if direction > 0:
        return discharge if discharge is not None else (mag or 0.0)
    if direction < 0:
        return -(charge if charge is not None else (mag or 0.0))
    return 0.0
