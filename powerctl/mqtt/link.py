"""The daemon's MQTT connection (aiomqtt >= 2, the maintained continuation of asyncio-mqtt).

One ``MqttLink`` per daemon:

- subscribes to the MQTT devices' topics (``powerctl.mqtt.sources``) and writes decoded values into
  the process image, sending Victron Venus keep-alives where a profile asks for them;
- subscribes to exactly the configured command topics and applies them to a ``CommandState``
  (leases), publishing accepted/refused with the reason. A command acts only when an operator in
  ``mqtt.operators`` signed it (``powerctl.mqtt.auth``; unsigned only with
  ``mqtt.allow_unsigned_commands``), never when it arrives retained; command messages beyond
  ``mqtt.command_rate_per_s`` are dropped unread, refusals are logged at most every 10 s per
  command, and the receiver yields after every message, so a flood cannot hold up the guard;
- asks the broker (MQTT 5 Maximum Packet Size) never to send a packet much larger than
  ``mqtt.max_payload_bytes``, so a 100 MB payload is never buffered here;
- publishes state, plan, caps and alarms as JSON under ``<prefix>/<site>/<module>/`` (see
  ``powerctl.mqtt.topics``), a retained availability topic with a last will, and optionally Home
  Assistant discovery.

The control loop only calls ``publish_*``: they put the message in a bounded queue and return
(oldest dropped and counted when full; a newer retained message replaces an unsent older one on
the same topic). A broker outage therefore never stalls the loop: ``run`` reconnects with a growing
backoff and sends what is queued once connected again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from powerctl.config import ConfigError, Mqtt, SiteConfig
from powerctl.mqtt.auth import AuthError, CommandVerifier, RateLimitedLog, public_key_from_b64
from powerctl.mqtt.commands import CommandLimits, CommandResult, CommandState, parse_command_payload
from powerctl.mqtt.sources import MqttSources, build_sources, declare_signals
from powerctl.mqtt.topics import TopicTree, homeassistant_discovery, to_json
from powerctl.process_image import ProcessImage
from powerctl.tasks import halt, until_one_ends

log = logging.getLogger("powerctl.mqtt")

_AUTH_CODES = {4, 5, 134, 135}  # 3.1.1 bad user/password, not authorised; 5.0 equivalents
_TAKEN_OVER = 142  # MQTT 5 DISCONNECT "Session taken over": another client used our client id
PACKET_OVERHEAD_BYTES = 1024  # fixed header, topic and properties on top of the payload


def make_verifier(cfg: Mqtt, clock: Callable[[], float] = time.time) -> CommandVerifier:
    """The verifier for the configured operators (public keys were checked by the config)."""
    keys = {op.name: public_key_from_b64(op.public_key) for op in cfg.operators}
    return CommandVerifier(keys, window_s=cfg.command_window_s, clock=clock)


def default_client_id(site: str, module: str) -> str:
    """Unpredictable, so that nobody can take the daemon's session over by guessing its id."""
    return f"powerctl-{site}-{module}-{secrets.token_hex(6)}"


