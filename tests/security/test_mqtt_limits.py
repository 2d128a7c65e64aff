"""What arrives on MQTT cannot fill memory or knock the daemon off the broker.

- a 100 MB payload is never buffered (the broker is asked, MQTT 5 Maximum Packet Size, not to send
  it), and the link stays connected;
- the default client id is unguessable, and a session taken over is said in plain words.

Publishers of floods and huge payloads run in their own process (``publish_in_another_process``),
so their CPU and memory are not the link's.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import psutil
import pytest

from powerctl.config import Mqtt
from tests.mqtt.test_link import BASE, Observer, make_link, observer, running, wait_connected
from tests.mqtt.test_payload_commands import site_config
from tests.servers import Mosquitto

pytestmark = pytest.mark.servers

PUBLISHER = r"""
import sys, paho.mqtt.client as m
port, topic, count, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id="flood", protocol=m.MQTTv5)
c.connect("127.0.0.1", port)
c.loop_start()
body = b"m" * size
infos = [c.publish(topic, body if size else b"manual", qos=1) for _ in range(count)]
for i in infos:
    i.wait_for_publish(120)
c.disconnect()
c.loop_stop()
"""


def publish_in_another_process(port: int, topic: str, count: int, size: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), topic, str(count), str(size)])


async def wait_process(proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < end, "publisher did not finish"
        await asyncio.sleep(0.05)
    assert proc.returncode == 0


async def test_a_100_mb_payload_is_never_buffered(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, allow_unsigned_commands=True))
    rss_before = psutil.Process().memory_info().rss
    async with running(link):
        await wait_connected(link)
        proc = publish_in_another_process(mosquitto.port, f"{BASE}/commands/mode/set", 1, 100 * 1024 * 1024)
        await wait_process(proc)
        async with observer(mosquitto.port) as (_, op):  # after the giant: a normal command gets through
            await op.publish(f"{BASE}/commands/mode/set", b"hold", qos=1)
        await Observer().until(lambda: link.commands.mode() == "hold", what="the command after the giant")
        st = link.stats()
        assert link.connected and st["connects"] == 1
        assert st["received"] == 1 and st["oversize"] == 0  # the 100 MB message never reached the link
    grown_mb = (psutil.Process().memory_info().rss - rss_before) / 1e6
    assert grown_mb < 50, f"RSS grew {grown_mb:.0f} MB"


async def test_default_client_id_is_unguessable_and_the_old_one_takes_nothing_over(mosquitto: Mosquitto) -> None:
    a, b = make_link(site_config(), Mqtt(port=mosquitto.port)), make_link(site_config(), Mqtt(port=mosquitto.port))
    assert a.client_id != b.client_id and a.client_id.startswith("powerctl-alpha-m1-")
    async with observer(mosquitto.port, f"{BASE}/alarms") as (obs, _), running(a):
        await wait_connected(a)
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="powerctl-alpha-m1"):
            pass  # what any read-only user could do with the old, predictable id
        a.publish_alarm({"kind": "still here"})
        await obs.until(lambda: obs.on(f"{BASE}/alarms"), what="the link's alarm after the intruder")
        assert a.connected and a.stats()["connects"] == 1


async def test_a_session_taken_over_is_said_in_plain_words(mosquitto: Mosquitto,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, client_id="shared-id"), backoff_min_s=0.05)
    caplog.set_level(logging.WARNING, "powerctl.mqtt")
    async with running(link):
        await wait_connected(link)
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="shared-id",
                                  protocol=aiomqtt.ProtocolVersion.V5):
            await Observer().until(lambda: "MQTT connection lost" in caplog.text, what="the takeover message")
    # a broker that gives the reason (MQTT 5 "Session taken over") gets "took the session over";
    # Mosquitto 2.0 closes the connection without one: the message names the id and the cause
    assert ("another client connecting with this client id 'shared-id', which takes the session over" in caplog.text
            or "took the session over" in caplog.text), caplog.text
