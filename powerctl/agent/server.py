"""``powerctl agent agent.toml``: the privileged service on each GPU server.

Order at start: read the config, open the GPUs, put every GPU at min(safe cap, what it holds)
(before the network is even opened), then listen. It takes only the requests of
``powerctl.agent.protocol`` from the controller identities in its own config, holds every cap it is
given to its own limits, and holds it for one lease: when no renewal comes in time, it lowers every
GPU to min(safe cap, held) by itself. It never raises a cap on its own.

A refused peer (no certificate, another CA's, an identity not in ``allowed_controllers``, a replay)
gets a TLS alert or a single refusal frame, and a WARNING line in the log naming the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from powerctl.agent.config import Agent, AgentBackend, load_agent_config
from powerctl.agent.lease import Lease, fallback_caps_w
from powerctl.agent.protocol import (
    FrameError,
    Refused,
    ReplayGuard,
    allowed_identity,
    encode,
    frame_length,
    parse_request,
    peer_names,
    server_context,
)
from powerctl.config import ConfigError
from powerctl.gpu.base import CapResult, GpuBackend, GpuError, clamp_w
from powerctl.stop import stop_on_signals

log = logging.getLogger("powerctl.agent")

HANDSHAKE_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 16
SIM_SAMPLE_S = 0.01  # the simulated backend's clock step (see sample_clock)


@dataclass
class Counts:
    requests: int = 0
    sets: int = 0
    refused: int = 0
    fallbacks: int = 0
    errors: list[str] = field(default_factory=list)


def _num(v: float | None) -> float | None:
    """A reading for the wire, to NVML's own resolution (mW, mJ): 17-digit floats cost the
    controller a third more JSON decoding per node and carry nothing NVML measured."""
    return None if v is None or v != v or v in (float("inf"), float("-inf")) else round(float(v), 3)


class AgentCore:
    """Requests, lease and limits (no network): what the server runs for each frame."""

    def __init__(self, cfg: Agent, backend: GpuBackend, *, mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg, self.backend, self.mono, self.wall = cfg, backend, mono, wall
        self.infos = backend.list_gpus()
        self.ranges = [(max(cfg.min_w, i.min_w), min(cfg.max_w, i.max_w)) for i in self.infos]
        for info, (lo, hi) in zip(self.infos, self.ranges, strict=True):
            if lo > hi:
                raise GpuError(f"GPU {info.index}: its range [{info.min_w:g}, {info.max_w:g}] W does not meet "
                               f"agent.[min_w, max_w] = [{cfg.min_w:g}, {cfg.max_w:g}] W")
        self.safe_w = [clamp_w(cfg.safe_cap_w, lo, hi) for lo, hi in self.ranges]
        self.lease = Lease(cfg.max_lease_s)
        self.replay = ReplayGuard(wall(), cfg.max_skew_s)
        self.counts = Counts()
        self.started_s = mono()

    def fall_back(self, why: str) -> list[CapResult]:
        """Every GPU to min(safe, held): at start and when the lease runs out."""
        held: list[float | None] = []
        for i in range(len(self.infos)):
            try:
                held.append(self.backend.read_limits_w(i)[0])
            except Exception as exc:  # unreadable: the safe cap itself
                log.warning("GPU %d: limit unreadable (%s): safe cap", i, exc)
                held.append(None)
        results = [self._set(i, c) for i, c in enumerate(fallback_caps_w(held, self.safe_w))]
        self.counts.fallbacks += 1
        bad = [r.message for r in results if not r.ok]
        (log.error if bad else log.warning)("%s: GPUs to the safe cap (%s W)%s", why,
                                            ", ".join(f"{r.requested_w:g}" for r in results),
                                            ("; FAILED: " + "; ".join(bad)) if bad else "")
        return results

    def _set(self, i: int, cap_w: float) -> CapResult:
        try:
            return self.backend.set_cap_w(i, cap_w)
        except Exception as exc:
            return CapResult(i, cap_w, None, None, False, f"GPU {i}: {exc}")

    def tick(self) -> None:
        if self.lease.expired(self.mono()):
            self.fall_back("lease expired without renewal")

    def state(self) -> dict[str, Any]:
        gpus = []
        for info, (lo, hi), safe in zip(self.infos, self.ranges, self.safe_w, strict=True):
            i = info.index
            row: dict[str, Any] = {"index": i, "name": info.name, "uuid": info.uuid, "min_w": lo, "max_w": hi,
                                   "safe_w": safe}
            try:
                req, enf = self.backend.read_limits_w(i)
                row.update(power_w=_num(self.backend.read_power_w(i)), energy_j=_num(self.backend.read_energy_j(i)),
                           requested_w=_num(req), enforced_w=_num(enf))
            except Exception as exc:
                row.update(power_w=None, energy_j=None, requested_w=None, enforced_w=None, error=str(exc)[:200])
            gpus.append(row)
        now = self.mono()
        c = self.counts
        return {"ok": True, "node": self.cfg.name, "gpus": gpus, "lease_s_left": self.lease.left_s(now),
                "health": {"uptime_s": now - self.started_s, "backend": self.backend.name, "requests": c.requests,
                           "sets": c.sets, "refused": c.refused, "fallbacks": c.fallbacks}}

    def _held(self, r: CapResult) -> tuple[float | None, float | None]:
        """What GPU ``r.index`` holds after its set: the set's own read-back; for a set that
        failed without one, the limits read again (they may still be readable)."""
        if r.readback_w is not None or r.enforced_w is not None:
            return r.readback_w, r.enforced_w
        try:
            return self.backend.read_limits_w(r.index)
        except Exception:
            return None, None

    def handle(self, identity: str, body: bytes) -> dict[str, Any]:
        """One request frame -> one reply; Refused is raised (the caller logs it and answers it)."""
        self.counts.requests += 1
        doc = parse_request(body, len(self.infos))
        self.replay.check(identity, doc["client"], doc["seq"], float(doc["ts"]), self.wall())
        if doc["op"] == "state":
            return self.state()
        caps = [clamp_w(float(c), lo, hi) for c, (lo, hi) in zip(doc["caps_w"], self.ranges, strict=True)]
        # The lease counts from the request's own time, so a request held up in the network cannot
        # stretch it: the controller knows when every lease it sent ends, answered or not.
        left_s = float(doc["ts"]) + float(doc["lease_s"]) - self.wall()
        if left_s <= 0:
            raise Refused("the lease ran out before the request arrived")
        results = [self._set(i, c) for i, c in enumerate(caps)]
        for i, (asked, c) in enumerate(zip(doc["caps_w"], caps, strict=True)):
            if asked != c and results[i].ok:
                lo, hi = self.ranges[i]
                results[i] = replace(results[i], message=f"GPU {i}: {asked:g} W held to this agent's "
                                     f"[{lo:g}, {hi:g}] W. {results[i].message}".strip())
        self.lease.grant(left_s, self.mono())
        self.counts.sets += 1
        for r in results:
            if not r.ok:
                log.error("%s: %s", identity, r.message)
        return self.set_reply(results)

    def set_reply(self, results: list[CapResult]) -> dict[str, Any]:
        """The reply to a set: per GPU, column by column, the limits the backend read back after
        setting (``CapResult``: NVML's own read-back, since its Set ignores the driver's return
        code), power and energy now, and whether each set took. The GPU list's fixed fields (name,
        uuid, range) are left to ``state``: 417 bytes for 8 GPUs instead of a full state's 1,797,
        which cut the controller's JSON decoding from 16 % to 6 % of its CPU in bench/guard_fleet.py."""
        held = [self._held(r) for r in results]
        power: list[float | None] = []
        energy: list[float | None] = []
        for i in range(len(self.infos)):
            try:
                power.append(_num(self.backend.read_power_w(i)))
                energy.append(_num(self.backend.read_energy_j(i)))
            except Exception:  # the set's own read-back still goes out; power counts as unknown
                power.append(None)
                energy.append(None)
        return {"ok": all(r.ok for r in results), "node": self.cfg.name,
                "requested_w": [_num(h[0]) for h in held], "enforced_w": [_num(h[1]) for h in held],
                "power_w": power, "energy_j": energy, "set_ok": [r.ok for r in results],
                "message": [r.message[:200] for r in results], "lease_s_left": self.lease.left_s(self.mono())}


