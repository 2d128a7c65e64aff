"""Hostile cap-setter requests: any bytes give a refusal with a reason or a request that is carried
out within the cap-setter's own limits (the handler, fed directly; the socket is tested in
tests/security/test_capsetter.py)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from powerctl.capsetter import MAX_REQUEST_BYTES, CapSetter
from powerctl.config import parse_config
from powerctl.gpu.simulated import SimulatedGpus
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.fuzz

DEMO = tomllib.loads((Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml").read_text())
CFG = parse_config(DEMO)  # min_w 200, max_w 700, 128 GPUs

NUMBERS = st.one_of(st.integers(), st.floats(), st.integers(10**300, 10**400), st.sampled_from([200, 700, 450.5, -1, 0]))
REQUESTS = st.one_of(
    st.binary(max_size=MAX_REQUEST_BYTES + 50),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["set", "list", "power", "energy", "limits", "SET", ""]) | st.text(max_size=5)},
        optional={"gpu": NUMBERS | st.booleans() | st.text(max_size=3), "w": NUMBERS | st.none() | st.text(max_size=3),
                  "extra": st.integers()},
    ).map(lambda d: json.dumps(d).encode()),
)


@fuzz(300)
@given(line=REQUESTS)
@example(line=b'{"op":"set","gpu":0,"w":NaN}')
@example(line=b'{"op":"set","gpu":0,"w":1' + b"0" * 400 + b"}")
def test_any_request_is_refused_or_kept_within_limits(line: bytes) -> None:
    gpus = SimulatedGpus(CFG.gpu.count, 100.0, 1000.0)  # a device range wider than the config's
    setter = CapSetter(CFG, gpus, config_path="demo.toml")
    before = [gpus.read_limits_w(i)[0] for i in range(3)]
    reply = asyncio.run(setter.answer(line))
    json.dumps(reply, allow_nan=False)  # every reply is valid JSON
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]
        assert [gpus.read_limits_w(i)[0] for i in range(3)] == before
    for i in range(CFG.gpu.count):
        assert 200.0 <= gpus.read_limits_w(i)[0] <= 700.0 or gpus.read_limits_w(i)[0] == 1000.0  # untouched default
    if reply["ok"] and "readback_w" in reply:  # a set that reached the driver
        assert 200.0 <= reply["readback_w"] <= 700.0
