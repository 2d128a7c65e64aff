"""Who may command the site: Ed25519-signed operator commands, checked by powerctl itself.

The broker's ACL decides who may *publish* on a command topic; this module decides whether a
command *acts*. Each operator has an Ed25519 key pair: the private key stays with the operator
(``powerctl command keygen`` writes it, mode 0600), the controller's config holds only the public
key (``[[mqtt.operators]]``), so nothing on the controller can forge a command.

A signed command is the JSON envelope ``{"body": "<JSON text>", "sig": "<base64>"}``; the
signature covers ``SIGN_CONTEXT + body`` and the body holds ``topic`` (the full set-topic: a
command for one site, module or command cannot be replayed on another), ``value``, optionally
``lease_s``, ``operator``, ``ts`` (Unix seconds) and ``nonce`` (16..64 characters of
``[A-Za-z0-9_-]``). Replay window: ``ts`` within ``window_s`` of now (either side), never before
this process started (a command captured before a restart cannot be replayed after it), and a nonce
seen within the window is refused. Nonces are remembered only after the signature checks out, until
their timestamp leaves the window, at most ``max_nonces`` of them (full: refuse, never forget one
early).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGN_CONTEXT = b"powerctl-command-v1\n"  # domain separation: this key signs nothing else by accident
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
BODY_KEYS = {"topic", "value", "lease_s", "operator", "ts", "nonce"}


class AuthError(ValueError):
    """A command refused by authorisation; the message says why (logged and published)."""


@dataclass(frozen=True, slots=True)
class Authorised:
    operator: str
    value: Any
    lease_s: float | None
    ts: float


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 raw bytes; ValueError saying what is wrong."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"public_key must be 32 bytes (Ed25519), got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_command(key: Ed25519PrivateKey, *, topic: str, value: Any, operator: str,
                 lease_s: float | None = None, ts: float | None = None, nonce: str | None = None) -> bytes:
    """The payload an operator publishes on ``topic`` (what ``powerctl command sign`` prints)."""
    body: dict[str, Any] = {"topic": topic, "value": value, "operator": operator,
                            "ts": time.time() if ts is None else ts,
                            "nonce": secrets.token_urlsafe(18) if nonce is None else nonce}
    if lease_s is not None:
        body["lease_s"] = lease_s
    text = json.dumps(body, separators=(",", ":"))
    sig = key.sign(SIGN_CONTEXT + text.encode())
    return json.dumps({"body": text, "sig": base64.b64encode(sig).decode()}, separators=(",", ":")).encode()


def _envelope(payload: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AuthError("unsigned command (not a signed JSON envelope)") from None
    if not isinstance(doc, dict) or set(doc) != {"body", "sig"} or not isinstance(doc["body"], str) \
            or not isinstance(doc["sig"], str):
        raise AuthError('unsigned command (needs exactly {"body": "...", "sig": "..."})')
    try:
        sig = base64.b64decode(doc["sig"], validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("signature is not base64") from None
    if len(sig) != 64:
        raise AuthError("signature is not 64 bytes (Ed25519)")
    return doc["body"], sig


def _body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise AuthError("signed body is not JSON") from None
    if not isinstance(body, dict):
        raise AuthError("signed body is not a JSON object")
    missing = {"topic", "value", "operator", "ts", "nonce"} - set(body)
    if missing:
        raise AuthError(f"signed body lacks {sorted(missing)}")
    unknown = set(body) - BODY_KEYS
    if unknown:
        raise AuthError(f"signed body has unknown key(s) {sorted(unknown)}")
    return body


class CommandVerifier:
    """Checks signed commands against the configured operators' public keys; see module docstring.

    ``clock``: Unix seconds (operators sign with wall time). ``started_at_s``: commands signed
    before it are refused (default: when the verifier was made).
    """

    def __init__(self, operators: Mapping[str, Ed25519PublicKey], *, window_s: float = 30.0,
                 max_nonces: int = 4096, clock: Callable[[], float] = time.time,
                 started_at_s: float | None = None) -> None:
        self.operators = dict(operators)
        self.window_s = window_s
        self.max_nonces = max_nonces
        self.clock = clock
        self.started_at_s = clock() if started_at_s is None else started_at_s
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after (clock s)

    def verify(self, topic: str, payload: bytes) -> Authorised:
        """The authorised command, or AuthError with the reason (never any other exception)."""
        text, sig = _envelope(payload)
        body = _body(text)
        name = body["operator"]
        key = self.operators.get(name) if isinstance(name, str) else None
        if key is None:
            raise AuthError(f"unknown operator {str(name)[:64]!r}")
        try:
            key.verify(sig, SIGN_CONTEXT + text.encode())
        except InvalidSignature:
            raise AuthError(f"bad signature for operator {name!r}") from None
        # from here on the body is the operator's own words
        if body["topic"] != topic:
            raise AuthError(f"signed for topic {str(body['topic'])[:128]!r}, received on {topic!r}")
        ts = body["ts"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(float(ts)):
            raise AuthError("ts must be a number (Unix seconds)")
        now = self.clock()
        if abs(now - ts) > self.window_s:
            raise AuthError(f"timestamp {now - ts:+.1f} s old, outside the {self.window_s:g} s replay window")
        if ts < self.started_at_s:
            raise AuthError("signed before this daemon started (a replay across a restart?)")
        nonce = body["nonce"]
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise AuthError("nonce must be 16..64 characters of [A-Za-z0-9_-]")
        self._forget_old(now)
        if nonce in self._nonces:
            raise AuthError("nonce already used (replayed command)")
        if len(self._nonces) >= self.max_nonces:
            raise AuthError(f"more than {self.max_nonces} commands within the replay window")
        self._nonces[nonce] = float(ts) + self.window_s
        lease = body.get("lease_s")
        if lease is not None and (isinstance(lease, bool) or not isinstance(lease, int | float)):
            raise AuthError("lease_s must be a number of seconds")
        return Authorised(name, body["value"], None if lease is None else float(lease), float(ts))

    def _forget_old(self, now: float) -> None:
        # insertion order is not expiry order (timestamps may arrive out of order): scan when needed
        if self._nonces and len(self._nonces) >= self.max_nonces // 2:
            for n in [n for n, until in self._nonces.items() if until < now]:
                del self._nonces[n]

    @property
    def nonces_held(self) -> int:
        return len(self._nonces)


class RateLimitedLog:
    """At most one line per key every ``period_s``; the next says how many were held back."""

    def __init__(self, emit: Callable[[str], None], period_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged within the period; True when it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1024:  # keys come from a fixed set of reasons; bound it anyway
            self._last = {k: v for k, v in self._last.items() if now - v < self.period_s}
        self.emit(message + (f" ({held} more like it in the last {now - last:.0f} s)" if held and last else ""))
        return True
