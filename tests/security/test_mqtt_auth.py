"""Only authorised operators command the site (issue 12, part 2).

Pure checks of the signature scheme and the pacing of commands, then the link against a real
Mosquitto: an anonymous publisher controls nothing, a signed command acts and names its operator,
a retained command never acts (not at reconnect, not after a restart) and stays where it is.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from powerctl.config import ConfigError, Mqtt
from powerctl.mqtt import CommandLimits, CommandState, MqttLink
from powerctl.mqtt.auth import AuthError, CommandVerifier, public_key_b64, sign_command
from powerctl.mqtt.operator_cli import load_private_key
from tests.mqtt.test_link import BASE, Observer, make_link, observer, running, wait_connected
from tests.mqtt.test_payload_commands import site_config
from tests.servers import Mosquitto

TOPIC = f"{BASE}/commands/gpu_budget_max_kw/set"
ALICE = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()  # not configured


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(clock: Clock, **kw: float) -> CommandVerifier:
    return CommandVerifier({"alice": ALICE.public_key()}, clock=clock, started_at_s=clock.t - 100, **kw)  # type: ignore[arg-type]


def operators_mqtt(port: int, **kw: object) -> Mqtt:
    return Mqtt(port=port, operators=[{"name": "alice", "public_key": public_key_b64(ALICE)}], **kw)  # type: ignore[arg-type]


# --- the scheme ---------------------------------------------------------------------------------


def test_signed_command_verifies_and_names_its_operator() -> None:
    clock = Clock()
    a = verifier(clock).verify(TOPIC, sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice",
                                                   lease_s=20, ts=clock.t))
    assert (a.operator, a.value, a.lease_s) == ("alice", 2.5, 20.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: b"2.5", "unsigned command"),
        (lambda c: b'{"value": 2.5}', "unsigned command"),
        (lambda c: sign_command(MALLORY, topic=TOPIC, value=2.5, operator="mallory", ts=c.t), "unknown operator"),
        (lambda c: sign_command(MALLORY, topic=TOPIC, value=2.5, operator="alice", ts=c.t), "bad signature"),
        (lambda c: sign_command(ALICE, topic=f"{BASE}/commands/mode/set", value=2.5, operator="alice", ts=c.t),
         "signed for topic"),
        (lambda c: sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=c.t - 31), "replay window"),
        (lambda c: sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=c.t + 31), "replay window"),
        (lambda c: sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=c.t, nonce="short"), "nonce"),
    ],
)
def test_forged_replayed_or_misdirected_commands_are_refused(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    with pytest.raises(AuthError, match=reason):
        verifier(clock, window_s=30).verify(TOPIC, make(clock))


def test_tampered_body_fails_the_signature() -> None:
    clock = Clock()
    doc = json.loads(sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=clock.t))
    doc["body"] = doc["body"].replace("2.5", "3.2")
    with pytest.raises(AuthError, match="bad signature"):
        verifier(clock).verify(TOPIC, json.dumps(doc).encode())


def test_a_replayed_nonce_and_a_command_from_before_the_start_are_refused() -> None:
    clock = Clock()
    v = verifier(clock)
    p = sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=clock.t)
    v.verify(TOPIC, p)
    clock.t += 1
    with pytest.raises(AuthError, match="nonce already used"):
        v.verify(TOPIC, p)
    restarted = CommandVerifier({"alice": ALICE.public_key()}, clock=clock)  # started now
    with pytest.raises(AuthError, match="before this daemon started"):
        restarted.verify(TOPIC, p)


def test_nonce_memory_is_bounded_and_forgets_only_what_left_the_window() -> None:
    clock = Clock()
    v = verifier(clock, window_s=30, max_nonces=50)
    for _ in range(50):
        v.verify(TOPIC, sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=clock.t))
    with pytest.raises(AuthError, match="more than 50 commands"):
        v.verify(TOPIC, sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=clock.t))
    assert v.nonces_held == 50
    clock.t += 31  # the first 50 left the window: they cannot be replayed anyway (timestamp)
    v.verify(TOPIC, sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice", ts=clock.t))
    assert v.nonces_held == 1


def test_operator_keys_in_the_config_are_checked_by_field() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.operators\[0\]\.public_key: .*32 bytes"):
        site_config(operators=[{"name": "bob", "public_key": "AAAA"}])
    good = {"name": "bob", "public_key": public_key_b64(ALICE)}
    with pytest.raises(ConfigError, match=r"mqtt\.operators: .*used twice: bob"):
        site_config(operators=[good, good])
    cfg = site_config(operators=[good])
    assert cfg.mqtt is not None and not cfg.mqtt.allow_unsigned_commands  # unsigned: off by default


def test_operator_key_file_must_be_private(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from powerctl.cli import app

    res = CliRunner().invoke(app, ["command", "keygen", "alice", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert 'name = "alice"' in res.output and "public_key = " in res.output
    key = tmp_path / "alice.key"
    assert key.stat().st_mode & 0o077 == 0
    load_private_key(key)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load_private_key(key)


# --- pacing of command-driven changes -------------------------------------------------------------


def test_alternating_budgets_are_rate_limited_and_rises_slewed() -> None:
    """The attack from the review: two budgets alternated every 2.5 s for two minutes. Changes are
    paced to one per ``command_min_interval_s`` and the ceiling never rises faster than the GPUs'
    slew limit (``gpu.ramp_up_kw_per_s``, site kW/s, in GPU kW/s)."""
    base = site_config()
    cfg = base.model_copy(update={"gpu": base.gpu.model_copy(update={"ramp_up_kw_per_s": 1.0})})
    assert cfg.mqtt is not None
    clock = Clock()
    t0 = clock.t
    cs = CommandState.for_site(cfg, clock)
    rate_kw_per_s = cfg.gpu.ramp_up_kw_per_s / (1 + cfg.gpu.facility_overhead)
    top_kw = cfg.gpu.count * cfg.gpu.max_w / 1000
    accepted = refused = 0
    seen: list[tuple[float, float]] = []
    for step in range(240):  # 0.5 s steps
        if step % 5 == 0:  # every 2.5 s, alternating
            res = cs.set("gpu_budget_max_kw", 1.0 if (step // 5) % 2 == 0 else 3.2)
            accepted += res.reason == "set"  # a change ("renewed": the value in force, sent again)
            refused += not res.accepted
            assert res.accepted or res.reason.startswith("rate-limited"), res.reason
        c = cs.gpu_budget_ceiling_kw()
        seen.append((clock.t, top_kw if c is None else c))
        clock.t += 0.5
    assert accepted <= (clock.t - t0) / cfg.mqtt.command_min_interval_s + 1 and refused > 0
    rises = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in itertools.pairwise(seen) if c1 > c0 + 1e-9]
    assert rises, "the ceiling never rose: the test shows nothing"
    assert max(rises) <= rate_kw_per_s + 1e-9
    assert min(c for _, c in seen) == 1.0  # a lower ceiling applies at once


def test_a_renewal_is_never_rate_limited() -> None:
    clock = Clock()
    cs = CommandState(CommandLimits(1.0, 10.0, None, None), lease_s=30, clock=clock, min_change_interval_s=10)
    assert cs.set("mode", "hold").accepted
    for _ in range(5):
        clock.t += 1
        assert cs.set("mode", "hold").reason == "renewed"
    assert cs.set("mode", "manual").reason.startswith("rate-limited")
    clock.t += 5
    assert cs.set("mode", "manual").accepted


# --- the link, against a real broker ----------------------------------------------------------------

pytestmark_servers = pytest.mark.servers


@pytestmark_servers
async def test_anonymous_publisher_controls_nothing(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """The review's attack: mode manual and the budget at maximum from an anonymous client."""
    link = make_link(site_config(), operators_mqtt(mosquitto.port))
    caplog.set_level(logging.WARNING, "powerctl.mqtt")
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, anon), running(link):
        await wait_connected(link)
        await anon.publish(f"{BASE}/commands/mode/set", b"manual", qos=1)
        await anon.publish(TOPIC, b"3.2", qos=1)
        await anon.publish(TOPIC, sign_command(MALLORY, topic=TOPIC, value=3.2, operator="alice"), qos=1)
        await obs.until(lambda: obs.on(f"{BASE}/commands/mode/result") and obs.on(TOPIC.replace("set", "result")),
                        what="refusals")
        assert link.commands.mode() == "auto" and link.commands.gpu_budget_ceiling_kw() is None
        res = json.loads(obs.on(f"{BASE}/commands/mode/result")[-1])
        assert res["accepted"] is False and "not authorised: unsigned command" in res["reason"]
        await obs.until(lambda: link.stats()["commands_refused"] == 3, what="three refusals")
    text = caplog.text
    assert "MQTT command mode refused (operator unknown): not authorised: unsigned" in text
    assert "bad signature for operator 'alice'" in text


