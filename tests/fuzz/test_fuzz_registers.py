"""Hostile Modbus register blocks: every shipped profile's decoder over random register images, and
the real driver polling a simulator that answers with garbage. A value is either a finite number
(or a mapped code / string) or None with a reason; nothing raises."""

from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles import load_profile
from powerctl.profiles.model import Profile, list_profiles
from powerctl.profiles.values import RegisterImage, decode_points, decode_signals
from powerctl.sim.devices import DeviceSimulator, Fault
from tests.devices.conftest import make_driver, served
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.fuzz

PROFILES = {k: load_profile(k) for k in list_profiles()}
MODBUS_PROFILES = [k for k, p in PROFILES.items() if p.protocol == "modbus"]

# the edges and the "not implemented" markers of every type
SPECIAL = [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0xFFFE, 0x7FC0, 0x7F80, 0xFF80]


@st.composite
def register_images(draw: st.DrawFn, profile: Profile) -> RegisterImage:
    """Random words at every address the profile reads, some edge values planted, some addresses
    missing (not read). One binary draw for the words keeps this fast."""
    addrs = [(p.table, a) for p in profile.points for a in range(p.address, p.end)]
    n = len(addrs)
    raw = draw(st.binary(min_size=2 * n, max_size=2 * n))
    words = [int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(n)]
    for i, w in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(SPECIAL)), max_size=12)):
        words[i] = w
    holes = set(draw(st.lists(st.integers(0, n - 1), max_size=4)))
    image: RegisterImage = {}
    for i, (table, a) in enumerate(addrs):
        if i not in holes:
            image.setdefault(table, {})[a] = words[i] & (1 if table == "coil" else 0xFFFF)
    return image


def check_signals(profile: Profile, image: RegisterImage) -> None:
    points = decode_points(profile, image)
    for name, r in points.items():
        assert r.value is not None or r.reason, f"{profile.key}:{name}: None without a reason"
        if isinstance(r.value, float):
            assert math.isfinite(r.value), f"{profile.key}:{name}: {r.value}"
    for sig, r in decode_signals(profile, image).items():
        if r.value is None:
            assert r.reason, f"{profile.key}:{sig}: None without a reason"
            continue
        assert isinstance(r.value, float | int), f"{profile.key}:{sig}: {r.value!r}"
        assert math.isfinite(r.value), f"{profile.key}:{sig}: {r.value}"
        point = next(p for p in profile.points if p.signal == sig)
        if point.value_map is not None:
            assert r.value in point.value_map.values(), f"{profile.key}:{sig}: {r.value} not a mapped code"


@pytest.mark.parametrize("key", MODBUS_PROFILES)
@fuzz(200)
@given(data=st.data())
def test_decode_signals_on_random_register_images(key: str, data: st.DataObject) -> None:
    profile = PROFILES[key]
    check_signals(profile, data.draw(register_images(profile)))


@pytest.mark.parametrize("key", MODBUS_PROFILES)
async def test_driver_polling_a_garbage_device_yields_only_trusted_values(key: str) -> None:
    """The real driver over loopback against a simulator whose every read returns random words."""
    seed = random.randrange(1 << 30)
    print(f"garbage seed {seed} (random.seed it in sim.devices to replay)")
    random.seed(seed)
    profile = load_profile(key)
    sim = DeviceSimulator(profile, unit_id=1)
    image = ProcessImage()
    async with served(sim) as srv:
        dev = make_driver("d", profile, srv.port, 1, image, timeout_s=0.5)
        try:
            await dev.poll_once()  # a clean first poll (SunSpec discovery needs its marker)
            sim.fault = Fault.GARBAGE
            for _ in range(8):
                await dev.poll_once()  # must not raise, whatever comes back
                now = time.time()
                for d, s, sig in image.items(now):
                    assert d == "d"
                    if sig.quality is Quality.GOOD:
                        assert isinstance(sig.value, float | int) and math.isfinite(sig.value), (s, sig)
                    else:
                        assert sig.quality is not Quality.GOOD
        finally:
            dev.close()