class AgentServer:
    """The TLS listener around ``AgentCore``."""

    def __init__(self, core: AgentCore, ctx: ssl.SSLContext) -> None:
        self.core, self.ctx = core, ctx
        self._lock = asyncio.Lock()
        self._connections = 0
        self._lease_moved = asyncio.Event()
        self._offload = core.backend.name == "nvml"  # NVML calls can block; the simulated ones do not

    async def _call(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        async with self._lock:
            return await asyncio.to_thread(fn) if self._offload else fn()

    def _refuse(self, peer: str, why: str) -> None:
        self.core.counts.refused += 1
        log.warning("refused %s: %s", peer, why)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        try:
            if self._connections >= MAX_CONNECTIONS:
                self._refuse(peer, f"already {MAX_CONNECTIONS} connections")
                return
            self._connections += 1
            try:
                await writer.start_tls(self.ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                self._refuse(peer, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
                return
            finally:
                self._connections -= 1
            sslobj = writer.get_extra_info("ssl_object")
            names = peer_names(sslobj.getpeercert() if sslobj is not None else None)
            identity = allowed_identity(names, self.core.cfg.allowed_controllers)
            if identity is None:
                self._refuse(peer, f"certificate {sorted(names)} is not an allowed controller")
                await self._send(writer, {"ok": False, "error": "not an allowed controller"})
                return
            self._connections += 1
            try:
                await self._serve(reader, writer, f"{identity}@{peer}", identity)
            finally:
                self._connections -= 1
        except (ConnectionError, OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                     identity: str) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    n = frame_length(await reader.readexactly(4))
                    body = await reader.readexactly(n)
            except asyncio.IncompleteReadError:
                return
            except FrameError as exc:
                self._refuse(peer, str(exc))
                await self._send(writer, {"ok": False, "error": str(exc)})
                return
            expires = self.core.lease.expires_s
            try:
                reply = await self._call(functools.partial(self.core.handle, identity, body))
            except Refused as exc:
                self._refuse(peer, str(exc))
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a backend bug must not end the process that holds the lease
                log.exception("%s: request failed", peer)
                reply = {"ok": False, "error": f"agent error: {type(exc).__name__}"}
            moved = self.core.lease.expires_s
            if moved is not None and (expires is None or moved < expires):
                # only an earlier end wakes the watcher: a renewal (a later end) it finds when it
                # wakes at the old one, which saves a wake-up and a timer on every set
                self._lease_moved.set()
            await self._send(writer, reply)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(encode(reply))
        async with asyncio.timeout(5.0):
            await writer.drain()

    async def _lease_watch(self) -> None:
        """Sleeps until the lease ends (or a set moves it), then lets the core fall back."""
        while True:
            expires = self.core.lease.expires_s
            self._lease_moved.clear()
            left = None if expires is None else max(0.0, expires - self.core.mono())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._lease_moved.wait()
            async with self._lock:
                await asyncio.to_thread(self.core.tick) if self._offload else self.core.tick()

    async def serve(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
        host, port = self.core.cfg.host_port
        server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        bound = server.sockets[0].getsockname()[1]
        log.info("agent %s listening on %s:%d (TLS 1.3, client certificates from %s) for %d GPU(s)",
                 self.core.cfg.name, host, bound, self.core.cfg.tls.ca, len(self.core.infos))
        if ready is not None:
            ready(bound)
        async with server, asyncio.TaskGroup() as tg:
            watch = tg.create_task(self._lease_watch())
            await stop.wait()
            watch.cancel()


def make_agent_backend(cfg: Agent) -> GpuBackend:
    if cfg.backend is AgentBackend.NVML:
        from powerctl.gpu.nvml import NvmlGpus

        return NvmlGpus(site_min_w=cfg.min_w, site_max_w=cfg.max_w)
    from powerctl.gpu.simulated import SimulatedGpus

    sim = cfg.simulated
    assert sim is not None  # the config validator requires it
    demand = sim.demand_w
    return SimulatedGpus(sim.gpus, sim.min_w, sim.max_w, idle_w=sim.idle_w, tau_s=sim.tau_s, clock=sample_clock,
                         demand_w=None if demand is None else (lambda _i, _t: demand))


def sample_clock(quantum_s: float = SIM_SAMPLE_S) -> float:
    """The simulated GPUs' clock, in steps of ``quantum_s``: one request's dozens of reads see one
    sample (NVML's power reading, too, is a sample the driver refreshes every few tens of ms), so
    the model is integrated about once per request, not once per read (that was 40 % of a
    simulated agent's CPU in bench/guard_fleet.py)."""
    return math.floor(time.monotonic() / quantum_s) * quantum_s


def check_key_file(path: os.PathLike[str] | str) -> None:
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: private key readable by group or others (mode {stat.filemode(st.st_mode)}); "
                          "chmod 600 it")


def main_agent(config: str | Path) -> int:
    """``powerctl agent``: safe caps first, then serve until SIGTERM/SIGINT. Exit 2 on a config,
    GPU, certificate or socket problem."""
    try:
        cfg = load_agent_config(config)
        core = AgentCore(cfg, make_agent_backend(cfg))
    except (ConfigError, GpuError) as exc:
        print(f"agent: {exc}", flush=True)
        return 2
    core.fall_back("agent start")  # before anything else: before the network is opened
    try:
        check_key_file(cfg.tls.key)
        ctx = server_context(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
    except (ConfigError, OSError, ssl.SSLError) as exc:
        print(f"agent: TLS: {exc}", flush=True)
        return 2

    async def run() -> None:
        await AgentServer(core, ctx).serve(
            stop_on_signals(), lambda port: print(f"agent {cfg.name} listening on port {port}", flush=True))

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"agent: listen {cfg.listen}: {exc.strerror or exc}", flush=True)
        return 2
    return 0
