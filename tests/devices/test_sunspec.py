"""SunSpec: images built from the official model JSON, served on loopback, discovered and decoded.

Images come from ``powerctl.sunspec.encode`` (driven by the JSON, not by any profile). Each test
reads the marker back at the intended address first (pymodbus datastore off-by-one trap).
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from powerctl.sim.devices import RegisterDevice
from powerctl.sunspec.decode import decode_model
from powerctl.sunspec.encode import ImageSpec, build_image, encode_model, model_addresses
from powerctl.sunspec.models import load_model, shipped_model_ids
from powerctl.sunspec.scan import ScanError, ascan, format_scan, parse_target
from tests.devices.conftest import served

# chosen engineering values per model (scale factors as exponents), incl. negative and scaled ones
CHOSEN: dict[int, dict[str, float | int | str]] = {
    1: {"Mn": "Acme Power", "Md": "X-1000", "Vr": "1.2.3", "SN": "SN0042", "DA": 7},
    101: {"A_SF": -2, "A": 12.34, "W_SF": 0, "W": -1500, "Hz_SF": -2, "Hz": 49.98, "WH_SF": 1, "WH": 987650, "St": 5},
    103: {"A_SF": -1, "A": 45.6, "AphA": 15.2, "AphB": 15.2, "AphC": 15.2, "V_SF": -1, "PhVphA": 230.1,
          "PhVphB": 229.9, "PhVphC": 231.0, "W_SF": 1, "W": 10230, "Hz_SF": -2, "Hz": 50.02, "WH_SF": 0,
          "WH": 123456, "Tmp_SF": -1, "TmpCab": -5.5, "St": 4, "Evt1": 0b101},
    124: {"WChaMax_SF": 1, "WChaMax": 5000, "WChaDisChaGra_SF": 0, "StorCtl_Mod": 2, "ChaState_SF": -1,
          "ChaState": 67.5, "InOutWRte_SF": -1, "OutWRte": -25.5, "InWRte": 80.0, "ChaSt": 4, "ChaGriSet": 1},
    701: {"ACType": 2, "InvSt": 3, "ConnSt": 1, "W_SF": 0, "W": -2500, "Hz_SF": -3, "Hz": 50.001,
          "TotWh_SF": 0, "TotWhInj": 12_345_678_901, "Tmp_SF": 0, "TmpCab": 41, "MnAlrmInfo": "all good"},
    702: {"W_SF": 2, "WMaxRtg": 100000, "WMax": 80000, "WChaRteMaxRtg": 50000, "WDisChaRteMaxRtg": 50000,
          "VA_SF": 0, "VAMaxRtg": 30000},
    704: {"WMaxLimPctEna": 1, "WMaxLimPct_SF": -1, "WMaxLimPct": 55.5, "WSetEna": 0, "WSet_SF": 0,
          "WSet": -12000, "WMaxLimPctRvrtTms": 600},
    802: {"AHRtg_SF": 0, "AHRtg": 200, "WHRtg_SF": 1, "WHRtg": 10240, "WChaDisChaMax_SF": 0, "WChaRteMax": 5000,
          "WDisChaRteMax": 6000, "SoC_SF": -1, "SoC": 55.5, "W_SF": 0, "W": -3200, "V_SF": -1, "V": 51.2,
          "A_SF": -1, "A": -62.5, "State": 3, "LocRemCtl": 0, "Typ": 4, "NCyc": 123456},
    # meters 201-204: MW-class values (W_SF 2), acc32 energy above 2^31
    201: {"A_SF": -1, "A": 512.3, "V_SF": -1, "PhVphA": 231.2, "Hz_SF": -2, "Hz": 49.98, "W_SF": 2, "W": 118_300,
          "TotWh_SF": 0, "TotWhImp": 3_000_000_001},
    202: {"V_SF": -1, "PhVphA": 120.1, "PhVphB": 119.7, "W_SF": 1, "W": -45_670, "TotWh_SF": 1, "TotWhExp": 12_345_670},
    203: {"A_SF": 0, "AphC": 1830, "V_SF": -1, "PhVphC": 229.4, "W_SF": 2, "W": 1_250_000, "Hz_SF": -2, "Hz": 60.01},
    204: {"V_SF": -1, "PhVphAB": 415.2, "PhVphCA": 414.8, "W_SF": 2, "W": -3_100_000, "TotWh_SF": 0, "TotWhImp": 4_000_000_000},
    713: {"WH_SF": 3, "WHRtg": 5_000_000, "WHAvail": 2_150_000, "Pct_SF": -1, "SoC": 43.0, "SoH": 98.5, "Sta": 0},
    714: {"NPrt": 0, "DCA_SF": -1, "DCA": -1520.5, "DCW_SF": 2, "DCW": -1_200_000, "DCWH_SF": 0, "DCWhInj": 9_876_543_210},
}


def test_every_shipped_model_has_chosen_values() -> None:
    assert sorted(CHOSEN) == shipped_model_ids() == [1, 101, 103, 124, 201, 202, 203, 204, 701, 702, 704, 713, 714, 802]


@pytest.mark.parametrize("model_id", sorted(CHOSEN))
def test_encode_decode_model_offline(model_id: int) -> None:
    md = load_model(model_id)
    assert md is not None
    regs = encode_model(md, CHOSEN[model_id])
    assert regs[0] == model_id and regs[1] == md.length == len(regs) - 2
    decoded = decode_model(md, regs)
    for name, want in CHOSEN[model_id].items():
        assert decoded[name].value == pytest.approx(want), name


@pytest.mark.parametrize("base", [40000, 0, 50000])
@pytest.mark.parametrize("model_id", sorted(m for m in CHOSEN if m != 1))
async def test_scan_finds_and_decodes_each_model(model_id: int, base: int) -> None:
    specs = [ImageSpec(1, CHOSEN[1]), ImageSpec(model_id, CHOSEN[model_id])]
    dev = RegisterDevice({"holding": build_image(specs, base=base)}, unit_id=3)
    async with served(dev) as srv:
        result = await ascan("127.0.0.1", srv.port, 3, 1.0)
    assert result.base == base
    assert [m.id for m in result.models] == [1, model_id]
    addrs = model_addresses(specs, base)
    assert [m.address for m in result.models] == [addrs[1], addrs[model_id]]
    assert result.end_found
    for mid in (1, model_id):
        for name, want in CHOSEN[mid].items():
            got = result.value(mid, name)
            assert got == pytest.approx(want), (mid, name, got, want)
    # points left unset decode as "not implemented", never as a number
    m = result.model(model_id)
    assert m is not None
    unset = [n for n, pv in m.points.items() if n not in CHOSEN[model_id] and pv.value is not None]
    allowed = {"ID", "L"} | {n for n, pv in m.points.items() if load_model(model_id).point(n).dtype.startswith("acc")}  # type: ignore[union-attr]
    assert set(unset) <= allowed, unset
    text = format_scan(result)
    assert f"model {model_id}" in text and f"marker 'SunS' at {base}" in text


async def test_edge_images_short_common_old_701_no_end_length_and_missing_sf() -> None:
    """SolarEdge-style L=65 common model, OpenEMS-style 701 with L=121, end model without L,
    a sunssf of 0x8000 (points that use it are not implemented), acc32 = 0."""
    v103 = dict(CHOSEN[103])
    specs = [
        ImageSpec(1, CHOSEN[1], length=65),
        ImageSpec(103, v103),
        ImageSpec(701, CHOSEN[701], length=121),
        ImageSpec(802, {**CHOSEN[802]}),
    ]
    image = build_image(specs, end_length=None)
    addrs = model_addresses(specs)
    assert addrs[103] == 40069  # one earlier than the L=66 layout
    # W_SF of 103 = 0x8000: W is not implemented; WH (acc32) = 0 stays 0 (cannot tell from "none")
    md103 = load_model(103)
    assert md103 is not None
    image[addrs[103] + md103.point("W_SF").offset] = 0x8000
    image[addrs[103] + md103.point("WH").offset] = 0
    image[addrs[103] + md103.point("WH").offset + 1] = 0
    dev = RegisterDevice({"holding": image}, unit_id=1)
    async with served(dev) as srv:
        result = await ascan("127.0.0.1", srv.port, 1, 1.0)
    assert [(m.id, m.length) for m in result.models] == [(1, 65), (103, 50), (701, 121), (802, 62)]
    assert result.end_found  # ID 0xFFFF read alone; the missing L is not required
    assert result.value(1, "SN") == "SN0042"
    assert result.model(1).length_mismatch  # type: ignore[union-attr]
    assert "DA" not in result.model(1).points or result.value(1, "DA") == 7  # type: ignore[union-attr]
    w = result.model(103).points["W"]  # type: ignore[union-attr]
    assert w.value is None and "W_SF" in w.reason
    assert result.value(103, "WH") == 0
    assert result.value(103, "Hz") == pytest.approx(50.02)
    # 701 with L = 121: points inside the reported length decode, points past it are absent
    m701 = result.model(701)
    assert m701 is not None and m701.length_mismatch
    assert result.value(701, "W") == -2500 and result.value(701, "InvSt") == 3
    assert "MnAlrmInfo" not in m701.points  # offset 123 + 32 > 121 + 2
    assert result.value(802, "SoC") == pytest.approx(55.5)
    assert result.value(802, "W") == -3200
    assert "definition 153" in format_scan(result)


async def test_no_sunspec_marker_is_a_clear_error() -> None:
    dev = RegisterDevice({"holding": {40000: 1, 40001: 2, 0: 0, 1: 0}}, unit_id=1)
    async with served(dev) as srv:
        with pytest.raises(ScanError, match="no SunSpec marker"):
            await ascan("127.0.0.1", srv.port, 1, 0.5)


def test_parse_target() -> None:
    assert parse_target("10.0.0.5") == ("10.0.0.5", 502)
    assert parse_target("inverter.local:1502") == ("inverter.local", 1502)
    with pytest.raises(ValueError):
        parse_target("host:99999")


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_scan_command_line() -> None:
    """``powerctl scan`` (and the module entry point) in a separate process against a served image."""
    specs = [ImageSpec(1, CHOSEN[1]), ImageSpec(103, CHOSEN[103]), ImageSpec(802, CHOSEN[802])]
    dev = RegisterDevice({"holding": build_image(specs)}, unit_id=5)
    async with served(dev) as srv:
        code, out, err = await _run(sys.executable, "-m", "powerctl.sunspec.scan", f"127.0.0.1:{srv.port}", "--unit", "5")
        assert code == 0, err
        assert "model 103" in out and "model 802" in out
        assert "10230 W" in out and "55.5 %WHRtg" in out and "Acme Power" in out
        code, out, err = await _run(sys.executable, "-m", "powerctl.cli", "scan", f"127.0.0.1:{srv.port}", "--unit", "5")
        assert code == 0, err
        assert "model 103" in out and "10230 W" in out
        code, _out, err = await _run(sys.executable, "-m", "powerctl.cli", "scan", f"127.0.0.1:{srv.port}", "--unit", "5", "--timeout", "0.3")
        assert code == 0, err
