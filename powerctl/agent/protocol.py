"""The wire between the controller and the node agents: length-prefixed JSON over mutual TLS 1.3.

Frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object; at most
``MAX_FRAME_BYTES``). One reply frame per request frame, in order, on a connection that stays open.

Every request carries ``client`` (a random name per controller process: the daemon, the watchdog
and ``apply-safe-caps`` share one certificate), ``seq`` (an integer that only goes up per
certificate identity and client) and ``ts`` (the sender's wall clock, s). The agent refuses a
``seq`` not above the last one it took from that identity and client, and a ``ts`` older than the
agent's own start or further than ``max_skew_s`` from its clock: so a captured request cannot be
played again, not even to an agent that restarted since. A client silent for ``max_skew_s`` is
forgotten safely: any request of its would be refused for its time anyway.

Requests (no other keys accepted):

    {"op": "state", "client": C, "seq": S, "ts": T}
        -> {"ok": true, "node": NAME, "gpus": [{index, name, uuid, min_w, max_w, safe_w, power_w, energy_j,
            requested_w, enforced_w}], "lease_s_left": L, "health": {...}}
    {"op": "set", "client": C, "seq": S, "ts": T, "caps_w": [W0, W1, ...], "lease_s": D}
        -> {"ok": ..., "node": NAME, "requested_w": [...], "enforced_w": [...], "power_w": [...],
            "energy_j": [...], "set_ok": [...], "message": [...], "lease_s_left": L}: one column per
           field, one entry per GPU; the limits are the backend's read-back after setting (the GPU
           list's fixed fields come with ``state``). The lease ends at ``ts + lease_s`` (shortened
           to the agent's ``max_lease_s``).

A refusal is ``{"ok": false, "error": "<why>"}`` and nothing else.
"""

from __future__ import annotations

import json
import math
import re
import ssl
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MAX_FRAME_BYTES = 64 * 1024  # a set for 64 GPUs is ~1.5 kB
_HEADER = struct.Struct(">I")
_CLIENT = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_CLIENTS = 4096  # per agent, after forgetting the silent ones
OPS: dict[str, frozenset[str]] = {
    "state": frozenset({"op", "client", "seq", "ts"}),
    "set": frozenset({"op", "client", "seq", "ts", "caps_w", "lease_s"}),
}


class Refused(ValueError):
    """A request the agent will not carry out; the message is the whole reply."""


class FrameError(ValueError):
    """The byte stream cannot be framed (over the size limit, truncated): the connection ends."""


def encode(doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes is over {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {n} bytes is over {MAX_FRAME_BYTES}")
    return int(n)


def _no_constants(name: str) -> Any:
    raise Refused(f"{name} is not a number the agent accepts")


def _number(doc: dict[str, Any], key: str) -> float:
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise Refused(f"{key} must be a finite number")
    return float(v)


def parse_request(body: bytes, gpu_count: int) -> dict[str, Any]:
    """A validated request (op known, exactly its keys, types right); Refused otherwise."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except Refused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused("request is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise Refused("request must be a JSON object")
    op = doc.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Refused(f"op must be one of {', '.join(OPS)}")
    if set(doc) != OPS[op]:
        raise Refused(f"op {op!r} takes exactly the keys {sorted(OPS[op])}")
    if not isinstance(doc["client"], str) or not _CLIENT.fullmatch(doc["client"]):
        raise Refused("client must be 1-64 letters, digits or '-'")
    if isinstance(doc["seq"], bool) or not isinstance(doc["seq"], int) or not 0 < doc["seq"] < 2**63:
        raise Refused("seq must be a positive integer")
    _number(doc, "ts")
    if op == "set":
        if _number(doc, "lease_s") <= 0:
            raise Refused("lease_s must be above 0")
        caps = doc["caps_w"]
        if not isinstance(caps, list) or len(caps) != gpu_count:
            raise Refused(f"caps_w must be a list of {gpu_count} numbers (one per GPU of this node)")
        for c in caps:
            if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
                raise Refused("caps_w holds something that is not a finite number of watts")
    return doc


class ReplayGuard:
    """Per (controller identity, client): ``seq`` strictly increasing; ``ts`` not before the agent's
    start and within ``max_skew_s`` of the agent's clock. Pure: the clock is passed in."""

    def __init__(self, start_wall_s: float, max_skew_s: float) -> None:
        self.start_wall_s = start_wall_s
        self.max_skew_s = max_skew_s
        self.last: dict[tuple[str, str], tuple[int, float]] = {}  # -> (last seq, its ts)

    def check(self, identity: str, client: str, seq: int, ts: float, now_wall_s: float) -> None:
        if ts < self.start_wall_s - 1e-3:
            raise Refused("request older than this agent's start (replay?)")
        if abs(ts - now_wall_s) > self.max_skew_s:
            raise Refused(f"request time is {ts - now_wall_s:+.1f} s from the agent's clock "
                          f"(over {self.max_skew_s:g} s: replay, or clocks not synchronised)")
        key = (identity, client)
        if seq <= self.last.get(key, (0, 0.0))[0]:
            raise Refused("sequence number already used (replay or out of order)")
        if key not in self.last and len(self.last) >= MAX_CLIENTS:
            horizon = now_wall_s - self.max_skew_s  # requests from before this are refused anyway
            self.last = {k: v for k, v in self.last.items() if v[1] >= horizon}
            if len(self.last) >= MAX_CLIENTS:
                raise Refused(f"over {MAX_CLIENTS} clients active at once")
        self.last[key] = (seq, ts)


# --- TLS -------------------------------------------------------------------------------------


def _context(purpose: ssl.Purpose, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """The agent's side: TLS 1.3 only, a client certificate from the site CA required."""
    return _context(ssl.Purpose.CLIENT_AUTH, ca, cert, key)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """The controller's side: TLS 1.3 only, the agent's certificate checked against the site CA
    and its node name (``server_hostname``)."""
    ctx = _context(ssl.Purpose.SERVER_AUTH, ca, cert, key)
    ctx.check_hostname = True
    return ctx


def peer_names(cert: dict[str, Any] | None) -> set[str]:
    """CN and DNS SANs of a verified peer certificate (``SSLObject.getpeercert()``)."""
    if not cert:
        return set()
    names = {v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"}
    names |= {v for k, v in cert.get("subjectAltName", ()) if k == "DNS"}
    return names


def allowed_identity(names: Iterable[str], allowed: Iterable[str]) -> str | None:
    """The first of the peer's names the agent's config allows, or None."""
    allowed_set = set(allowed)
    return next((n for n in sorted(names) if n in allowed_set), None)
