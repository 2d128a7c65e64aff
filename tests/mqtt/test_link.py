"""MqttLink against a real Mosquitto on loopback (plain, password and TLS listeners)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest

from powerctl.config import Mqtt, SiteConfig
from powerctl.mqtt import CommandLimits, CommandState, MqttLink
from powerctl.process_image import ProcessImage, Quality
from tests.mqtt.test_payload_commands import site_config
from tests.servers import Mosquitto

pytestmark = pytest.mark.servers

PORTAL = "c0619ab1c2d3"
BASE = "powerctl/alpha/m1"


class Observer:
    """A second, independent MQTT client that records what it sees."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def until(self, pred: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> None:
        end = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what or pred}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def observer(port: int, *topics: str) -> AsyncIterator[tuple[Observer, aiomqtt.Client]]:
    obs = Observer()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"observer-{id(obs)}") as client:
        for t in topics:
            await client.subscribe(t, qos=1)

        async def collect() -> None:
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
                obs.messages.append((m.topic.value, payload, bool(m.retain)))

        task = asyncio.create_task(collect())
        try:
            yield obs, client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def make_link(cfg_site: SiteConfig, mqtt: Mqtt, clock: Callable[[], float] = time.time, **kw: Any) -> MqttLink:
    image = ProcessImage()
    commands = CommandState(CommandLimits.from_site(cfg_site), lease_s=mqtt.command_lease_s, clock=clock)
    return MqttLink(mqtt, cfg_site, image, commands, clock, **kw)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        await ended(task, "MqttLink.run()")


async def ended(task: asyncio.Task[None], what: str, bound_s: float = 60.0) -> None:
    """Wait for a cancelled task to end: a task that goes on is a failure, not a hung test."""
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(bound_s):
            await task
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "mqtt-link" and not t.done()]
    assert not left, f"{what} returned but its reconnect loop still runs"


async def wait_connected(link: MqttLink, timeout_s: float = 10.0) -> None:
    await Observer().until(lambda: link.connected, timeout_s, "the link to connect")


async def test_victron_device_feeds_the_process_image_with_keepalives(mosquitto: Mosquitto) -> None:
    cfg = site_config()
    link = make_link(cfg, Mqtt(port=mosquitto.port), keepalive_period_s=0.3)
    async with observer(mosquitto.port, f"R/{PORTAL}/keepalive") as (obs, venus):
        async with running(link):
            await wait_connected(link)
            # the GX answers the first keep-alive with a full publish of its values
            await obs.until(lambda: obs.on(f"R/{PORTAL}/keepalive"), what="first keep-alive")
            await venus.publish(f"N/{PORTAL}/system/0/Dc/Battery/Soc", b'{"value": 63.5}')
            await venus.publish(f"N/{PORTAL}/system/0/Dc/Battery/Power", b'{"value": -4200}')
            await venus.publish("tele/plug1/SENSOR", b'{"ENERGY": {"Power": 950, "Total": 3.25}}')
            img = link.image
            await obs.until(lambda: img.value("plug1", "e_import_kwh", time.time()) is not None, what="meter")
            await obs.until(lambda: img.value("gx", "p_kw", time.time()) is not None, what="battery")
            now = time.time()
            assert img.value("gx", "soc_pct", now) == 63.5
            assert img.value("gx", "p_kw", now) == 4.2  # discharging 4.2 kW in our sign
            assert img.value("plug1", "p_kw", now) == pytest.approx(0.95)
            await obs.until(lambda: len(obs.on(f"R/{PORTAL}/keepalive")) >= 3, what="three keep-alives")
            kas = [(p, r) for t, p, r in obs.messages if t == f"R/{PORTAL}/keepalive"]
            assert kas[0] == (b"", False)  # first: empty payload = full republish
            assert all(p == b'{"keepalive-options": ["suppress-republish"]}' and not r for p, r in kas[1:])
            # invalid value and departure are never numbers
            await venus.publish(f"N/{PORTAL}/system/0/Dc/Battery/Soc", b'{"value": null}')
            await venus.publish(f"N/{PORTAL}/system/0/Dc/Battery/Power", b"")
            await obs.until(lambda: img.get("gx", "p_kw", time.time()).quality is Quality.STALE, what="gone")
            assert img.get("gx", "soc_pct", time.time()).quality is Quality.INVALID
            assert "gone" in img.get("gx", "p_kw", time.time()).reason
            assert link.stats()["device_updates"] == 4


