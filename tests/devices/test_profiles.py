"""Profile library: schema + semantic validation, reference facts, address conversions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from powerctl.profiles import ProfileError, list_profiles, load_profile
from powerctl.profiles.codec import decode, encode, is_sentinel
from powerctl.profiles.model import PROFILE_ROOT, SCHEMA_PATH, parse_profile
from powerctl.sunspec.models import MODELS_DIR, load_model

ALL = list_profiles()
MODBUS_LIBRARY = {
    "sunspec/inverter_103", "sunspec/der_inverter", "sunspec/storage", "victron/gx_modbus", "sma/sunny_island",
    "huawei/sun2000_luna", "sungrow/sh_hybrid", "dse/gencomm", "comap/intelilite4",
    "huawei/sun2000_pv", "sungrow/sg_string", "fenecon/byd_container", "woodward/easygen_3000xt",
    "comap/intelisys_nt", "janitza/umg604",
}


def test_library_has_the_issue_profiles() -> None:
    assert MODBUS_LIBRARY <= set(ALL)


@pytest.mark.parametrize("key", ALL)
def test_every_profile_validates_against_the_schema(key: str) -> None:
    data = yaml.safe_load((PROFILE_ROOT / f"{key}.yaml").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(data)
    load_profile(key)  # and the semantic checks


@pytest.mark.parametrize("key", sorted(MODBUS_LIBRARY))
def test_profiles_say_where_facts_come_from(key: str) -> None:
    p = load_profile(key)
    assert p.sources, key
    flagged = [q.name for q in p.points if q.unsourced] + [s.name for s in p.setpoints if s.unsourced]
    if flagged:
        assert p.unsourced, (key, flagged)


def test_shipped_sunspec_models_match_the_official_schema_and_keep_attribution() -> None:
    schema = json.loads((MODELS_DIR / "schema.json").read_text())
    for mid in (1, 101, 103, 124, 201, 202, 203, 204, 701, 702, 704, 713, 714, 802):
        jsonschema.Draft7Validator(schema).validate(json.loads((MODELS_DIR / f"model_{mid}.json").read_text()))
    assert "Apache License" in (MODELS_DIR / "LICENSE").read_text()
    assert "7abdf8982d5364f8ae916deee18aac86c11be36d" in (MODELS_DIR / "PROVENANCE.txt").read_text()
    ids = (1, 101, 103, 124, 201, 202, 203, 204, 701, 702, 704, 713, 714, 802)
    assert {m: load_model(m).length for m in ids} == {  # type: ignore[union-attr]
        1: 66, 101: 50, 103: 50, 124: 24, 201: 105, 202: 105, 203: 105, 204: 105,
        701: 153, 702: 50, 704: 65, 713: 7, 714: 43, 802: 62,
    }


def test_sungrow_addresses_are_documented_register_minus_one() -> None:
    doc = {"RatedOutput": 5001, "TotalYield": 5004, "TotalDcPower": 5017, "BatteryPower": 5214, "MeterActivePower": 5601,
           "RunningState": 13000, "BatteryVoltage": 13020, "Soc": 13023, "Soh": 13024, "EmsMode": 13050,
           "ChargeCommand": 13051, "ForcedPower": 13052, "MaxSoc": 13058, "MinSoc": 13059,
           "MaxChargePower": 33047, "MaxDischargePower": 33048}
    p = load_profile("sungrow/sh_hybrid")
    assert {q.name: q.address + 1 for q in p.points} == doc
    assert all(q.words == "little" for q in p.points)
    sg = load_profile("sungrow/sg_string")  # the PV string inverter: same numbering
    assert {q.name: q.address + 1 for q in sg.points} == {
        "RatedOutput": 5001, "TotalYield": 5004, "ActivePower": 5031, "WorkState": 5038,
        "PowerLimitSwitch": 5007, "PowerLimitSetting": 5008}
    assert {s.name: s.address + 1 for s in sg.setpoints} == {"PowerLimitSwitch": 5007, "PowerLimitSetting": 5008}


def test_dse_addresses_are_page_times_256_plus_offset() -> None:
    p = load_profile("dse/gencomm")
    pages = {"ManufacturerCode": (3, 0), "ControlMode": (3, 4), "FuelLevel": (4, 3), "EngineSpeed": (4, 6),
             "EngineStatus": (5, 128), "TotalPower": (6, 0), "RunTime": (7, 6), "Starts": (7, 16)}
    for name, (page, off) in pages.items():
        assert p.point(name).address == page * 256 + off, name
    assert p.setpoint("start_cmd").address == 16 * 256 + 8


# facts from the sources each profile names: (address, table, type, words, scale, unit)
REFERENCE: dict[str, dict[str, tuple[int, str, str, str, float, str]]] = {
    "victron/gx_modbus": {"BatteryPower": (842, "holding", "int16", "big", 1, "W"),
                          "BatterySoc": (843, "holding", "uint16", "big", 1, "%"),
                          "AcPowerSetPointCoarse": (2703, "holding", "int16", "big", 100, "W"),
                          "MaxDischargePower": (2704, "holding", "int16", "big", 10, "W"),
                          "MinimumSocLimit": (2901, "holding", "uint16", "big", 0.1, "%")},
    "huawei/sun2000_luna": {"Soc": (37760, "holding", "uint16", "big", 0.1, "%"),
                            "StoragePower": (37765, "holding", "int32", "big", 1, "W"),
                            "MaxChargingPower": (47075, "holding", "uint32", "big", 1, "W")},
    "sma/sunny_island": {"GridMs_TotW": (30775, "input", "int32", "big", 1, "W"),
                         "Bat_ChaStt": (30845, "holding", "uint32", "big", 1, "%")},
    # OpenEMS EssFeneconBydContainerImpl.defineModbus2Protocol: 0x38A2 kW (SCALE_FACTOR_3 to W),
    # 0x38A6 0.1 kW (SCALE_FACTOR_2), 0x38A8 SoC %
    "fenecon/byd_container": {"AllowedDischargePower": (0x38A2, "holding", "int16", "big", 1, "kW"),
                              "ActivePower": (0x38A6, "holding", "int16", "big", 0.1, "kW"),
                              "Soc": (0x38A8, "holding", "uint16", "big", 1, "%")},
    # Woodward B37574 Protocol 5010: Modicon 450010 / 450011 / 450014 = PDU 50009 / 50010 / 50013
    "woodward/easygen_3000xt": {"GenFreq": (450010 - 400001, "holding", "uint16", "big", 0.01, "Hz"),
                                "GenP": (450011 - 400001, "holding", "int16", "big", 1, "W"),
                                "GenVL12": (450014 - 400001, "holding", "uint16", "big", 1, "V")},
    "comap/intelilite4": {"TotalPower": (1020, "holding", "int16", "big", 1, "kW"),
                          "RunHours": (1013, "holding", "uint32", "big", 0.1, "h"),
                          "Identification": (1307, "holding", "string", "big", 1, "")},
}


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_vendor_points_match_the_reference_tables(key: str) -> None:
    p = load_profile(key)
    for name, (addr, table, dtype, words, scale, unit) in REFERENCE[key].items():
        q = p.point(name)
        assert (q.address, q.table, q.dtype, q.words, q.scale, q.unit) == (addr, table, dtype, words, scale, unit), name


def test_comap_never_reads_holes() -> None:
    from powerctl.io.blocks import plan_blocks

    p = load_profile("comap/intelilite4")
    blocks = plan_blocks(p.points, p.polling.max_registers, p.polling.max_hole)
    covered = {a for b in blocks for a in range(b.address, b.end)}
    defined = {a for q in p.points for a in range(q.address, q.end)}
    assert covered == defined
    ident = p.point("Identification")
    assert any(b.address <= ident.address and ident.end <= b.end for b in blocks)


def _bad(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError) as info:
        parse_profile(yaml.safe_load(path.read_text()), "test/bad", path)
    assert str(path) in str(info.value)
    return str(info.value)


BASE: dict[str, Any] = {"vendor": "T", "model": "M", "nature": "battery"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"points": [{"name": "P", "address": 1, "type": "int17"}]}, "points[0].type"),
        ({"points": [{"name": "S", "address": 1, "type": "string"}]}, "length"),
        ({"points": [{"name": "P", "address": 1, "type": "int16", "unit": "W", "signal": "soc_pct"}]}, "does not convert"),
        ({"points": [{"name": "P", "address": 1, "type": "int16", "signal": "volts"}]}, "no signal 'volts'"),
        ({"points": [{"name": "A", "address": 1, "type": "int32"}, {"name": "B", "address": 2, "type": "int16"}]}, "overlap"),
        ({"points": [{"name": "P", "address": 1, "type": "int16", "scale_sf": "X"}]}, "not a sunssf point"),
        ({"points": [{"name": "P", "address": 1, "type": "uint16", "sentinels": [70000]}]}, "does not fit"),
        ({"setpoints": [{"name": "S", "address": 1, "type": "int16", "range": [5, 1]}]}, "min 5 > max 1"),
        ({"setpoints": [{"name": "S", "address": 1, "type": "int32", "range": [0, 1], "write": "fc6"}]}, "fc6 writes one register"),
        ({"setpoints": [{"name": "S", "address": 1, "type": "int16", "unit": "W", "range": [0, 40000]}]}, "does not fit in int16"),
        ({"setpoints": [{"name": "S", "table": "coil", "address": 1, "type": "uint16", "range": [0, 1], "write": "fc16"}]}, "coils take fc5"),
        ({"setpoints": [{"name": "S", "address": 1, "type": "int16", "range": [0, 1], "readback": "Nope"}]}, "readback 'Nope'"),
        ({"points": [{"name": "P", "address": 1, "type": "int16", "unsourced": True}]}, "say why"),
        ({"defaults": {"Ghost": 1}}, "'Ghost' is not a point"),
        ({"sunspec_models": [1, 103], "points": [{"name": "SunS", "address": 40000, "type": "uint32"},
                                                  {"name": "St", "address": 40109, "type": "enum16", "sunspec": "103.St"}]},
         "sits at 40108"),
        ({"sunspec_models": [1, 103], "points": [{"name": "SunS", "address": 40000, "type": "uint32"},
                                                  {"name": "W", "address": 40084, "type": "int16", "sunspec": "103.W"}]},
         "scales by 103.W_SF"),
    ],
)
def test_bad_profiles_are_refused_with_file_field_and_problem(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    assert message in _bad(tmp_path, {**BASE, **doc})


INT_TYPES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
             "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


@given(st.sampled_from(sorted(INT_TYPES)), st.sampled_from(["big", "little"]), st.data())
def test_codec_round_trips_every_integer_in_both_word_orders(dtype: str, words: str, data: st.DataObject) -> None:
    lo, hi = INT_TYPES[dtype]
    v = data.draw(st.integers(lo, hi))
    regs = encode(v, dtype, words)  # type: ignore[arg-type]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, dtype, words) == v  # type: ignore[arg-type]


def test_word_order_with_halves_that_differ() -> None:
    assert encode(0x00010002, "uint32", "big") == [0x0001, 0x0002]
    assert encode(0x00010002, "uint32", "little") == [0x0002, 0x0001]
    assert is_sentinel([0x0000, 0x8000], "int32", frozenset({0x80000000}), "little")
