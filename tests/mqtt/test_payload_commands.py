"""Pure parts of the MQTT package: payload decoding, command leases, device bindings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from powerctl.config import parse_config
from powerctl.mqtt import CommandLimits, CommandState, build_sources, decode
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles import ProfileError

# --- payloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "payload", "path", "value"),
    [
        ("plain", b" 230.5\n", None, 230.5),
        ("plain", b"ON", None, 1.0),
        ("json", b'{"a": {"b": [1, {"c": -4.5}]}}', "a.b.1.c", -4.5),
        ("venus", b'{"value": 57.25}', None, 57.25),
        ("venus", b'{"value": true}', None, 1.0),
        ("tasmota", b'{"Time":"2024-01-01T00:00:00","ENERGY":{"Total":12.5,"Power":1830,"Voltage":231}}', None, 1830.0),
        ("tasmota", b'{"ENERGY":{"Total":12.5,"Power":1830}}', "ENERGY.Total", 12.5),
        ("shelly", b'{"id":0,"current":2.1,"voltage":230.1,"act_power":-483.2,"freq":50}', None, -483.2),
    ],
)
def test_decode_good(fmt: str, payload: bytes, path: str | None, value: float) -> None:
    d = decode(fmt, payload, path)
    assert d.value == value and d.problem == "" and not d.gone


@pytest.mark.parametrize(
    ("fmt", "payload", "path", "problem"),
    [
        ("plain", b"abc", None, "not a number"),
        ("plain", b"nan", None, "not finite"),
        ("plain", b"\xff\xfe", None, "not UTF-8"),
        ("json", b"{broken", "a", "not JSON"),
        ("json", b'{"a": 1}', "b", "no 'b'"),
        ("json", b'{"a": [1]}', "a.3", "no '3'"),
        ("json", b'{"a": "x"}', "a", "not a number"),
        ("json", b"[" * 5000 + b"]" * 5000, "", "not"),
        ("venus", b'{"value": null}', None, "invalid (null)"),
        ("venus", b'{"val": 1}', None, 'without "value"'),
        ("venus", b'{"value": 1e999}', None, "not finite"),
        ("tasmota", b'{"ENERGY": {}}', None, "no 'Power'"),
    ],
)
def test_decode_bad_never_gives_a_number(fmt: str, payload: bytes, path: str | None, problem: str) -> None:
    d = decode(fmt, payload, path)
    assert d.value is None and problem in d.problem


def test_venus_empty_payload_means_device_gone() -> None:
    d = decode("venus", b"")
    assert d.value is None and d.gone


# --- command leases ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


LIMITS = CommandLimits(gpu_budget_min_kw=10.0, gpu_budget_max_kw=100.0, reserve_min_pct=10.0, reserve_max_pct=95.0)


def test_a_command_is_a_lease_that_expires_unless_renewed() -> None:
    clock = Clock()
    cs = CommandState(LIMITS, lease_s=60, clock=clock)
    assert cs.mode() == "auto"
    r = cs.apply("mode", b"hold")
    assert r.accepted and r.reason == "set" and r.expires_at_s == 1060.0
    clock.t = 1050.0
    assert cs.mode() == "hold"
    assert cs.apply("mode", b'{"value": "hold"}').reason == "renewed"
    clock.t = 1109.0
    assert cs.mode() == "hold"  # renewed at 1050 -> runs to 1110
    clock.t = 1110.0
    assert cs.mode() == "auto" and cs.active() == {}


def test_ceiling_and_reserve_within_limits_and_cleared() -> None:
    clock = Clock()
    cs = CommandState(LIMITS, lease_s=60, clock=clock)
    assert cs.apply("gpu_budget_max_kw", b"42.5").accepted
    assert cs.apply("battery_reserve_pct", b'{"value": 30, "lease_s": 5}').accepted
    assert (cs.gpu_budget_ceiling_kw(), cs.battery_reserve_pct()) == (42.5, 30.0)
    clock.t += 5
    assert cs.battery_reserve_pct() is None and cs.gpu_budget_ceiling_kw() == 42.5
    assert cs.apply("gpu_budget_max_kw", b"clear").reason == "cleared"
    assert cs.gpu_budget_ceiling_kw() is None
    snap = cs.snapshot()
    assert json.loads(json.dumps(snap)) == {"mode": None, "gpu_budget_max_kw": None, "battery_reserve_pct": None}


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("gpu_budget_max_kw", b"100.5", "gpu_budget_max_kw 100.5 out of range [10, 100] kW"),
        ("gpu_budget_max_kw", b"5", "out of range [10, 100] kW"),
        ("gpu_budget_max_kw", b"NaN", "must be a finite number"),
        ("gpu_budget_max_kw", b"fast", "must be a finite number"),
        ("battery_reserve_pct", b"99", "battery_reserve_pct 99 out of range [10, 95] %"),
        ("battery_reserve_pct", b"true", "must be a finite number"),
        ("mode", b"turbo", "mode 'turbo' is not one of auto, hold, manual"),
        ("mode", b'{"value": "hold", "lease_s": 600}', "lease_s 600 out of range (0, 60] s"),
        ("mode", b'{"value": "hold", "sudo": 1}', "unknown key"),
        ("mode", b"{not json", "not JSON"),
        ("mode", b"\xff", "not UTF-8"),
        ("reboot", b"1", "unknown command"),
    ],
)
def test_out_of_range_or_malformed_commands_are_refused_with_a_reason(name: str, payload: bytes, reason: str) -> None:
    cs = CommandState(LIMITS, lease_s=60, clock=Clock())
    r = cs.apply(name, payload)
    assert not r.accepted
    assert reason in r.reason
    assert cs.active() == {}


def test_limits_come_from_the_site() -> None:
    cfg = site_config()
    lim = CommandLimits.from_site(cfg)
    assert (lim.gpu_budget_min_kw, lim.gpu_budget_max_kw) == (8 * 100 / 1000, 8 * 400 / 1000)
    assert (lim.reserve_min_pct, lim.reserve_max_pct) == (15.0, 90.0)


def test_no_battery_means_reserve_commands_are_refused() -> None:
    cs = CommandState(CommandLimits(1, 2, None, None), clock=Clock())
    assert "no battery" in cs.apply("battery_reserve_pct", b"50").reason


# --- device bindings --------------------------------------------------------------------------


def site_config(**mqtt: Any) -> Any:
    return parse_config({
        "site": {"id": "alpha", "module": "m1"},
        "devices": [
            {"name": "gx", "nature": "battery", "profile": "victron/venus_mqtt",
             "transport": {"kind": "mqtt", "portal_id": "c0619ab1c2d3"},
             "limits": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 50,
                        "soc_min_pct": 15, "soc_max_pct": 90}},
            {"name": "plug1", "nature": "meter", "profile": "tasmota/energy_mqtt",
             "transport": {"kind": "mqtt"}, "max_age_s": 30},
        ],
        "gpu": {"classes": [{"name": "train", "gpus": 8}]},
        "mqtt": mqtt,
    })


def test_bindings_from_profiles_and_site() -> None:
    src = build_sources(site_config())
    assert src.topics() == [
        "N/c0619ab1c2d3/system/0/Dc/Battery/Power",
        "N/c0619ab1c2d3/system/0/Dc/Battery/Soc",
        "tele/plug1/LWT",
        "tele/plug1/SENSOR",
    ]
    assert [(k.topic, k.period_s, k.first_payload) for k in src.keepalives] == [("R/c0619ab1c2d3/keepalive", 30.0, b"")]
    img = ProcessImage()
    from powerctl.mqtt import declare_signals

    declare_signals(src, site_config(), img)
    src.handle("N/c0619ab1c2d3/system/0/Dc/Battery/Power", b'{"value": 2500}', img, 10.0)
    src.handle("tele/plug1/SENSOR", b'{"ENERGY": {"Power": 1500, "Total": 77.5}}', img, 10.0)
    assert img.value("gx", "p_kw", 10.0) == -2.5  # Victron + = charging -> ours - = charge
    assert img.value("plug1", "p_kw", 10.0) == 1.5
    assert img.value("plug1", "e_import_kwh", 10.0) == 77.5
    src.handle("N/c0619ab1c2d3/system/0/Dc/Battery/Soc", b'{"value": 101}', img, 11.0)
    assert img.get("gx", "soc_pct", 11.0).quality is Quality.INVALID
    src.handle("tele/plug1/LWT", b"Offline", img, 12.0)
    assert img.get("plug1", "p_kw", 12.0).quality is Quality.STALE


def test_venus_device_needs_a_portal_id() -> None:
    cfg = site_config()
    bad = cfg.model_copy(update={"devices": [cfg.devices[0].model_copy(
        update={"transport": cfg.devices[0].transport.model_copy(update={"portal_id": None})})]})
    with pytest.raises(ProfileError, match=r"devices\[0\] \(gx\).*needs transport.portal_id"):
        build_sources(bad)


def test_topic_override_must_name_a_profile_signal() -> None:
    cfg = site_config()
    dev = cfg.devices[1]
    bad = cfg.model_copy(update={"devices": [dev.model_copy(
        update={"transport": dev.transport.model_copy(update={"topics": {"soc_pct": "x/y"}})})]})
    with pytest.raises(ProfileError, match=r"devices\[0\] \(plug1\): transport.topics: \['soc_pct'\] not in"):
        build_sources(bad)
