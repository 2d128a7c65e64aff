"""Register codec and profile-level decode/encode round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerctl.profiles import load_profile
from powerctl.profiles.codec import CodecError, decode, encode, is_sentinel
from powerctl.profiles.values import (
    SetpointRangeError,
    decode_signals,
    setpoint_registers,
    setpoint_value_from_registers,
)
from powerctl.sim.devices import DeviceSimulator


def test_word_order_with_distinct_halves() -> None:
    assert encode(0x00010002, "uint32", "big") == [0x0001, 0x0002]
    assert encode(0x00010002, "uint32", "little") == [0x0002, 0x0001]
    assert decode([0x0002, 0x0001], "uint32", "little") == 0x00010002


def test_signed_types() -> None:
    assert decode([0xFFFF], "int16") == -1
    assert decode([0x8000], "int16") == -32768
    assert decode([0xFFFF, 0xFFFE], "int32") == -2
    assert encode(-2, "int32") == [0xFFFF, 0xFFFE]
    assert decode([0xFFFF], "uint16") == 65535


def test_float32_and_strings() -> None:
    regs = encode(230.09, "float32")
    assert math.isclose(float(decode(regs, "float32")), 230.09, rel_tol=1e-6)
    assert decode(encode("SunSpecTest", "string", length=8), "string") == "SunSpecTest"


def test_length_and_range_errors() -> None:
    with pytest.raises(CodecError, match="needs 2 registers"):
        decode([1], "int32")
    with pytest.raises(CodecError, match="does not fit"):
        encode(70000, "uint16")


def test_sentinels() -> None:
    assert is_sentinel([0x8000], "int16", frozenset({0x8000}))
    assert is_sentinel([0xFFFF, 0xFFFF], "uint32", frozenset({0xFFFFFFFF}))
    assert not is_sentinel([0x7FFF], "int16", frozenset({0x8000}))


@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(["big", "little"]))
def test_int32_round_trip(value: int, words: str) -> None:
    assert decode(encode(value, "int32", words), "int32", words) == value  # type: ignore[arg-type]


@given(st.integers(0, 2**64 - 1))
def test_uint64_round_trip(value: int) -> None:
    assert decode(encode(value, "uint64"), "uint64") == value


def test_sunspec_scale_factor_and_not_implemented() -> None:
    prof = load_profile("sunspec/inverter_103")
    sim = DeviceSimulator(prof)
    sim.set_point("W_SF", -1)
    with pytest.raises(CodecError, match="does not fit in int16"):
        sim.set_signal("p_kw", 12.345)  # 12345 W at 0.1 W resolution does not fit an int16
    sim.set_signal("p_kw", 3.2101)  # scale factor -1 covers +-3276.7 W
    got = decode_signals(prof, sim.registers)
    assert got["p_kw"].value == pytest.approx(3.2101, abs=1e-4)
    sim.set_point("W_SF", 2)
    sim.set_signal("p_kw", 250.0)
    assert decode_signals(prof, sim.registers)["p_kw"].value == pytest.approx(250.0)
    sim.set_sentinel("W")
    r = decode_signals(prof, sim.registers)["p_kw"]
    assert r.value is None and "not implemented" in r.reason
    sim.set_signal("p_kw", 50.0)
    sim.set_sentinel("W_SF")  # a scale factor that is itself not implemented poisons its points
    r = decode_signals(prof, sim.registers)["p_kw"]
    assert r.value is None and "scale factor" in r.reason


def test_sign_and_units_battery() -> None:
    prof = load_profile("sma/sunny_island")
    sim = DeviceSimulator(prof, unit_id=3)
    sim.set_signal("p_kw", -42.0)  # charging
    sim.set_signal("soc_pct", 77.0)
    got = decode_signals(prof, sim.registers)
    assert got["p_kw"].value == pytest.approx(-42.0)
    assert got["soc_pct"].value == pytest.approx(77.0)
    # SMA NaN marker
    sim.set_sentinel("GridMs_TotW")
    assert decode_signals(prof, sim.registers)["p_kw"].value is None
    # SoC outside 0..100 is not trusted
    sim.set_point("Bat_ChaStt", 250)
    assert "above valid maximum" in decode_signals(prof, sim.registers)["soc_pct"].reason


def test_setpoint_encode_range_and_round_trip() -> None:
    prof = load_profile("sma/sunny_island")
    sp = prof.setpoint("p_set_kw")
    regs = setpoint_registers(sp, prof, -50.0)
    assert regs == [0xFFFF, 0x3CB0]  # -50000 W, int32 big-endian
    assert setpoint_value_from_registers(sp, prof, regs) == pytest.approx(-50.0)
    with pytest.raises(SetpointRangeError, match=r"outside the allowed range \[-200000, 200000\] W"):
        setpoint_registers(sp, prof, 250.0)
    with pytest.raises(SetpointRangeError, match="non-finite"):
        setpoint_registers(sp, prof, float("nan"))


def test_dse_control_key_with_complement() -> None:
    prof = load_profile("dse/gencomm")
    sp = prof.setpoint("start_cmd")
    assert setpoint_registers(sp, prof, 1.0) == [35732, 29803]  # key, 65535 - key
    assert setpoint_registers(sp, prof, 0.0) == [35733, 29802]
    assert setpoint_value_from_registers(sp, prof, [35732, 29803]) == 1.0
    with pytest.raises(SetpointRangeError):
        setpoint_registers(sp, prof, 0.5)
    with pytest.raises(CodecError, match="complement"):
        setpoint_value_from_registers(sp, prof, [35732, 29800])


def test_dse_sentinels_and_engine_state_map() -> None:
    prof = load_profile("dse/gencomm")
    sim = DeviceSimulator(prof)
    sim.set_signal("state", 3.0)
    sim.set_signal("p_kw", 61.5)
    sim.set_signal("fuel_pct", 55.0)
    got = decode_signals(prof, sim.registers)
    assert got["running"].value == 1.0
    assert got["p_kw"].value == pytest.approx(61.5)
    sim.set_signal("state", 2.0)  # warming up: not yet able to take load
    assert decode_signals(prof, sim.registers)["running"].value == 0.0
    sim.set_raw("holding", prof.point("FuelLevel").address, [0xFFFD])  # DSE "under range"
    assert decode_signals(prof, sim.registers)["fuel_pct"].value is None
    sim.set_raw("holding", prof.point("EngineStatus").address, [9])  # unknown code
    assert "unknown code 9" in decode_signals(prof, sim.registers)["running"].reason