@pytestmark_servers
async def test_signed_command_acts_and_its_operator_is_logged(mosquitto: Mosquitto,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    link = make_link(site_config(), operators_mqtt(mosquitto.port))
    caplog.set_level(logging.INFO, "powerctl.mqtt")
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, op), running(link):
        await wait_connected(link)
        await op.publish(TOPIC, sign_command(ALICE, topic=TOPIC, value=2.5, operator="alice"), qos=1)
        await obs.until(lambda: link.commands.gpu_budget_ceiling_kw() == 2.5, what="the signed command")
        await obs.until(lambda: obs.on(TOPIC.replace("set", "result")), what="result")
        res = json.loads(obs.on(TOPIC.replace("set", "result"))[-1])
        assert res["accepted"] and res["operator"] == "alice"
    assert "MQTT command gpu_budget_max_kw = 2.5 by operator alice (set)" in caplog.text


@pytestmark_servers
async def test_refusals_are_logged_with_their_reason_but_rate_limited(mosquitto: Mosquitto,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    link = make_link(site_config(), operators_mqtt(mosquitto.port, command_rate_per_s=1000))
    caplog.set_level(logging.WARNING, "powerctl.mqtt")
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, anon), running(link):
        await wait_connected(link)
        for _ in range(200):
            await anon.publish(f"{BASE}/commands/mode/set", b"manual", qos=1)
        try:
            await obs.until(lambda: link.stats()["commands_refused"] == 200, timeout_s=30, what="200 refusals")
        except AssertionError:
            raise AssertionError(f"not 200 refusals: {link.stats()}") from None
    lines = [r for r in caplog.records if "MQTT command mode refused" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]  # one per 10 s (the test may straddle one)
    assert "unsigned command" in lines[0].getMessage()
    assert len(obs.on(f"{BASE}/commands/mode/result")) <= 2  # results are paced like the log


