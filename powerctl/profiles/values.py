"""Profile-level decoding and encoding: register images <-> engineering values <-> nature signals.

A register image is ``{table: {address: register}}``. Decoding never passes on a number it does
not trust: a missing register, a sentinel, a scale factor that is itself "not implemented", a
NaN/inf float or a value outside the point's valid range becomes ``Reading(None, reason)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from powerctl.natures import signal_spec
from powerctl.profiles.codec import CodecError, decode, encode, is_sentinel, unscaled
from powerctl.profiles.model import Point, Profile, Setpoint, signal_factor

RegisterImage = dict[str, dict[int, int]]


@dataclass(frozen=True, slots=True)
class Reading:
    value: float | str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


def _regs(image: RegisterImage, table: str, address: int, count: int) -> list[int] | None:
    block = image.get(table, {})
    try:
        return [block[a] for a in range(address, address + count)]
    except KeyError:
        return None


def decode_point(point: Point, image: RegisterImage, sf_exp: dict[str, int | None]) -> Reading:
    """Engineering value of one point (unit = ``point.unit``), or None with a reason."""
    regs = _regs(image, point.table, point.address, point.count)
    if regs is None:
        return Reading(None, "registers not read")
    if is_sentinel(regs, point.dtype, point.sentinels, point.words):
        return Reading(None, "not implemented / invalid marker")
    try:
        raw = decode(regs, point.dtype, point.words)
    except CodecError as exc:
        return Reading(None, str(exc))
    if isinstance(raw, str):
        return Reading(raw)
    if isinstance(raw, float) and not math.isfinite(raw):
        return Reading(None, f"non-finite float {raw}")
    exp: int | None = None
    if point.scale_sf:
        exp = sf_exp.get(point.scale_sf)
        if exp is None:
            return Reading(None, f"scale factor {point.scale_sf} not available")
    value = float(raw) * point.scale * (10.0**exp if exp is not None else 1.0)
    if point.valid_min is not None and value < point.valid_min:
        return Reading(None, f"{value:g} below valid minimum {point.valid_min:g}")
    if point.valid_max is not None and value > point.valid_max:
        return Reading(None, f"{value:g} above valid maximum {point.valid_max:g}")
    return Reading(value)


def scale_factors(profile: Profile, image: RegisterImage) -> dict[str, int | None]:
    """Decode every sunssf point; a sentinel or out-of-range exponent becomes None."""
    out: dict[str, int | None] = {}
    for p in profile.points:
        if p.dtype != "sunssf":
            continue
        regs = _regs(image, p.table, p.address, 1)
        if regs is None or is_sentinel(regs, p.dtype, p.sentinels | {0x8000}, p.words):
            out[p.name] = None
            continue
        exp = int(decode(regs, "int16"))
        out[p.name] = exp if -10 <= exp <= 10 else None
    return out


def decode_points(profile: Profile, image: RegisterImage) -> dict[str, Reading]:
    sfs = scale_factors(profile, image)
    return {p.name: decode_point(p, image, sfs) for p in profile.points}


def to_signal(point: Point, reading: Reading, profile: Profile) -> Reading:
    """Convert a point reading into its nature signal's unit and sign (maps codes first)."""
    if point.signal is None:
        raise ValueError(f"{point.name} feeds no signal")
    if reading.value is None:
        return reading
    if isinstance(reading.value, str):
        return Reading(None, "string point cannot feed a numeric signal")
    v = reading.value
    if point.value_map is not None:
        code = int(v)
        if code not in point.value_map:
            return Reading(None, f"unknown code {code}")
        return Reading(point.value_map[code])
    spec = signal_spec(profile.nature, point.signal)
    factor = signal_factor(point.unit, spec.unit, f"{profile.key}:{point.name}")
    return Reading(v * factor * point.sign)


