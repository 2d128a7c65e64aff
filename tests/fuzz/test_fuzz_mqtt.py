"""Hostile MQTT: device payloads in every format, operator command messages, and the link's message
handler (oversized and malformed payloads dropped and counted). Nothing raises; a value that comes
through is finite; a command that is accepted lies within the site's limits."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from powerctl.config import Mqtt, parse_config
from powerctl.mqtt import COMMANDS, CommandLimits, CommandState, MqttLink, decode
from powerctl.mqtt.commands import CommandError, parse_command_payload
from powerctl.mqtt.payload import FORMATS
from powerctl.mqtt.topics import to_json
from powerctl.process_image import ProcessImage, Quality
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.fuzz

# JSON documents of any shape, with the numbers that break naive code: huge ints, floats at the
# edge, NaN/inf spelled the way Python's json accepts them.
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
JSON_DOC = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["value", "ENERGY", "Power", "act_power", "a", "b", "0", "lease_s", "id"]) | st.text(max_size=8),
        kids, max_size=4),
    max_leaves=12,
)


def as_payload(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # allow_nan: emits NaN/Infinity literals, which json.loads takes


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON_DOC.map(as_payload),
    st.text(max_size=60).map(str.encode),
    st.integers(0, 6000).map(lambda n: b'{"value": 1' + b"0" * n + b"}"),
    st.integers(0, 6000).map(lambda n: b"1" + b"0" * n),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
)


@fuzz(300)
@given(fmt=st.sampled_from([*FORMATS, "bogus"]), payload=PAYLOADS,
       path=st.none() | st.sampled_from(["value", "a.b", "a.0", "ENERGY.Power", "0", "-1", ""]))
@example(fmt="venus", payload=b'{"value": 1' + b"0" * 400 + b"}", path=None)
@example(fmt="json", payload=b'{"value": 1' + b"0" * 5000 + b"}", path="value")
def test_decode_gives_a_finite_number_or_a_reason(fmt: str, payload: bytes, path: str | None) -> None:
    d = decode(fmt, payload, path)
    if d.value is None:
        assert d.problem
    else:
        assert isinstance(d.value, float) and math.isfinite(d.value) and d.problem == ""


LIMITS = CommandLimits(gpu_budget_min_kw=10.0, gpu_budget_max_kw=100.0, reserve_min_pct=10.0, reserve_max_pct=95.0)

COMMAND_PAYLOADS = st.one_of(
    PAYLOADS,
    st.fixed_dictionaries({"value": JSON_LEAF}, optional={"lease_s": JSON_LEAF, "id": JSON_LEAF}).map(as_payload),
    st.sampled_from([b"hold", b"auto", b"manual", b"clear", b"", b"null", b"42", b"NaN", b"-Infinity"]),
)


@fuzz(300)
@given(name=st.sampled_from([*COMMANDS, "reboot", ""]), payload=COMMAND_PAYLOADS)
@example(name="gpu_budget_max_kw", payload=b"1" + b"0" * 400)
@example(name="gpu_budget_max_kw", payload=b'{"value": 1' + b"0" * 5000 + b"}")
@example(name="mode", payload=b'{"value": "hold", "lease_s": 1' + b"0" * 400 + b"}")
def test_command_messages_are_accepted_within_limits_or_refused_with_a_reason(name: str, payload: bytes) -> None:
    try:
        parse_command_payload(payload)
    except CommandError as exc:
        assert str(exc)
    cs = CommandState(LIMITS, lease_s=60.0, clock=lambda: 1000.0)
    r = cs.apply(name, payload)
    assert r.reason
    json.loads(to_json(r.as_dict()))  # the result is published back: it must make valid JSON
    if not r.accepted or r.value is None:
        return
    assert r.expires_at_s is not None and 1000.0 < r.expires_at_s <= 1060.0
    if name == "mode":
        assert r.value in ("auto", "hold", "manual")
    elif name == "gpu_budget_max_kw":
        assert 10.0 <= float(r.value) <= 100.0
    else:
        assert 10.0 <= float(r.value) <= 95.0


def site() -> Any:
    return parse_config({
        "site": {"id": "alpha", "module": "m1"},
        "devices": [
            {"name": "gx", "nature": "battery", "profile": "victron/venus_mqtt",
             "transport": {"kind": "mqtt", "portal_id": "c0619ab1c2d3"},
             "limits": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 50}},
            {"name": "plug1", "nature": "meter", "profile": "tasmota/energy_mqtt",
             "transport": {"kind": "mqtt"}, "max_age_s": 30},
        ],
        "gpu": {"classes": [{"name": "train", "gpus": 8}]},
        "mqtt": {"max_payload_bytes": 256},
    })


SITE = site()
TOPICS = [
    "N/c0619ab1c2d3/system/0/Dc/Battery/Soc", "N/c0619ab1c2d3/system/0/Dc/Battery/Power",
    "tele/plug1/SENSOR", "tele/plug1/LWT", "powerctl/alpha/m1/commands/mode",
    "powerctl/alpha/m1/commands/gpu_budget_max_kw", "powerctl/alpha/m1/commands/battery_reserve_pct",
    "powerctl/alpha/m1/commands/reboot", "somewhere/else",
]


@fuzz(200)
@given(messages=st.lists(st.tuples(st.sampled_from(TOPICS), PAYLOADS | st.binary(min_size=257, max_size=2000)),
                         min_size=1, max_size=8))
def test_link_drops_and_counts_bad_messages_and_never_raises(messages: list[tuple[str, bytes]]) -> None:
    """The link's handler, fed directly (no broker: this is about what it does with the bytes)."""
    assert SITE.mqtt is not None
    image = ProcessImage()
    cs = CommandState(CommandLimits.from_site(SITE), lease_s=60.0)
    link = MqttLink(Mqtt(max_payload_bytes=256), SITE, image, cs, time.time)
    for topic, payload in messages:
        link._on_message(topic, payload)
    st_ = link.stats()
    oversize = sum(len(p) > 256 for _, p in messages)
    assert st_["received"] == len(messages)
    assert st_["oversize"] == oversize
    assert st_["out_queue"] <= 1000
    for _d, _s, sig in image.items(time.time()):
        if sig.quality is Quality.GOOD:
            assert sig.value is not None and math.isfinite(sig.value)
    soc = image.get("gx", "soc_pct", time.time())
    assert soc.quality is not Quality.GOOD or 0.0 <= soc.value <= 100.0  # type: ignore[operator]
