"""Every number in a site config has a physical upper bound (issue 12: `max_discharge_kw = 1e308`,
`gpus = 1e8` and `max_age_s = 1e308` were accepted). A number past its bound is a ConfigError that
names the file and the field."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from powerctl.config import ConfigError, parse_config

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml"
DATA = tomllib.loads(DEMO.read_text())


def device(data: dict[str, Any], nature: str) -> dict[str, Any]:
    return next(d for d in data["devices"] if d["nature"] == nature)


def set_at(data: dict[str, Any], where: str, key: str, value: object) -> None:
    """where: 'gpu', 'control', 'telemetry', 'site', 'class0', or a device nature ('battery', 'battery.limits')."""
    if where == "class0":
        data["gpu"]["classes"][0][key] = value
    elif where in ("gpu", "control", "telemetry", "site"):
        data.setdefault(where, {})[key] = value
    else:
        nature, _, sub = where.partition(".")
        target = device(data, nature)
        (target.setdefault(sub, {}) if sub else target)[key] = value


CASES = [
    ("battery.limits", "max_discharge_kw", 1e308),
    ("battery.limits", "max_charge_kw", 1e6),
    ("battery.limits", "capacity_kwh", 1e12),
    ("class0", "gpus", 100_000_000),
    ("battery", "max_age_s", 1e308),
    ("battery", "poll_period_s", 1e9),
    ("pv.limits", "kwp", 1e9),
    ("genset.limits", "rating_kw", 1e7),
    ("genset.limits", "min_up_s", 1e12),
    ("gpu", "max_w", 1e6),
    ("gpu", "safe_cap_w", 1e300),
    ("gpu", "ramp_up_kw_per_s", 1e200),
    ("gpu", "socket_timeout_s", 1e9),
    ("control", "supply_margin_kw", 1e9),
    ("site", "altitude_m", 1e9),
]


@pytest.mark.parametrize(("where", "key", "value"), CASES, ids=[f"{w}.{k}" for w, k, _ in CASES])
def test_a_number_past_its_physical_bound_names_the_field(where: str, key: str, value: object) -> None:
    data = copy.deepcopy(DATA)
    try:
        set_at(data, where, key, value)
    except StopIteration:
        pytest.fail(f"the demo site has no {where} device: this case needs one")
    with pytest.raises(ConfigError) as info:
        parse_config(data, "site.toml")
    text = str(info.value)
    assert "site.toml" in text and key in text, text
    assert "Traceback" not in text


def test_the_demo_site_is_within_every_bound() -> None:
    parse_config(copy.deepcopy(DATA), "demo-site.toml")
