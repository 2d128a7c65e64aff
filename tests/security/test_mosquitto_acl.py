"""The shipped broker settings (examples/mosquitto) on a real Mosquitto: who may publish what.

The broker is started with the shipped ``powerctl.conf`` and ``powerctl.acl`` (only the file paths
and a loopback listener are the test's), and a password file made with ``mosquitto_passwd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.servers import (
    MOSQUITTO_CANDIDATES,
    MOSQUITTO_PASSWD_CANDIDATES,
    _Process,
    find_binary,
    free_port,
    or_missing,
)

pytestmark = pytest.mark.servers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mosquitto"
USERS = {"powerctl": "daemon-pw", "operator": "operator-pw", "viewer": "viewer-pw"}
BASE = "powerctl/demo/m1"


class AclBroker(_Process):
    name = "mosquitto-acl"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = find_binary(MOSQUITTO_CANDIDATES, "mosquitto")
        self.port = free_port()
        passwd = self.workdir / "powerctl.passwd"
        passwd.write_text("")
        tool = find_binary(MOSQUITTO_PASSWD_CANDIDATES, "mosquitto")
        for user, pw in USERS.items():
            subprocess.run([tool, "-b", str(passwd), user, pw], check=True, capture_output=True, timeout=30)
        passwd.chmod(0o600)
        (self.workdir / "powerctl.acl").write_text((EXAMPLES / "powerctl.acl").read_text())
        shipped = (EXAMPLES / "powerctl.conf").read_text().replace("/etc/mosquitto/", f"{self.workdir}/")
        head = ["user root"] if os.geteuid() == 0 else []
        head += ["persistence false", "log_dest stdout", f"listener {self.port} 127.0.0.1"]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(head) + "\n" + shipped)

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready_port(self) -> int:
        return self.port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[AclBroker]:
    b = or_missing(lambda: AclBroker(tmp_path / "acl-broker"))
    with b:
        yield b


@contextlib.asynccontextmanager
async def client(port: int, user: str | None, identifier: str | None = None) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", port, username=user, password=USERS.get(user or ""),
                              identifier=identifier or f"t-{user}", timeout=5,
                              protocol=aiomqtt.ProtocolVersion.V5) as c:
        yield c


async def seen(c: aiomqtt.Client, until_topic: str) -> list[tuple[str, bytes]]:
    """Messages ``c`` receives up to and including the first on ``until_topic``."""
    out: list[tuple[str, bytes]] = []
    async with asyncio.timeout(10):
        async for m in c.messages:
            out.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
            if m.topic.value == until_topic:
                return out
    return out


async def test_anonymous_clients_cannot_connect(broker: AclBroker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker.port, None):
            pass


async def test_viewer_and_daemon_cannot_publish_commands_the_operator_can(broker: AclBroker) -> None:
    set_topic = f"{BASE}/commands/mode/set"
    async with client(broker.port, "powerctl") as daemon, client(broker.port, "operator") as op:
        await daemon.subscribe(f"{BASE}/commands/+/set", qos=1)
        async with client(broker.port, "viewer") as viewer:
            await viewer.publish(set_topic, b"manual", qos=1)  # denied by the ACL (silently, per MQTT)
        await daemon.publish(set_topic, b"hold", qos=1)  # nor may the daemon command itself
        await op.publish(set_topic, b"operator-marker", qos=1)
        got = await seen(daemon, set_topic)
    assert got == [(set_topic, b"operator-marker")], got


async def test_daemon_publishes_state_and_the_viewer_reads_it_but_cannot_fake_it(broker: AclBroker) -> None:
    async with client(broker.port, "viewer") as viewer, client(broker.port, "powerctl") as daemon:
        await viewer.subscribe(f"{BASE}/#", qos=1)
        await viewer.publish(f"{BASE}/state", b'{"fake": true}', qos=1)
        await daemon.publish(f"{BASE}/state", b'{"pv_kw": 1.0}', qos=1)
        got = await seen(viewer, f"{BASE}/state")
    assert got == [(f"{BASE}/state", b'{"pv_kw": 1.0}')], got


async def test_reusing_the_daemons_client_id_does_not_knock_it_off(broker: AclBroker) -> None:
    """use_username_as_clientid: the viewer's id is 'viewer' whatever it asks for (here the daemon's
    own id and the id it asked for)."""
    set_topic = f"{BASE}/commands/mode/set"
    async with client(broker.port, "powerctl", identifier="powerctl-demo-m1") as daemon, \
            client(broker.port, "operator") as op:
        await daemon.subscribe(f"{BASE}/commands/+/set", qos=1)
        for stolen_id in ("powerctl-demo-m1", "powerctl"):
            async with client(broker.port, "viewer", identifier=stolen_id):
                pass
        await op.publish(set_topic, b"still connected?", qos=1)
        assert await seen(daemon, set_topic) == [(set_topic, b"still connected?")]


async def test_the_daemons_link_works_under_the_acl(broker: AclBroker) -> None:
    """MqttLink as the 'powerctl' user: its state reaches a viewer, a signed command from the
    operator user acts."""
    from powerctl.config import Mqtt
    from powerctl.mqtt.auth import public_key_b64, sign_command
    from tests.mqtt.test_link import Observer, make_link, running, wait_connected
    from tests.mqtt.test_payload_commands import site_config
    from tests.security.test_mqtt_auth import ALICE

    base = "powerctl/alpha/m1"
    mq = Mqtt(port=broker.port, username="powerctl", password=USERS["powerctl"],
              operators=[{"name": "alice", "public_key": public_key_b64(ALICE)}])  # type: ignore[list-item]
    link = make_link(site_config(), mq)
    async with client(broker.port, "viewer") as viewer, client(broker.port, "operator") as op, running(link):
        await viewer.subscribe(f"{base}/state", qos=1)
        await wait_connected(link)
        link.publish_state({"pv_kw": 2.0})
        assert await seen(viewer, f"{base}/state") == [(f"{base}/state", b'{"pv_kw":2.0}')]
        topic = f"{base}/commands/mode/set"
        await op.publish(topic, sign_command(ALICE, topic=topic, value="hold", operator="alice"), qos=1)
        await Observer().until(lambda: link.commands.mode() == "hold", what="the operator's signed command")
