"""An independent Modbus client (Debian mbpoll) reads our simulators: the raw registers on the
wire must be exactly what our codec encoded (catches off-by-one addressing and word order)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import pytest

from powerctl.profiles import load_profile
from powerctl.profiles.codec import encode
from powerctl.profiles.values import encode_point, scale_factors
from powerctl.sim.devices import DeviceSimulator
from tests.devices.conftest import served

MBPOLL = "/usr/bin/mbpoll"


def _mbpoll() -> str:
    path = MBPOLL if os.access(MBPOLL, os.X_OK) else shutil.which("mbpoll")
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true and mbpoll is missing (install the Debian package 'mbpoll')")
    print("SKIP: mbpoll not found (install the Debian package 'mbpoll')")
    pytest.skip("mbpoll not found")


async def mbpoll_read(port: int, unit: int, table: str, address: int, count: int) -> list[int]:
    """Raw 16-bit registers via mbpoll, PDU addressing (-0), one poll (-1)."""
    kind = {"holding": "4:hex", "input": "3:hex"}[table]
    proc = await asyncio.create_subprocess_exec(
        _mbpoll(), "-m", "tcp", "-a", str(unit), "-0", "-r", str(address), "-c", str(count),
        "-t", kind, "-1", "-o", "2", "-p", str(port), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (out.decode(), err.decode())
    regs = {int(a): int(v, 16) for a, v in re.findall(r"^\[(\d+)\]:\s+0x([0-9A-Fa-f]{4})", out.decode(), re.M)}
    assert sorted(regs) == list(range(address, address + count)), out.decode()
    return [regs[a] for a in range(address, address + count)]


@pytest.mark.parametrize(
    ("key", "point", "value"),
    [
        ("sunspec/inverter_103", "W", -12340.0),  # int16 with scale factor 10^1
        ("sunspec/der_inverter", "TotWhInj", 12_345_678_901.0),  # uint64, big-endian words
        ("sunspec/der_inverter", "W", -24_500.0),  # 701 int16 x 10^W_SF (0 here), signed
        ("sunspec/der_inverter", "WMaxLimPct", 62.5),  # 704 uint16 x 10^WMaxLimPct_SF (the PV limit)
        ("sunspec/der_inverter", "WMaxLimPctRvrtTms", 120.0),  # 704 uint32 revert timer
        ("sungrow/sh_hybrid", "BatteryPower", -70000.0),  # int32, LSW first (halves differ)
        ("huawei/sun2000_luna", "StoragePower", 65538.0),  # int32 0x00010002, MSW first
        ("victron/gx_modbus", "BatteryVoltage", 52.3),  # uint16 x 0.1
        ("dse/gencomm", "TotalPower", -150000.0),  # int32 BE
        ("comap/intelilite4", "Identification", "InteliLite4-AMF25"),  # 16-register string
        ("sunspec/meter_203", "W", -1_234_500.0),  # MW-class meter: int16 x 10^2 (W_SF 2)
        ("sunspec/meter_203", "TotWhImp", 3_000_000_123.0),  # acc32, big-endian words
        ("sunspec/meter_203", "PhVphA", 231.4),  # int16 x 10^-1
        ("sunspec/meter_201", "W", 1_650_000.0),  # single-phase meter: int16 x 10^2
        ("sunspec/meter_201", "Hz", 49.97),  # int16 x 10^-2
        ("sunspec/meter_201", "TotWhImp", 4_000_000_007.0),  # acc32 above 2^31
        ("sunspec/meter_202", "PhVphB", 119.8),  # split phase, second leg
        ("sunspec/meter_202", "W", -250_000.0),  # export
        ("sunspec/meter_202", "TotWhExp", 70_000.0),  # acc32, low word only
        ("sunspec/meter_204", "PhVphAB", 415.3),  # delta: line-line voltage
        ("sunspec/meter_204", "W", 3_200_000.0),  # 3.2 MW import
        ("sunspec/meter_204", "TotWhImp", 2_147_483_653.0),  # acc32 just past int32
        ("sunspec/der_storage", "WSet", -1_800_000.0),  # 704 int32 setpoint, MSW first
        ("sunspec/der_storage", "SoC", 63.4),  # 713 uint16 x 10^-1
        ("sunspec/der_storage", "DCWhAbs", 9_876_543_210.0),  # 714 uint64
        ("sunspec/der_storage", "WHRtg", 5_000_000.0),  # 713 uint16 x 10^3 (5 MWh)
        ("janitza/umg604", "P_sum", 2_750_000.0),  # revenue meter: float32, MSW first
        ("janitza/umg604", "U_L1", 231.5),  # float32
        ("janitza/umg604", "WhImport", 123_456.0),  # float32 energy
        ("comap/intelisys_nt", "ActivePower", -1250.0),  # paralleling genset: int16 kW (reverse power)
        ("comap/intelisys_nt", "RunHours", 70_001.0),  # uint32, MSW first
        ("comap/intelisys_nt", "GenFreq", 50.1),  # uint16 x 0.1
        ("fenecon/byd_container", "Soc", 63.0),  # containerised BESS: uint16 %
        ("fenecon/byd_container", "ActivePower", -350.5),  # int16 x 0.1 kW (charging)
        ("fenecon/byd_container", "AllowedChargePower", 480.0),  # int16 kW, read negated: raw -480
        ("woodward/easygen_3000xt", "GenFreq", 50.02),  # Protocol 5010: uint16 x 0.01 Hz
        ("woodward/easygen_3000xt", "GenP", 1_234_500.0),  # int16 W x 10^PowerExp (2)
        ("woodward/easygen_3000xt", "GenVL12", 415.0),  # uint16 V x 10^VoltageExp (0)
        ("woodward/easygen_3000xt", "PowerExp", 2.0),  # the telegram's own exponent
        ("huawei/sun2000_pv", "ActivePower", 65538.0),  # PV: int32 0x00010002, MSW first
        ("huawei/sun2000_pv", "ActivePowerDerating", 37.5),  # int16 x 0.1 (the PV limit)
        ("sungrow/sg_string", "ActivePower", 65538.0),  # PV: uint32 LSW first (halves differ)
        ("sungrow/sg_string", "PowerLimitSetting", 42.0),  # uint16 x 0.1 (the PV limit)
    ],
)
async def test_mbpoll_sees_what_the_codec_encoded(key: str, point: str, value: float | str) -> None:
    profile = load_profile(key)
    p = profile.point(point)
    unit = profile.default_unit_id or 1
    sim = DeviceSimulator(profile, unit_id=unit)
    sim.set_point(point, value)
    sf = scale_factors(profile, sim.registers).get(p.scale_sf) if p.scale_sf else None
    want = encode_point(p, value, sf)
    async with served(sim) as srv:
        got = await mbpoll_read(srv.port, unit, p.table, p.address, p.count)
    assert got == want, (key, point, [hex(r) for r in got], [hex(r) for r in want])
    if p.words == "little" and p.count == 2:
        assert got == encode(round(value / p.scale), p.dtype, "big")[::-1]  # type: ignore[operator]


async def test_mbpoll_reads_the_sunspec_marker_at_40000() -> None:
    profile = load_profile("sunspec/inverter_103")
    sim = DeviceSimulator(profile, unit_id=1)
    async with served(sim) as srv:
        assert await mbpoll_read(srv.port, 1, "holding", 40000, 4) == [0x5375, 0x6E53, 1, 66]