async def test_state_plan_caps_alarms_are_json_and_availability_is_retained(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port))
    async with observer(mosquitto.port, f"{BASE}/#") as (obs, _):
        async with running(link):
            await wait_connected(link)
            link.publish_state({"pv_kw": 12.5, "soc_pct": 55.0, "mode": "auto", "nan": float("nan")})
            link.publish_plan({"t_s": [0, 60, 120], "gpu_kw": [10.0, 12.0, 9.5]})
            link.publish_caps({"caps_w": {"0": 250.0, "1": 250.0}, "sum_kw": 0.5})
            link.publish_alarm({"kind": "guard_cut", "reason": "supply dropped"})
            await obs.until(lambda: obs.on(f"{BASE}/alarms"), what="alarm")
            assert obs.on(f"{BASE}/status")[-1] == b"online"
            state = json.loads(obs.on(f"{BASE}/state")[-1])
            assert state == {"pv_kw": 12.5, "soc_pct": 55.0, "mode": "auto", "nan": None}
            assert json.loads(obs.on(f"{BASE}/plan")[-1])["gpu_kw"] == [10.0, 12.0, 9.5]
            assert json.loads(obs.on(f"{BASE}/caps")[-1])["sum_kw"] == 0.5
            assert json.loads(obs.on(f"{BASE}/alarms")[-1])["kind"] == "guard_cut"
            assert json.loads(obs.on(f"{BASE}/commands/state")[-1]) == {
                "mode": None, "gpu_budget_max_kw": None, "battery_reserve_pct": None}
        await obs.until(lambda: obs.on(f"{BASE}/status")[-1] == b"offline", what="offline on clean stop")
    # a late subscriber sees the retained state and availability
    async with observer(mosquitto.port, f"{BASE}/state", f"{BASE}/status") as (late, _):
        await late.until(lambda: late.on(f"{BASE}/state") and late.on(f"{BASE}/status"), what="retained")
        assert all(r for t, _, r in late.messages)
        assert late.on(f"{BASE}/status") == [b"offline"]


async def test_last_will_marks_a_crashed_daemon_offline(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, client_id="crashy"))
    async with observer(mosquitto.port, f"{BASE}/status") as (obs, _):
        async with running(link):
            await wait_connected(link)
            await obs.until(lambda: obs.on(f"{BASE}/status") == [b"online"], what="online")
            # a second client with the same id takes over the session: the broker drops the first
            # connection uncleanly, which publishes its will
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="crashy"):
                await obs.until(lambda: b"offline" in obs.on(f"{BASE}/status"), what="last will")


async def test_link_cancelled_as_its_broker_dies_stops_for_good(mosquitto: Mosquitto) -> None:
    # the race of a lost connection and a stop, a few times over at different moments
    for delay_s in (0.0, 0.001, 0.01, 0.05):
        link = make_link(site_config(), Mqtt(port=mosquitto.port), backoff_min_s=0.05, backoff_max_s=0.1)
        task = asyncio.create_task(link.run())
        await wait_connected(link)
        assert mosquitto.proc is not None
        mosquitto.proc.kill()
        await asyncio.sleep(delay_s)
        task.cancel()
        await ended(task, "MqttLink.run()")
        assert not link.connected
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.to_thread(mosquitto.start)