async def _refuses_retained_across_a_reconnect(link: MqttLink, port: int) -> None:
    async with running(link):
        await wait_connected(link)
        await Observer().until(lambda: link.stats()["commands_refused"] >= 2, what="retained refused")
        # knock the link off (a client taking its session over): it reconnects, resubscribes and
        # the broker hands it the retained commands again
        async with aiomqtt.Client("127.0.0.1", port, identifier=link.client_id):
            await Observer().until(lambda: not link.connected, what="the link dropped")
        await Observer().until(lambda: link.stats()["connects"] >= 2 and link.stats()["commands_refused"] >= 4,
                               what="refused again after the reconnect")
        assert link.commands.mode() == "auto" and link.commands.gpu_budget_ceiling_kw() is None
        assert link.stats()["commands_accepted"] == 0


@pytestmark_servers
async def test_retained_command_never_acts_at_reconnect_or_restart(mosquitto: Mosquitto) -> None:
    """Even on a broker trusted with unsigned commands: a retained command is refused, at the first
    connection, at a reconnect and in a restarted link, and the daemon leaves it on the broker."""
    mq = Mqtt(port=mosquitto.port, allow_unsigned_commands=True)
    async with observer(mosquitto.port) as (_, op):
        await op.publish(f"{BASE}/commands/mode/set", b"manual", qos=1, retain=True)
        await op.publish(TOPIC, b"3.2", qos=1, retain=True)
    for _life in range(2):  # the second link is the daemon restarted
        await _refuses_retained_across_a_reconnect(make_link(site_config(), mq, backoff_min_s=0.05), mosquitto.port)
    # the daemon cleared nothing of others': the retained message is still there
    async with observer(mosquitto.port, f"{BASE}/commands/mode/set") as (late, _):
        await late.until(lambda: late.on(f"{BASE}/commands/mode/set"), what="the retained command")
        assert late.messages[-1][1:] == (b"manual", True)


@pytestmark_servers
async def test_trusted_broker_switch_accepts_unsigned_live_commands(mosquitto: Mosquitto) -> None:
    link = make_link(site_config(), Mqtt(port=mosquitto.port, allow_unsigned_commands=True))
    async with observer(mosquitto.port, f"{BASE}/commands/#") as (obs, op), running(link):
        await wait_connected(link)
        await op.publish(f"{BASE}/commands/mode/set", b"hold", qos=1)
        await obs.until(lambda: link.commands.mode() == "hold", what="unsigned command on a trusted broker")
        await obs.until(lambda: obs.on(f"{BASE}/commands/mode/result"), what="result")
        assert json.loads(obs.on(f"{BASE}/commands/mode/result")[-1])["operator"] == "unsigned"
