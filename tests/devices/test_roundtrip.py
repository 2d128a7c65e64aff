"""Every shipped profile round-trips through its simulator and the driver over real Modbus TCP.

The simulator encodes known engineering values with the profile; the driver reads them back
through a pymodbus server on 127.0.0.1 and must decode the same values, units and signs. Every
setpoint is written inside its range (the simulator decodes the same value) and refused outside.
"""

from __future__ import annotations

import math

import pytest

from powerctl.natures import signal_spec
from powerctl.process_image import ProcessImage
from powerctl.profiles import list_profiles, load_profile
from powerctl.profiles.model import Point, Profile, signal_factor
from powerctl.profiles.values import SetpointRangeError, scale_factors
from powerctl.sim.devices import DeviceSimulator
from tests.devices.conftest import make_driver, served

PROFILES = [k for k in list_profiles() if load_profile(k).protocol == "modbus"]
SIGNED = {"int16", "int32", "int64"}


def _skip(p: Point) -> bool:
    # identity registers of the SunSpec chain and scale factors keep their defaults
    return p.dtype == "sunssf" or p.name == "SunS" or p.name.endswith(("_ID", "_L"))


def chosen_values(profile: Profile, sim: DeviceSimulator) -> dict[str, float | str]:
    """A distinct, representable engineering value per point (negative for signed types)."""
    sfs = scale_factors(profile, sim.registers)
    out: dict[str, float | str] = {}
    seen: set[tuple[str, int]] = set()
    for i, p in enumerate(profile.points):
        if _skip(p) or (p.table, p.address) in seen:
            continue  # an alias of an earlier point (same register, another signal) shares its value
        seen.add((p.table, p.address))
        if p.dtype == "string":
            out[p.name] = f"T{i}-{profile.vendor[:6]}"
            continue
        if p.value_map is not None:
            out[p.name] = float(sorted(p.value_map)[i % len(p.value_map)])
            continue
        raw = 1 + (i * 37) % 90
        if p.table == "coil":
            raw = 1
        if p.dtype in SIGNED and i % 2 and not (p.valid_min is not None and p.valid_min >= 0):
            raw = -raw  # negative where the point may be (a signed register with valid_min 0 may not)
        exp = sfs.get(p.scale_sf) if p.scale_sf else 0
        out[p.name] = raw * p.scale * 10.0 ** (exp or 0)
    return out


def signal_value(profile: Profile, p: Point) -> float:
    """A signal value with the sign the point can carry (after the profile's sign flip)."""
    if p.value_map is not None:
        return max(p.value_map.values())
    v = 7.0 if p.unit in ("W", "Wh") else 42.0
    if p.unit == "kW":
        v = 11.0
    if p.unit == "h":
        v = 3600.0 * (12.3 if p.scale < 1 else 12.0)  # run hours in the register's steps (0.1 h or 1 h)
    negative_ok = p.dtype in SIGNED and not (p.valid_min is not None and p.valid_min >= 0)
    return -v * p.sign if negative_ok else v * p.sign if p.sign > 0 else v


@pytest.mark.parametrize("key", PROFILES)
async def test_profile_round_trip(key: str) -> None:
    profile = load_profile(key)
    unit = profile.default_unit_id or 1
    written: list[tuple[str, float]] = []
    sim = DeviceSimulator(profile, unit_id=unit, on_write=lambda s, v: written.append((s, v)))
    values = chosen_values(profile, sim)
    for name, v in values.items():
        sim.set_point(name, v)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("dut", profile, srv.port, unit, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            # every point decodes to the value the simulator encoded (engineering units)
            for name, want in values.items():
                got = dev.readings[name].value
                if isinstance(want, str):
                    assert got == want, name
                else:
                    assert got is not None, f"{name}: {dev.readings[name].reason}"
                    assert math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9), (name, got, want)
            # signals: set in signal units and signs, read back through the process image
            for p in profile.signal_points():
                assert p.signal is not None
                if p.value_map is None and p.name != next(q.name for q in profile.points if q.signal == p.signal):
                    continue
                v = signal_value(profile, p)
                sim.set_signal(p.signal, v)
                assert await dev.poll_once()
                sig = image.get("dut", p.signal, dev.clock())
                assert sig.good, (p.signal, sig)
                assert sig.value == pytest.approx(v), (p.signal, sig.value, v)
            # setpoints: inside the range they reach the device unchanged; outside nothing is sent
            for sp in profile.setpoints:
                if sp.value_map is not None:
                    value = max(sp.value_map)
                else:
                    native = sp.range_min + 0.25 * (sp.range_max - sp.range_min)
                    if sp.scale_sf:
                        native = round(native)
                    native = round(native / sp.scale) * sp.scale
                    if sp.signal:
                        spec = signal_spec(profile.nature, sp.signal)
                        value = native * signal_factor(sp.unit, spec.unit, sp.name) * sp.sign
                    else:
                        value = native
                res = await dev.write_signal(sp.signal or sp.name, value)
                assert res.ok, res.message
                # a step of a write sequence may be followed by the sequence's own signal
                mine = [w for w in written if w[0] == (sp.signal or sp.name)]
                assert mine and mine[-1][1] == pytest.approx(value), (sp.name, written[-2:], value)
                if sp.readback and sp.value_map is None:
                    assert res.readback == pytest.approx(value)
                if sp.value_map is None:
                    before = sim.requests
                    too_big = sp.range_max + max(1.0, abs(sp.range_max)) if not sp.signal else value + 1e9
                    with pytest.raises(SetpointRangeError, match="outside the allowed range"):
                        await dev.write_signal(sp.signal or sp.name, too_big)
                    assert sim.requests == before
        finally:
            dev.close()