async def test_command_changes_mode_and_expires_without_renewal(mosquitto: Mosquitto) -> None:
    # lease semantics, on a broker trusted with unsigned commands (signatures: tests/security/test_mqtt_auth.py)
    link = make_link(site_config(), Mqtt(port=mosquitto.port, command_lease_s=1.0, allow_unsigned_commands=True), lease_check_s=0.1)
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, op):
        async with running(link):
            await wait_connected(link)
            await op.publish(f"{BASE}/commands/mode/set", b"hold", qos=1)
            await obs.until(lambda: obs.on(f"{BASE}/commands/mode/result"), what="result")
            res = json.loads(obs.on(f"{BASE}/commands/mode/result")[-1])
            assert res["accepted"] and res["value"] == "hold"
            assert link.commands.mode() == "hold"
            await obs.until(lambda: (json.loads(obs.on(f"{BASE}/commands/state")[-1])["mode"] or {}).get("value")
                            == "hold", what="state shows the lease")
            # no renewal: after the 1 s lease the controller sees auto again, and the state says so
            await obs.until(lambda: link.commands.mode() == "auto", timeout_s=5, what="expiry")
            await obs.until(lambda: json.loads(obs.on(f"{BASE}/commands/state")[-1])["mode"] is None,
                            what="expired state")


async def test_out_of_range_malformed_oversize_commands_refused(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, max_payload_bytes=64, allow_unsigned_commands=True))
    topic = f"{BASE}/commands/gpu_budget_max_kw"
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, op):
        async with running(link):
            await wait_connected(link)
            await op.publish(f"{topic}/set", b"5000", qos=1)
            await obs.until(lambda: obs.on(f"{topic}/result"), what="refusal")
            res = json.loads(obs.on(f"{topic}/result")[-1])
            assert res["accepted"] is False
            assert res["reason"] == ("gpu_budget_max_kw 5000 out of range [0.8, 3.2] kW "
                                     "(all GPUs at min_w .. all at max_w)")
            await op.publish(f"{topic}/set", b'{"value": 2.0, "lease_s": "x"}', qos=1)
            await op.publish(f"{topic}/set", b"9" * 100, qos=1)
            await op.publish(f"{BASE}/commands/reboot/set", b"now", qos=1)  # not a configured topic
            await op.publish(f"{topic}/set", b"2.5", qos=1)
            await obs.until(lambda: len(obs.on(f"{topic}/result")) == 4, what="four results")
            reasons = [json.loads(p)["reason"] for p in obs.on(f"{topic}/result")]
            assert reasons[1] == "lease_s must be a number of seconds"
            assert reasons[2] == "payload over 64 bytes"
            assert reasons[3] == "set"
            assert link.commands.gpu_budget_ceiling_kw() == 2.5
            st = link.stats()
            assert (st["commands_refused"], st["commands_accepted"], st["oversize"]) == (2, 1, 1)
            assert st["unexpected"] == 0 and not obs.on(f"{BASE}/commands/reboot/result")


async def test_malformed_and_oversize_device_payloads_dropped_and_counted(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, max_payload_bytes=128))
    async with observer(mosquitto.port) as (obs, dev):
        async with running(link):
            await wait_connected(link)
            await dev.publish("tele/plug1/SENSOR", b'{"ENERGY": {"Power": 100, "Total": 1}}', qos=1)
            await obs.until(lambda: link.stats()["device_updates"] == 2, what="good reading")
            await dev.publish("tele/plug1/SENSOR", b"{oops", qos=1)
            await dev.publish("tele/plug1/SENSOR", b'{"ENERGY": {"Power": ' + b"1" * 200 + b"}}", qos=1)
            await obs.until(lambda: link.stats()["received"] == 3, what="all three messages")
            st = link.stats()
            assert (st["malformed"], st["oversize"], st["device_updates"]) == (1, 1, 2)
            assert link.image.get("plug1", "p_kw", time.time()).quality is Quality.INVALID


