"""``powerctl capsetter site.toml``: the only privileged part of powerctl (the pattern of Zeus's zeusd).

Setting a GPU power limit needs root or CAP_SYS_ADMIN; nothing else the controller does needs
either. So the daemon runs unprivileged with ``gpu.backend = "socket"`` and asks this small process
over a Unix socket. The cap-setter trusts nothing the client says about limits: it reads the site
TOML itself (its own copy, which the daemon's user must not be able to write) and refuses every cap
outside ``[gpu.min_w, gpu.max_w]`` intersected with the GPU's own range. It drives the real backend
(``gpu.capsetter_backend``: NVML in production, simulated for tests) and reports what the driver
reads back. It does nothing on its own: it never changes a cap unless asked, and leaves caps as they
are when it stops (the watchdog and the boot unit own the fail-safe paths).

Protocol: one JSON object per line (UTF-8, ``\\n``-terminated, at most ``MAX_REQUEST_BYTES``),
one JSON reply line per request, in order. Requests (no other keys are accepted):

    {"op": "list"}                        -> {"ok": true, "gpus": [{index, name, uuid, min_w, max_w, default_w}]}
    {"op": "power", "gpu": 0}             -> {"ok": true, "gpu": 0, "w": 312.5}
    {"op": "energy", "gpu": 0}            -> {"ok": true, "gpu": 0, "j": 1.2e6}
    {"op": "limits", "gpu": 0}            -> {"ok": true, "gpu": 0, "requested_w": 300, "enforced_w": 300}
    {"op": "set", "gpu": 0, "w": 250}     -> {"ok": true, "gpu": 0, "requested_w": 250, "readback_w": 250,
                                              "enforced_w": 250, "outside_limit": false, "message": ""}

``list`` reports each GPU's range as the cap-setter will accept it (config range x device range).
A refusal is ``{"ok": false, "error": "<why>"}``; the connection stays open, except after a line
over the size limit (the rest of it cannot be framed), which is refused and then closed. NaN and
Infinity literals, booleans as numbers, unknown keys and unknown ops are all refused. A line must
be complete ``REQUEST_TIMEOUT_S`` after its first byte and a connection may idle ``IDLE_TIMEOUT_S``;
each peer uid holds at most ``MAX_PER_UID`` connections (see the constants below).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import math
import os
import socket
import stat
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powerctl.config import ConfigError, SiteConfig, load_config
from powerctl.gpu.base import GpuBackend, GpuError, GpuInfo
from powerctl.gpu.factory import make_backend
from powerctl.gpu.socket import DEFAULT_SOCKET_PATH
from powerctl.stop import stop_on_signals

log = logging.getLogger("powerctl.capsetter")

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 512  # the longest valid request is ~60 bytes
# Connections: the daemon, the watchdog, apply-safe-caps, an operator. Each peer uid (SO_PEERCRED)
# holds at most MAX_PER_UID; a new connection from a uid at its quota closes that uid's least
# recently active one, so no client can lock another uid out, and a restarted daemon is never
# locked out by its own stale connections. MAX_CONNECTIONS bounds the total (a new uid beyond it
# is refused: it takes MAX_CONNECTIONS // MAX_PER_UID distinct uids to get there).
MAX_PER_UID = 4
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 30.0  # nothing sent for this long: closed (the socket backend reconnects on its own)
REQUEST_TIMEOUT_S = 2.0  # a request line must be complete this long after its first byte
OPS: dict[str, frozenset[str]] = {
    "list": frozenset(),
    "power": frozenset({"gpu"}),
    "energy": frozenset({"gpu"}),
    "limits": frozenset({"gpu"}),
    "set": frozenset({"gpu", "w"}),
}


class Refused(ValueError):
    """A request the cap-setter will not carry out; the message goes back to the client."""


def socket_path_of(cfg: SiteConfig) -> str:
    return cfg.gpu.socket_path or DEFAULT_SOCKET_PATH


def _no_constants(name: str) -> Any:
    raise Refused(f"{name} is not a number this cap-setter accepts")


def parse_request(line: bytes) -> dict[str, Any]:
    """A validated request object (op known, exactly its keys, types right); Refused otherwise.
    Range checks against the limits happen in ``CapSetter.handle``."""
    if len(line) > MAX_REQUEST_BYTES:
        raise Refused(f"request over {MAX_REQUEST_BYTES} bytes")
    try:
        doc = json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise Refused("request is not UTF-8") from None
    except Refused:
        raise
    except (ValueError, RecursionError) as exc:
        raise Refused(f"request is not JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict):
        raise Refused("request must be a JSON object")
    op = doc.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Refused(f"op must be one of {', '.join(OPS)} (got {str(op)[:40]!r})")
    keys = set(doc) - {"op"}
    if keys != OPS[op]:
        missing, extra = sorted(OPS[op] - keys), sorted(keys - OPS[op])
        raise Refused(f"op {op!r} takes exactly {sorted(OPS[op]) or 'no other keys'}"
                      + (f"; missing {missing}" if missing else "") + (f"; unknown {[k[:20] for k in extra]}" if extra else ""))
    if "gpu" in doc and (isinstance(doc["gpu"], bool) or not isinstance(doc["gpu"], int)):
        raise Refused("gpu must be an integer index")
    if "w" in doc:
        w = doc["w"]
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise Refused("w must be a number of watts")
        if isinstance(w, float) and not math.isfinite(w):
            raise Refused("w must be finite")
    return doc


@dataclass(frozen=True)
class Range:
    lo_w: float
    hi_w: float


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


class CapSetter:
    """The request handler (no I/O of its own) plus the Unix socket server around it."""

    def __init__(self, cfg: SiteConfig, backend: GpuBackend, *, config_path: str | Path = "<config>") -> None:
        self.cfg = cfg
        self.backend = backend
        self.config_path = str(config_path)
        self.infos: list[GpuInfo] = backend.list_gpus()
        self.ranges = [
            Range(max(cfg.gpu.min_w, i.min_w), min(cfg.gpu.max_w, i.max_w)) for i in self.infos
        ]
        self._lock = asyncio.Lock()  # one backend call at a time (NVML takes a global lock anyway)
        self._conns: dict[asyncio.StreamWriter, _Conn] = {}
        self.counts = {"connections": 0, "requests": 0, "sets": 0, "refused": 0, "oversize": 0, "busy": 0}

    # --- requests -----------------------------------------------------------------------------

    def _gpu(self, doc: dict[str, Any]) -> int:
        i = int(doc["gpu"])
        if not 0 <= i < len(self.infos):
            raise Refused(f"GPU {i} does not exist (this host has {len(self.infos)}: 0..{len(self.infos) - 1})"[:200])
        return i

    def handle(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Carry out one parsed request (blocking backend calls); Refused for out-of-limit asks."""
        op = doc["op"]
        if op == "list":
            return {"ok": True, "protocol": PROTOCOL_VERSION, "gpus": [
                {"index": i.index, "name": i.name, "uuid": i.uuid, "min_w": r.lo_w, "max_w": r.hi_w,
                 "default_w": i.default_w} for i, r in zip(self.infos, self.ranges, strict=True)
            ]}
        i = self._gpu(doc)
        if op == "power":
            return {"ok": True, "gpu": i, "w": _finite(self.backend.read_power_w(i))}
        if op == "energy":
            return {"ok": True, "gpu": i, "j": _finite(self.backend.read_energy_j(i))}
        if op == "limits":
            req, enf = self.backend.read_limits_w(i)
            return {"ok": True, "gpu": i, "requested_w": _finite(req), "enforced_w": _finite(enf)}
        # op == "set": the limits are ours, from our own config, whatever the client believes
        w, r = doc["w"], self.ranges[i]
        if r.lo_w > r.hi_w:
            raise Refused(f"GPU {i}: its range [{self.infos[i].min_w:g}, {self.infos[i].max_w:g}] W does not "
                          f"meet gpu.[min_w, max_w] in {self.config_path}: no cap can be set")
        if not r.lo_w <= w <= r.hi_w:  # exact for ints of any size: no float overflow
            shown = f"{w:g}" if isinstance(w, float) or abs(w) < 10**15 else "a huge number of"
            raise Refused(f"GPU {i}: {shown} W is outside the cap-setter's limits [{r.lo_w:g}, {r.hi_w:g}] W "
                          f"(gpu.min_w/max_w in {self.config_path} and the GPU's own range)")
        res = self.backend.set_cap_w(i, float(w))
        self.counts["sets"] += 1
        return {"ok": res.ok, "gpu": i, "requested_w": res.requested_w, "readback_w": _finite(res.readback_w),
                "enforced_w": _finite(res.enforced_w), "outside_limit": res.outside_limit, "message": res.message,
                **({} if res.ok else {"error": res.message or "the driver did not take the cap"})}

    async def answer(self, line: bytes, peer: str = "") -> dict[str, Any]:
        """Parse + handle one request line; never raises (refusals and backend errors become replies)."""
        self.counts["requests"] += 1
        try:
            doc = parse_request(line)
            async with self._lock:
                reply = await asyncio.to_thread(self.handle, doc)
            if doc["op"] == "set":
                (log.debug if reply["ok"] else log.warning)("%sset GPU %s to %s W: %s", peer, doc["gpu"], doc["w"],
                                                           "ok" if reply["ok"] else reply.get("error"))
            return reply
        except Refused as exc:
            self.counts["refused"] += 1
            log.warning("%srefused: %s", peer, exc)
            return {"ok": False, "error": str(exc)}
        except (GpuError, IndexError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a backend bug must not kill the only process that can set caps
            log.exception("%sbackend error", peer)
            return {"ok": False, "error": f"backend error: {type(exc).__name__}: {exc}"}

    # --- the socket ---------------------------------------------------------------------------

    @property
    def _connections(self) -> int:
        return len(self._conns)

    def _admit(self, writer: asyncio.StreamWriter, uid: int | None) -> str | None:
        """Register a connection (evicting this uid's least recently active one at its quota);
        the refusal text when the total is full."""
        mine = sorted((c for c in self._conns.values() if c.uid == uid), key=lambda c: c.active_s)
        if len(mine) >= MAX_PER_UID:
            oldest = mine[0]
            log.warning("uid %s: %d connections already: closing its least recently active one", uid, len(mine))
            self.counts["evicted"] = self.counts.get("evicted", 0) + 1
            oldest.writer.transport.abort()
            del self._conns[oldest.writer]
        elif len(self._conns) >= MAX_CONNECTIONS:
            return f"busy: {MAX_CONNECTIONS} connections already"
        self._conns[writer] = _Conn(writer, uid, time.monotonic())
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid, peer = _peer(writer)
        refusal = self._admit(writer, uid)
        if refusal is not None:
            self.counts["busy"] += 1
            log.warning("%sconnection refused: %s", peer, refusal)
            with contextlib.suppress(Exception):
                await _send(writer, {"ok": False, "error": refusal})
            await _close(writer)
            return
        self.counts["connections"] += 1
        log.info("%sconnected", peer)
        try:
            await self._serve_lines(reader, writer, peer)
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self._conns.pop(writer, None)
            await _close(writer)
            log.info("%sdisconnected", peer)

    async def _serve_lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        """Frame and answer lines until the client goes, idles, dawdles mid-line or oversteps the size."""
        buf = bytearray()
        first_byte_s = 0.0
        while True:
            while (nl := buf.find(b"\n")) < 0:
                if len(buf) > MAX_REQUEST_BYTES:
                    self.counts["oversize"] += 1
                    self.counts["refused"] += 1
                    log.warning("%srefused: request over %d bytes; closing", peer, MAX_REQUEST_BYTES)
                    await _send(writer, {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes; closing"})
                    return
                wait_s = IDLE_TIMEOUT_S if not buf else first_byte_s + REQUEST_TIMEOUT_S - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.0, wait_s)):
                        chunk = await reader.read(MAX_REQUEST_BYTES + 1)
                except TimeoutError:
                    if buf:
                        self.counts["slow"] = self.counts.get("slow", 0) + 1
                        log.warning("%sclosed: request incomplete after %.0f s", peer, REQUEST_TIMEOUT_S)
                    return
                if not chunk:
                    if buf.strip():
                        await _send(writer, {"ok": False, "error": "request without a newline at the end"})
                    return
                if not buf:
                    first_byte_s = time.monotonic()
                buf += chunk
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            first_byte_s = time.monotonic()  # what follows in the buffer starts its clock now
            conn = self._conns.get(writer)
            if conn is not None:
                conn.active_s = time.monotonic()
            if len(line) > MAX_REQUEST_BYTES:
                self.counts["oversize"] += 1
                self.counts["refused"] += 1
                await _send(writer, {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes; closing"})
                return
            if not line.strip():
                continue
            await _send(writer, await self.answer(line.rstrip(b"\r"), peer))

    async def serve(self, path: str | Path, stop: asyncio.Event, *, mode: int = 0o660, group: str | None = None) -> None:
        """Listen on ``path`` (mode/group applied before anyone can connect) until ``stop`` is set."""
        sock = bind_socket(path, mode=mode, group=group)
        server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST_BYTES + 1)
        log.info("cap-setter listening on %s (mode %#o) for %d GPU(s), limits from %s",
                 path, mode, len(self.infos), self.config_path)
        try:
            async with server:
                await stop.wait()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


def bind_socket(path: str | Path, *, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``/``group``.

    The socket is bound, chowned and chmodded inside a fresh private directory (0700, ours) and only
    then renamed to ``path``: rename never follows a symlink at its target, and nobody can swap the
    socket for a link while we set its mode (chmod follows links). The directory of ``path`` must
    not be writable by anyone who is not us (``check_private_dir``). A stale socket at ``path`` is
    replaced; anything else there is an error (never replace a file we did not make)."""
    p = Path(path)
    check_private_dir(p.parent, what="socket directory")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{p} exists and is not a socket: refusing to replace it")
    private = Path(tempfile.mkdtemp(prefix=".capsetter-", dir=p.parent))  # mode 0700
    inner = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # no window in which the socket is accessible to anyone but us
        try:
            sock.bind(str(inner))
        finally:
            os.umask(old)
        if group is not None:
            try:
                os.chown(inner, -1, grp.getgrnam(group).gr_gid)
            except KeyError:
                raise OSError(f"gpu.socket_group: no group named {group!r}") from None
        os.chmod(inner, mode)
        os.rename(inner, p)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            inner.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            private.rmdir()
    sock.listen(16)
    sock.setblocking(False)
    return sock


def check_private_dir(directory: Path, *, what: str) -> None:
    """``directory`` and every directory above it: no one but root (and us) may rename entries in it
    (not writable by group/others, unless sticky and root-owned like /tmp), and, when running as
    root, owned by root. ConfigError naming the directory otherwise."""
    me = os.geteuid()
    for d in [directory.resolve(), *directory.resolve().parents]:
        st = os.stat(d)
        if st.st_uid not in (0, me):
            raise ConfigError(f"{d}: {what} owned by uid {st.st_uid}: whoever owns it can swap what is in it; "
                              "chown root it")
        open_to_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if open_to_others and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
            raise ConfigError(f"{d}: {what} writable by group or others (mode {stat.filemode(st.st_mode)}): "
                              "they could replace what is in it; chmod go-w it")


def _peer(writer: asyncio.StreamWriter) -> tuple[int | None, str]:
    """(uid, 'uid U pid P: ') from SO_PEERCRED (Linux); (None, '') where unavailable."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid, f"uid {uid} pid {pid}: "
    except (OSError, AttributeError):
        return None, ""


@dataclass
class _Conn:
    writer: asyncio.StreamWriter
    uid: int | None
    active_s: float  # monotonic time of its last complete request (or its connect)


async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(json.dumps(reply, allow_nan=False, separators=(",", ":")).encode() + b"\n")
    async with asyncio.timeout(5.0):  # a client that does not read its replies is dropped
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def check_config_file(path: Path) -> None:
    """The cap-setter's limits are only worth something if its client cannot edit them: refuse a
    config writable by group or others, and, when running as root, one not owned by root; the same
    for its directory and those above (a writable directory lets a client swap the file)."""
    st = os.stat(path)
    check_private_dir(path.resolve().parent, what="config directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: writable by group or others (mode {stat.filemode(st.st_mode)}): the cap-setter's "
                          "limits must not be editable by its clients; chmod go-w it")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not root: the cap-setter runs as root and takes its "
                          "limits only from a root-owned config; chown root it")


def load_capsetter(config: str | Path) -> tuple[SiteConfig, CapSetter]:
    """Config + backend + handler; ConfigError or GpuError with a message for the operator."""
    path = Path(config)
    cfg = load_config(path)
    check_config_file(path)
    backend = make_backend(cfg.gpu.model_copy(update={"backend": cfg.gpu.capsetter_backend}))
    return cfg, CapSetter(cfg, backend, config_path=path)


def main_capsetter(config: str | Path) -> int:
    """``powerctl capsetter``: serve until SIGTERM/SIGINT. Exit 0, or 2 for a config/GPU/socket problem."""
    try:
        cfg, setter = load_capsetter(config)
    except (ConfigError, GpuError) as exc:
        print(f"capsetter: {exc}", flush=True)
        return 2

    async def run() -> None:
        await setter.serve(socket_path_of(cfg), stop_on_signals(), mode=cfg.gpu.socket_mode, group=cfg.gpu.socket_group)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"capsetter: {exc}", flush=True)
        return 2
    except OSError as exc:
        print(f"capsetter: socket {socket_path_of(cfg)}: {exc.strerror or exc}", flush=True)
        return 2
    return 0