def _password(cfg: Mqtt) -> str | None:
    if cfg.password is not None:
        return cfg.password
    if cfg.password_file:
        try:
            return Path(cfg.password_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file {cfg.password_file}: cannot read: {exc.strerror or exc}") from None
    return None


def _tls_context(cfg: Mqtt) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    try:
        return ssl.create_default_context(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.ca_file {cfg.ca_file}: cannot load CA certificates: {exc}") from None


def explain_error(exc: BaseException, cfg: Mqtt) -> str:
    """An operator-facing sentence for a connection failure."""
    where = f"MQTT broker {cfg.host}:{cfg.port}"
    text = str(exc)
    rc = getattr(exc, "rc", None)
    # a broker's reason code (paho ReasonCode) or one of paho's own MQTT_ERR_* ints (4 there is
    # "not connected", not "bad user name or password": only a reason code says who refused)
    rc_val = rc.value if isinstance(rc, ReasonCode) else None
    if rc_val == _TAKEN_OVER:
        return (f"{where} dropped this connection: another client connected with the same client id "
                f"and took the session over (someone reusing mqtt.client_id? leave it unset for an "
                f"unguessable id, or give each broker user its own id: see examples/mosquitto)")
    if isinstance(rc_val, int) and rc_val in _AUTH_CODES:
        who = f"user {cfg.username!r}" if cfg.username else "anonymous login"
        return (f"{where} refused the login ({text}) for {who}: check mqtt.username and "
                "mqtt.password / mqtt.password_file")
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc.__cause__, ssl.SSLCertVerificationError):
        return (f"{where}: TLS certificate verification failed ({text}): the broker's certificate must be "
                f"signed by a CA in mqtt.ca_file ({cfg.ca_file or 'system CAs'}) and name the host")
    if "SSL" in text or "TLS" in text:
        return f"{where}: TLS handshake failed ({text}): is mqtt.port a TLS listener and mqtt.tls right?"
    if "Connection refused" in text or "Errno 111" in text:
        return f"{where}: connection refused (broker down or wrong port): {text}"
    return f"{where}: {type(exc).__name__}: {text}"


def _disconnect_cause(client: aiomqtt.Client) -> BaseException | None:
    fut = getattr(client, "_disconnected", None)  # aiomqtt 2.x keeps the broker's reason there
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        return fut.exception()
    return None


def _first_error(eg: BaseExceptionGroup[Any]) -> BaseException:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_error(e)
        if not isinstance(e, asyncio.CancelledError):
            return e
    return eg


def _session_ended(name: str) -> BaseException:
    return aiomqtt.MqttError(f"MQTT session task {name} ended")


class MqttLink:
    """See the module docstring. ``clock`` is the daemon's clock (Unix seconds) for signal timestamps."""

    def __init__(
        self,
        cfg: Mqtt,
        site_cfg: SiteConfig,
        image: ProcessImage,
        commands: CommandState,
        clock: Callable[[], float],
        *,
        sources: MqttSources | None = None,
        verifier: CommandVerifier | None = None,
        queue_max: int = 1000,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 5.0,
        keepalive_period_s: float | None = None,
        lease_check_s: float = 0.5,
        discovery_prefix: str = "homeassistant",
    ) -> None:
        self.cfg = cfg
        self.site = site_cfg
        self.image = image
        self.commands = commands
        self.clock = clock
        self.tree = TopicTree(cfg.topic_prefix, site_cfg.site.id, site_cfg.site.module)
        self.sources = sources if sources is not None else build_sources(site_cfg)
        declare_signals(self.sources, site_cfg, image)
        self._command_topics = self.tree.command_topics()
        self.verifier = verifier if verifier is not None else make_verifier(cfg, clock)
        self.client_id = cfg.client_id or default_client_id(site_cfg.site.id, site_cfg.site.module)
        self._refusal_log = RateLimitedLog(log.warning, period_s=10.0)
        self._bucket = (float(max(5.0, cfg.command_rate_per_s)), time.monotonic())  # (tokens, at)
        if cfg.allow_unsigned_commands:
            log.warning("mqtt.allow_unsigned_commands is on: anyone who may publish on %s/commands/# "
                        "commands this site (only for a broker the README calls trusted)", self.tree.base)
        elif not cfg.operators:
            log.warning("mqtt: no [[mqtt.operators]] configured: every operator command will be refused")
        self._password = _password(cfg)
        self._tls = _tls_context(cfg)
        self._out: deque[tuple[str, bytes, int, bool]] = deque()
        self._queue_max = max(1, queue_max)
        self._out_event: asyncio.Event | None = None
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.keepalive_period_s = keepalive_period_s  # override of the profiles' period (simulators, tests)
        self.lease_check_s = lease_check_s
        self.discovery_prefix = discovery_prefix
        self.connected = False
        self._stop = asyncio.Event()
        self.last_error: str | None = None
        self._counts = dict.fromkeys((
            "connects", "connect_failures", "published", "out_dropped", "received", "device_updates",
            "malformed", "oversize", "commands_accepted", "commands_refused", "commands_dropped", "in_dropped",
            "keepalives", "unexpected",
        ), 0)

    # --- producer side (control loop): never blocks -------------------------------------------

    def publish_state(self, state: dict[str, Any]) -> None:
        self._enqueue(self.tree.state, to_json(state), qos=0, retain=True)

    def publish_plan(self, plan: dict[str, Any]) -> None:
        self._enqueue(self.tree.plan, to_json(plan), qos=0, retain=True)

    def publish_caps(self, caps: dict[str, Any]) -> None:
        self._enqueue(self.tree.caps, to_json(caps), qos=0, retain=True)

    def publish_alarm(self, alarm: dict[str, Any]) -> None:
        self._enqueue(self.tree.alarms, to_json(alarm), qos=1, retain=False)

    def _enqueue(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        if retain and any(item[0] == topic for item in self._out):
            # only the newest retained value matters; an unsent older one is superseded, not lost
            self._out = deque(item for item in self._out if item[0] != topic)
        if len(self._out) >= self._queue_max:
            self._out.popleft()
            self._counts["out_dropped"] += 1
        self._out.append((topic, payload, qos, retain))
        if self._out_event is not None:
            self._out_event.set()

    def stats(self) -> dict[str, int]:
        out = dict(self._counts)
        out["connected"] = int(self.connected)
        out["out_queue"] = len(self._out)
        return out

    # --- connection loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with growing backoff; until cancelled (then publish offline).

        The reconnect loop runs in its own task behind a shield, and a cancel of ``run`` sets a
        stop flag and then cancels that task until it has ended. A cancel alone is not enough:
        aiomqtt can lose one (its ``__aexit__`` raises the connection's error in place of the
        CancelledError, and Python 3.11's ``wait_for`` drops a cancel that races the CONNACK), and
        a lost cancel here meant a link that went on reconnecting after the daemon stopped.
        """
        self._out_event = asyncio.Event()
        self._stop = asyncio.Event()
        loop_task = asyncio.create_task(self._reconnect_loop(), name="mqtt-link")
        try:
            await asyncio.shield(loop_task)
        except asyncio.CancelledError:
            self._stop.set()
            await halt(loop_task, what="MQTT link")
            raise

    async def _reconnect_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            connects_before = self._counts["connects"]
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError) as exc:
                self._failed(exc, self._counts["connects"] > connects_before)
            except BaseExceptionGroup as eg:
                err = _first_error(eg)
                if not isinstance(err, aiomqtt.MqttError | OSError):
                    raise
                self._failed(err, self._counts["connects"] > connects_before)
            if self._counts["connects"] > connects_before:
                backoff = 0.0  # the link worked: start the backoff ladder again
            backoff = min(max(backoff * 2, self.backoff_min_s), self.backoff_max_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop.wait()

    def _failed(self, exc: BaseException, was_connected: bool) -> None:
        self.connected = False
        if self._stop.is_set():
            return  # the error of a connection closed because we stop: not news
        msg = explain_error(exc, self.cfg)
        if was_connected:
            if "took the session over" not in msg:
                # Mosquitto 2.0.11 closes a taken-over session without saying so (no reason code)
                msg += (f" (the broker closed it: a broker restart, a network break, or another client "
                        f"connecting with this client id {self.client_id!r}, which takes the session over)")
            log.warning("MQTT connection lost: %s", msg)
        else:
            self._counts["connect_failures"] += 1
            if msg != self.last_error:
                log.error("%s", msg)
        self.last_error = msg

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        # the broker must not send us more than this: an oversized message never reaches memory here
        props.MaximumPacketSize = self.cfg.max_payload_bytes + PACKET_OVERHEAD_BYTES
        return aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            username=self.cfg.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=props,
            will=aiomqtt.Will(self.tree.status, b"offline", qos=1, retain=True),
            tls_context=self._tls,
            timeout=self.timeout_s,
            keepalive=15,
            queue_type=self._incoming_queue_type(),
            max_queued_incoming_messages=2_000,  # x max packet size: the bound on what waits here
        )

    def _incoming_queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue, bounded; a message that finds it full is dropped and counted
        (one log line per 10 s, not one per message)."""
        link = self

        class Bounded(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if self.full():
                    link._counts["in_dropped"] += 1
                    link._refusal_log("incoming:full", f"MQTT: incoming queue full ({self.maxsize} messages): "
                                      "dropping what arrives (a flood?)")
                    return
                super().put_nowait(item)

        return Bounded

    async def _session(self) -> None:
        client = self._client()
        try:
            await self._serve(client)
        except (aiomqtt.MqttError, ExceptionGroup) as exc:
            # aiomqtt reports a lost connection as "Disconnected during message iteration"; the
            # broker's reason (e.g. "Session taken over") is in the client's disconnect future
            cause = _disconnect_cause(client)
            if cause is not None and cause is not exc:
                raise cause from None
            raise

    async def _serve(self, client: aiomqtt.Client) -> None:
        async with client:
            self.connected = True
            self._counts["connects"] += 1
            if self.last_error:
                log.warning("MQTT connected to %s:%d again", self.cfg.host, self.cfg.port)
            self.last_error = None
            try:
                await self._on_connect(client)
                coros: dict[str, Coroutine[Any, Any, None]] = {
                    "mqtt-send": self._sender(client),
                    "mqtt-receive": self._receiver(client),
                    "mqtt-leases": self._lease_watch(),
                }
                for k, ka in enumerate(self.sources.keepalives):
                    coros[f"mqtt-keepalive-{k}"] = self._keepalive(client, ka.topic, ka.first_payload, ka.payload,
                                                                   self.keepalive_period_s or ka.period_s)
                await until_one_ends(coros, _session_ended)
            except asyncio.CancelledError:
                # clean stop: the will only fires on an unclean disconnect, so say it ourselves
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await client.publish(self.tree.status, b"offline", qos=1, retain=True)
                self.connected = False
                raise
            finally:
                self.connected = False

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        t = self.timeout_s
        await client.publish(self.tree.status, b"online", qos=1, retain=True, timeout=t)
        for topic in self.sources.topics():
            await client.subscribe(topic, qos=0, timeout=t)
        for topic in self._command_topics:
            # QoS 0: no PUBACK per message, so a flood costs the loop no send() per command (a lost
            # command is a lease not renewed: the operator's tool sees no result and sends again)
            await client.subscribe(topic, qos=0, timeout=t)
        if self.cfg.homeassistant_discovery:
            await client.subscribe(f"{self.discovery_prefix}/status", qos=0, timeout=t)
            await self._publish_discovery(client)
        await client.publish(self.tree.commands_state, to_json(self.commands.snapshot()), qos=1, retain=True, timeout=t)

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        limits = self.commands.limits if isinstance(self.commands.limits, CommandLimits) else None
        from powerctl.natures import Nature

        names = {n: [d.name for d in self.site.by_nature(n)] for n in (Nature.BATTERY, Nature.GENSET)}
        for topic, cfg in homeassistant_discovery(self.tree, limits, self.discovery_prefix,
                                                  batteries=names[Nature.BATTERY], gensets=names[Nature.GENSET]):
            await client.publish(topic, to_json(cfg), qos=1, retain=True, timeout=self.timeout_s)

    async def _sender(self, client: aiomqtt.Client) -> None:
        assert self._out_event is not None
        while True:
            while self._out:
                item = self._out[0]
                topic, payload, qos, retain = item
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=self.timeout_s)
                if self._out and self._out[0] is item:
                    self._out.popleft()  # only once the client took it: a lost connection keeps it queued
                self._counts["published"] += 1
            self._out_event.clear()
            await self._out_event.wait()

    async def _keepalive(self, client: aiomqtt.Client, topic: str, first: bytes, payload: bytes, period_s: float) -> None:
        # Venus: the first keep-alive asks for a full republish; later ones only keep the stream alive.
        body = first
        while True:
            await client.publish(topic, body, qos=0, retain=False, timeout=self.timeout_s)
            self._counts["keepalives"] += 1
            body = payload
            await asyncio.sleep(period_s)

    async def _lease_watch(self) -> None:
        """Publish the command state when a lease expires (the controller already sees it)."""
        shown = set(self.commands.active())
        while True:
            await asyncio.sleep(self.lease_check_s)
            now_active = set(self.commands.active())
            if now_active != shown:
                for name in shown - now_active:
                    log.warning("MQTT command %s expired (lease not renewed)", name)
                self._enqueue(self.tree.commands_state, to_json(self.commands.snapshot()), qos=1, retain=True)
                shown = now_active

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            self._on_message(msg.topic.value, msg.payload, retain=bool(msg.retain))
            await asyncio.sleep(0)  # a queue full of messages must not hold the loop (the guard) up

    def _on_message(self, topic: str, raw: Any, *, retain: bool = False) -> None:
        self._counts["received"] += 1
        payload = raw if isinstance(raw, bytes | bytearray) else b"" if raw is None else str(raw).encode()
        payload = bytes(payload)
        name = self._command_topics.get(topic)
        if len(payload) > self.cfg.max_payload_bytes:
            self._counts["oversize"] += 1
            log.warning("MQTT %s: payload of %d bytes over mqtt.max_payload_bytes (%d): dropped",
                        topic, len(payload), self.cfg.max_payload_bytes)
            if name:
                self._command_result(name, {"command": name, "accepted": False,
                                            "reason": f"payload over {self.cfg.max_payload_bytes} bytes"})
            return
        if name:
            self._on_command(name, topic, payload, retain)
            return
        if self.cfg.homeassistant_discovery and topic == f"{self.discovery_prefix}/status":
            if payload.strip() == b"online":  # HA restarted: it forgets non-retained discovery
                for t, cfg in homeassistant_discovery(self.tree, self.commands.limits, self.discovery_prefix):
                    self._enqueue(t, to_json(cfg), qos=1, retain=True)
            return
        if topic in self.sources.by_topic or topic in self.sources.availability:
            good, problems = self.sources.handle(topic, payload, self.image, self.clock())
            self._counts["device_updates"] += good
            if problems:
                self._counts["malformed"] += 1
                log.debug("MQTT %s: %s", topic, "; ".join(problems))
            return
        self._counts["unexpected"] += 1

    def _take_token(self) -> bool:
        """Token bucket over command messages (burst of one second's worth, at least 5)."""
        rate = self.cfg.command_rate_per_s
        tokens, at = self._bucket
        now = time.monotonic()
        tokens = min(max(5.0, rate), tokens + (now - at) * rate)
        ok = tokens >= 1.0
        self._bucket = (tokens - 1.0 if ok else tokens, now)
        return ok

    def _on_command(self, name: str, topic: str, payload: bytes, retain: bool) -> None:
        if not self._take_token():
            self._counts["commands_dropped"] += 1
            self._refusal_log(f"{name}:flood", f"MQTT command {name} dropped unread: more than "
                              f"{self.cfg.command_rate_per_s:g} command messages per second")
            return
        operator, res = self._authorise(name, topic, payload, retain)
        self._counts["commands_accepted" if res.accepted else "commands_refused"] += 1
        if res.accepted:
            log.info("MQTT command %s = %r by operator %s (%s)", name, res.value, operator, res.reason)
            self._command_result(name, {**res.as_dict(), "operator": operator})
            self._enqueue(self.tree.commands_state, to_json(self.commands.snapshot()), qos=1, retain=True)
            return
        # one log line per kind of refusal and command every 10 s: the kind is the reason without
        # its numbers and quoted parts (which a sender could vary to get past the limit)
        kind = re.sub(r"[\d.+-]+", "#", res.reason.split("'")[0].split("(")[0])[:48]
        if self._refusal_log(f"{name}:{kind}", f"MQTT command {name} refused (operator {operator}): {res.reason}"):
            self._command_result(name, {**res.as_dict(), "operator": operator})  # paced like the log

    def _authorise(self, name: str, topic: str, payload: bytes, retain: bool) -> tuple[str, CommandResult]:
        """(who, result): a signed command from a configured operator, applied; else refused."""
        if retain:
            # a retained command would act again at every reconnect and restart: never
            return "unknown", CommandResult(name, False, "retained command refused (publish commands with retain "
                                                         "off; the retained message stays on the broker)")
        try:
            auth = self.verifier.verify(topic, payload)
        except AuthError as exc:
            if not (self.cfg.allow_unsigned_commands and str(exc).startswith("unsigned")):
                return "unknown", CommandResult(name, False, f"not authorised: {exc}")
            try:
                value, lease_s = parse_command_payload(payload)
            except ValueError as perr:
                return "unsigned", CommandResult(name, False, str(perr))
            return "unsigned", self.commands.set(name, value, lease_s)
        return auth.operator, self.commands.set(name, auth.value, auth.lease_s)

    def _command_result(self, name: str, result: dict[str, Any]) -> None:
        self._enqueue(self.tree.command_result(name), to_json(result), qos=1, retain=False)