async def test_wrong_password_is_refused_with_a_clear_error(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.auth_port, username="powerctl", password="wrong"),
                     backoff_max_s=0.5)
    async with running(link):
        await Observer().until(lambda: link.last_error, what="an error")
    assert not link.connected and link.stats()["connects"] == 0
    assert link.last_error is not None
    assert "refused the login" in link.last_error and "mqtt.password" in link.last_error
    assert "user 'powerctl'" in link.last_error


async def test_tls_with_password_works_and_a_foreign_ca_is_refused(mosquitto: Mosquitto) -> None:
    assert mosquitto.certs is not None and mosquitto.tls_port is not None
    user, pw = "powerctl", mosquitto.users["powerctl"]
    good = make_link(site_config(), Mqtt(port=mosquitto.tls_port, tls=True, ca_file=str(mosquitto.certs.ca_crt),
                                         username=user, password=pw))
    async with running(good):
        await wait_connected(good)
    bad = make_link(site_config(), Mqtt(port=mosquitto.tls_port, tls=True,
                                        ca_file=str(mosquitto.certs.other_ca_crt), username=user, password=pw),
                    backoff_max_s=0.5)
    async with running(bad):
        await Observer().until(lambda: bad.last_error, what="a TLS error")
    assert bad.stats()["connects"] == 0
    assert bad.last_error is not None and "TLS certificate verification failed" in bad.last_error
    assert "mqtt.ca_file" in bad.last_error


async def test_broker_outage_10s_loop_keeps_cadence_then_reconnects(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port), backoff_max_s=2.0)
    period_s = 0.1
    ticks: list[float] = []

    async def control_loop(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ticks.append(time.monotonic())
            link.publish_state({"tick": len(ticks)})
            link.publish_alarm({"tick": len(ticks)})
            await asyncio.sleep(period_s)

    async with running(link):
        await wait_connected(link)
        loop = asyncio.create_task(control_loop(13.0))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mosquitto.stop)
        down_at = time.monotonic()
        await Observer().until(lambda: not link.connected, what="disconnect")
        await asyncio.sleep(10.0 - (time.monotonic() - down_at))
        await asyncio.to_thread(mosquitto.start)
        async with observer(mosquitto.port, f"{BASE}/state", f"{BASE}/status") as (obs, _):
            await obs.until(lambda: link.connected, timeout_s=10, what="reconnect")
            await obs.until(lambda: obs.on(f"{BASE}/state"), what="state after reconnect")
            assert obs.on(f"{BASE}/status")[-1] == b"online"
        await loop
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # 13 s at 10 Hz is 130 ticks; a loop stalled by the outage would lose most of the 10 s
    assert len(ticks) >= 110, len(ticks)
    assert max(gaps) < 1.0, max(gaps)
    st = link.stats()
    assert st["connects"] >= 2 and st["out_queue"] <= 1000
    assert st["out_dropped"] == 0  # 10 s x 10 alarms/s fits in the queue: nothing lost


async def test_homeassistant_discovery_retained_and_republished_on_birth(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, homeassistant_discovery=True))
    async with observer(mosquitto.port, "homeassistant/#") as (obs, ha):
        async with running(link):
            await wait_connected(link)
            sel = "homeassistant/select/powerctl_alpha_m1/mode/config"
            await obs.until(lambda: obs.on(sel), what="discovery")
            cfg = json.loads(obs.on(sel)[-1])
            assert cfg["command_topic"] == f"{BASE}/commands/mode/set" and cfg["options"] == ["auto", "hold", "manual"]
            num = json.loads(obs.on("homeassistant/number/powerctl_alpha_m1/battery_reserve_pct/config")[-1])
            assert (num["min"], num["max"]) == (15.0, 90.0)
            soc = json.loads(obs.on("homeassistant/sensor/powerctl_alpha_m1/soc_pct/config")[-1])
            assert soc["state_topic"] == f"{BASE}/state" and soc["availability_topic"] == f"{BASE}/status"
            before = len(obs.on(sel))
            await ha.publish("homeassistant/status", b"online")
            await obs.until(lambda: len(obs.on(sel)) > before, what="republish on HA birth")