def decode_signals(profile: Profile, image: RegisterImage) -> dict[str, Reading]:
    """All signal values a profile yields from a register image."""
    points = decode_points(profile, image)
    return {p.signal: to_signal(p, points[p.name], profile) for p in profile.points if p.signal}


# --- encoding (used by writes and by the register-level simulators) ----------------------------


def encode_point(point: Point, value: float | str, sf_exp: int | None = None) -> list[int]:
    """Registers for an engineering value of ``point`` (unit = point.unit)."""
    if point.dtype == "string":
        return encode(str(value), "string", length=point.length)
    raw = unscaled(float(value), point.scale, sf_exp, point.dtype)
    return encode(raw, point.dtype, point.words)


def signal_to_point_value(point: Point, value: float, profile: Profile) -> float:
    """Inverse of ``to_signal`` for simulators: signal value -> engineering value of the point."""
    if point.signal is None:
        raise ValueError(f"{point.name} feeds no signal")
    if point.value_map is not None:
        for code, mapped in point.value_map.items():
            if mapped == value:
                return float(code)
        raise ValueError(f"{point.name}: no code maps to {value}")
    spec = signal_spec(profile.nature, point.signal)
    return value / (signal_factor(point.unit, spec.unit, point.name) * point.sign)


class SetpointRangeError(ValueError):
    """A write outside the profile's range: refused, nothing sent."""


def setpoint_registers(sp: Setpoint, profile: Profile, value_signal: float, sf_exp: int | None = None) -> list[int]:
    """Registers to write for a setpoint given in its nature signal's unit.

    Refuses (SetpointRangeError) a value outside the profile's range: the range is in the
    setpoint's own unit, checked after unit conversion, before anything is encoded.
    """
    if not math.isfinite(value_signal):
        raise SetpointRangeError(f"{profile.key}:{sp.name}: refusing non-finite value {value_signal!r}")
    if sp.value_map is not None:
        if value_signal not in sp.value_map:
            raise SetpointRangeError(
                f"{profile.key}:{sp.name}: {value_signal:g} is not one of {sorted(sp.value_map)}"
            )
        code = sp.value_map[value_signal]
        regs = encode(code, sp.dtype, sp.words)
    else:
        if sp.signal:
            spec = signal_spec(profile.nature, sp.signal)
            native = value_signal / (signal_factor(sp.unit, spec.unit, sp.name) * sp.sign)
        else:
            native = value_signal
        if not sp.range_min - 1e-9 <= native <= sp.range_max + 1e-9:
            raise SetpointRangeError(
                f"{profile.key}:{sp.name}: {native:g} {sp.unit} is outside the allowed range "
                f"[{sp.range_min:g}, {sp.range_max:g}] {sp.unit}"
            )
        raw = unscaled(native, sp.scale, sf_exp, sp.dtype)
        regs = encode(raw, sp.dtype, sp.words)
    if sp.complement:
        regs = regs + [0xFFFF - r for r in regs]
    return regs


def setpoint_value_from_registers(sp: Setpoint, profile: Profile, regs: list[int], sf_exp: int | None = None) -> float:
    """Inverse of ``setpoint_registers`` (simulators decode what a client wrote). Signal units."""
    n = len(regs) // 2 if sp.complement else len(regs)
    if sp.complement and any((a + b) != 0xFFFF for a, b in zip(regs[:n], regs[n:], strict=True)):
        raise CodecError(f"{sp.name}: key and complement do not match")
    raw = decode(regs[:n], sp.dtype, sp.words)
    if sp.value_map is not None:
        for v, code in sp.value_map.items():
            if code == raw:
                return v
        raise CodecError(f"{sp.name}: unknown code {raw}")
    native = float(raw) * sp.scale * (10.0**sf_exp if sf_exp is not None else 1.0)
    if sp.signal:
        spec = signal_spec(profile.nature, sp.signal)
        return native * signal_factor(sp.unit, spec.unit, sp.name) * sp.sign
    return native
