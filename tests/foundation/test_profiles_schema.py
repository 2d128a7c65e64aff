"""Every shipped profile validates; bad profiles name the file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from powerctl.profiles import ProfileError, list_profiles, load_profile
from powerctl.profiles.model import parse_profile

GOOD = {
    "vendor": "Test",
    "model": "T1",
    "nature": "battery",
    "points": [{"name": "SoC", "address": 10, "type": "uint16", "unit": "%", "signal": "soc_pct"}],
}


def test_all_shipped_profiles_load() -> None:
    keys = list_profiles()
    assert {"sunspec/inverter_103", "sma/sunny_island", "dse/gencomm"} <= set(keys)
    for key in keys:
        prof = load_profile(key)
        assert prof.points or prof.mqtt, key


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(nature="windmill"), "nature: 'windmill' is not one of"),
        (lambda d: d["points"][0].update(type="int17"), "points[0].type: 'int17' is not one of"),
        (lambda d: d["points"][0].update(address=70000), "points[0].address: 70000 is greater than the maximum"),
        (lambda d: d["points"][0].update(signal="volts"), "has no signal 'volts'"),
        (lambda d: d["points"][0].update(unit="kWh"), "does not convert to the signal's unit '%'"),
        (lambda d: d.update(colour="red"), "Additional properties are not allowed ('colour'"),
        (lambda d: d["points"].append({"name": "X", "address": 10, "type": "uint32"}), "overlap"),
        (lambda d: d["points"][0].update(scale_sf="SF"), "scale_sf 'SF' is not a sunssf point"),
        (lambda d: d["points"].append({"name": "S", "address": 20, "type": "string"}), "'length' is a required property"),
    ],
)
def test_bad_profiles(mutate, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    with pytest.raises(ProfileError) as exc:
        parse_profile(data, "test/t1", tmp_path / "t1.yaml")
    assert message in str(exc.value)
    assert "t1.yaml" in str(exc.value)


def test_setpoint_must_be_writable_signal(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["setpoints"] = [{"name": "W", "address": 50, "type": "int16", "signal": "soc_pct", "range": [0, 100]}]
    with pytest.raises(ProfileError, match="signal 'soc_pct' is not writable"):
        parse_profile(data, "test/t1", tmp_path / "t1.yaml")


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("nobody/nothing")
    with pytest.raises(ProfileError, match="must be '<vendor>/<model>'"):
        load_profile("../etc/passwd")
