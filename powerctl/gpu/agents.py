"""The ``agents`` backend: the GPUs of every GPU server, through each server's ``powerctl agent``.

``gpu.nodes`` lists the servers (address, GPU count, workload class per node or per GPU). GPU
indices are numbered in the order of ``gpu.classes``, then of the nodes, then of each node's GPUs,
so the budget split sees one pool of GPUs of mixed models (each with its own agent-reported range).

Transport: one mutual-TLS connection per node (``powerctl.agent.protocol``), all driven by one
asyncio loop on a thread of its own, so the guard's synchronous calls stay synchronous while a batch
of caps goes to every node at once (``set_caps_w``), each node within ``gpu.node_timeout_s``.

Every set carries ``lease_s``; the agent drops to its safe cap when the lease runs out. This
backend renews the leases of the caps last asked for every ``lease_s / 4``, but only while its
caller is alive (it has asked something within ``lease_s / 2``): a stalled guard lets the leases
run out. Between renewals it polls each node's state (power, limits), which the guard's reads use.

Stale means worst case: a node that does not answer counts, for the guard (``read_power_w``), as
drawing the highest cap it may still hold: the highest cap sent to it whose lease may not have run
out yet (sent or not acknowledged alike: an unanswered request may still have been applied), then
min(safe cap, that cap) once every such lease is over. A node never heard from since start counts
at its maximum for one lease (a previous controller's lease may still run), then at the safe cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from powerctl.agent.protocol import FrameError, client_context, encode, frame_length
from powerctl.gpu.base import CapResult, Clock, GpuError, GpuInfo

if TYPE_CHECKING:
    from powerctl.config import AgentNode, GpuPool

log = logging.getLogger("powerctl.gpu.agents")
T = TypeVar("T")

CLOCK_ALLOWANCE_S = 0.25  # controller/agent clock offset tolerated (NTP keeps it to milliseconds)
CONNECT_TIMEOUT_S = 2.0  # first contact at start-up
RECONNECT_S = 0.5  # an unreachable node is tried again this often (besides the guard's own sets)
MAX_PENDING = 8  # requests without a reply on one connection before it is dropped
SET_COLUMNS = ("requested_w", "enforced_w", "power_w", "energy_j", "set_ok", "message")  # a set's reply
_WIRE_ERRORS = (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, FrameError, ValueError)


@dataclass
class _Node:
    cfg: AgentNode
    host: str
    port: int
    gpus: list[int]  # global index of each local GPU
    min_w: float
    max_w: float
    safe_w: float
    started_s: float
    writer: asyncio.StreamWriter | None = None
    read_task: asyncio.Task[None] | None = None
    pending: deque[asyncio.Future[dict[str, Any]]] = field(default_factory=deque)  # oldest first
    last_reply_t: float = -math.inf
    lock: asyncio.Lock | None = None
    state: dict[str, Any] | None = None  # the agent's last reply
    state_t: float = -math.inf  # when it came (monotonic)
    last_try_t: float = -math.inf
    last_set_t: float = -math.inf
    desired_w: list[float | None] = field(default_factory=list)
    sent: list[deque[tuple[float, float]]] = field(default_factory=list)  # per GPU: (lease end, cap)
    last_cap_w: list[float | None] = field(default_factory=list)
    error: str = ""


def gpu_index_map(gpu_cfg: GpuPool) -> dict[tuple[int, int], int]:
    """(node number, GPU on that node) -> GPU index: in the order of ``gpu.classes``, then of the
    nodes, then of each node's GPUs (the plant and the budget split number GPUs by class)."""
    out: dict[tuple[int, int], int] = {}
    for c in gpu_cfg.classes:
        for n_i, node in enumerate(gpu_cfg.nodes):
            for local, cls in enumerate(node.classes_per_gpu()):
                if cls == c.name:
                    out[(n_i, local)] = len(out)
    return out


class AgentGpus:
    """GPU backend over the node agents (see module docstring)."""

    name = "agents"

    def __init__(self, gpu_cfg: GpuPool, *, clock: Clock = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not gpu_cfg.nodes or gpu_cfg.agent_tls is None:
            raise GpuError("gpu.backend = 'agents' needs gpu.nodes and gpu.agent_tls")
        tls = gpu_cfg.agent_tls
        try:
            self._ctx = client_context(Path(tls.ca), Path(tls.cert), Path(tls.key))
        except (OSError, ssl.SSLError) as exc:
            raise GpuError(f"gpu.agent_tls: {exc}") from None
        self.clock, self.wall = clock, wall
        self.lease_s = gpu_cfg.lease_s
        self.timeout_s = gpu_cfg.node_timeout_s
        self.poll_s = min(0.5, self.lease_s / 4)
        self._seq = 0
        self._client = secrets.token_hex(8)  # this process's name in the agents' replay check
        self._touched = clock()
        now = clock()
        self.nodes: list[_Node] = []
        self._where: dict[int, tuple[_Node, int]] = {}
        for n in gpu_cfg.nodes:
            host, port = n.address.rsplit(":", 1)
            lo, hi = n.min_w or gpu_cfg.min_w, n.max_w or gpu_cfg.max_w
            node = _Node(n, host.strip("[]"), int(port), [-1] * n.gpus, lo, hi, min(max(gpu_cfg.safe_cap_w, lo), hi),
                         now, desired_w=[None] * n.gpus, sent=[deque() for _ in range(n.gpus)],
                         last_cap_w=[None] * n.gpus)
            self.nodes.append(node)
        for (n_i, local), index in gpu_index_map(gpu_cfg).items():
            self.nodes[n_i].gpus[local] = index
            self._where[index] = (self.nodes[n_i], local)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agents-backend", daemon=True)
        self._thread.start()
        for node in self.nodes:
            node.lock = asyncio.Lock()
        try:
            self._run(self._start(), CONNECT_TIMEOUT_S + 1.0)
        except GpuError:  # slow first contact: the nodes not heard from count at their worst case
            log.warning("agents: %d of %d nodes answered at start; the poller keeps trying the others",
                        sum(1 for n in self.nodes if n.state is not None), len(self.nodes))
        self._poller = asyncio.run_coroutine_threadsafe(self._poll_all(), self._loop)

    # --- the loop thread -------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            raise GpuError(f"agents: no answer within {timeout_s:g} s") from None

    async def _start(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for node in self.nodes:
                tg.create_task(self._try(node, self._state_doc(), CONNECT_TIMEOUT_S))

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def _state_doc(self) -> dict[str, Any]:
        return {"op": "state", "client": self._client, "seq": self._next_seq(), "ts": self.wall()}

    async def _close(self, node: _Node) -> None:
        w, node.writer = node.writer, None
        for fut in node.pending:
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection closed"))
        node.pending.clear()
        if node.read_task is not None:
            node.read_task.cancel()
            node.read_task = None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.2):
                    await w.wait_closed()

    async def _read_replies(self, node: _Node, reader: asyncio.StreamReader) -> None:
        """Replies come in request order: each goes to the oldest waiting request. One that timed
        out still takes its reply (discarded), so a slow answer never shifts the others."""
        try:
            while True:
                n = frame_length(await reader.readexactly(4))
                body = await reader.readexactly(n)
                node.last_reply_t = self.clock()
                fut = node.pending.popleft() if node.pending else None
                if fut is not None and not fut.done():
                    try:
                        fut.set_result(json.loads(body))
                    except ValueError as exc:
                        fut.set_exception(exc)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, FrameError) as exc:
            for fut in node.pending:
                if not fut.done():
                    fut.set_exception(ConnectionResetError(str(exc) or "connection closed"))
            node.pending.clear()
            node.writer = None

    async def _exchange(self, node: _Node, doc: dict[str, Any]) -> dict[str, Any]:
        assert node.lock is not None
        async with node.lock:  # one connection attempt at a time
            stuck = node.pending and self.clock() - node.last_reply_t > max(1.0, 5 * self.timeout_s)
            if node.writer is not None and (stuck or len(node.pending) >= MAX_PENDING):
                await self._close(node)  # the agent is hung: start over (it may be gone)
            if node.writer is None:
                reader, node.writer = await asyncio.open_connection(
                    node.host, node.port, ssl=self._ctx, server_hostname=node.cfg.name)
                node.last_reply_t = self.clock()
                node.read_task = asyncio.create_task(self._read_replies(node, reader))
            w = node.writer
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        node.pending.append(fut)
        if doc["op"] == "set":  # from here on the agent may apply it, whether it answers or not
            self._record_sent(node, doc["caps_w"])
        w.write(encode(doc))
        await w.drain()
        return await fut

    async def _try(self, node: _Node, doc: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """One request to one node within ``timeout_s``; None (and the node marked down) on failure.
        A timeout leaves the connection open (the late reply is discarded)."""
        node.last_try_t = self.clock()
        try:
            async with asyncio.timeout(timeout_s):
                reply = await self._exchange(node, doc)
        except _WIRE_ERRORS as exc:
            await self._failed(node, exc, timeout_s)
            return None
        return self._took(node, reply)

    async def _failed(self, node: _Node, exc: BaseException, timeout_s: float) -> None:
        if not isinstance(exc, TimeoutError):
            await self._close(node)
        why = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        if node.error != why:
            log.warning("node %s (%s): %s", node.cfg.name, node.cfg.address, why)
        node.error = why

    def _took(self, node: _Node, reply: Any) -> dict[str, Any] | None:
        if not isinstance(reply, dict) or "ok" not in reply:
            node.error = "malformed reply"
            return None
        n = len(node.gpus)
        full = isinstance(reply.get("gpus"), list) and len(reply["gpus"]) == n
        if full or all(isinstance(reply.get(k), list) and len(reply[k]) == n for k in SET_COLUMNS):
            if node.error:
                log.info("node %s answers again", node.cfg.name)
            if not full:  # a set's reply: its columns over the last state's fixed fields
                rows = [dict(r) for r in node.state["gpus"]] if node.state else [{} for _ in range(n)]
                for k in SET_COLUMNS:
                    for row, v in zip(rows, reply[k], strict=True):
                        row[k] = v
                reply = {**reply, "gpus": rows}
            node.state, node.state_t, node.error = reply, self.clock(), ""
        else:
            log.error("node %s refused: %s", node.cfg.name, reply.get("error", "?"))
            node.error = f"refused: {reply.get('error', '?')}"
        return reply

    def _record_sent(self, node: _Node, caps: list[float]) -> None:
        """A set went out: each cap may hold until its lease ends (the agent counts it from ``ts``)."""
        now = self.clock()
        for local, cap in enumerate(caps):
            q = node.sent[local]
            q.append((now + self.lease_s + CLOCK_ALLOWANCE_S, cap))
            while q and q[0][0] <= now:
                node.last_cap_w[local] = q.popleft()[1]

    def _set_doc(self, node: _Node) -> dict[str, Any]:
        caps = [self._fill(node, local) for local in range(len(node.gpus))]
        node.last_set_t = self.clock()
        return {"op": "set", "client": self._client, "seq": self._next_seq(), "ts": self.wall(), "caps_w": caps,
                "lease_s": self.lease_s}

    async def _set_node(self, node: _Node) -> dict[str, Any] | None:
        return await self._try(node, self._set_doc(node), self.timeout_s)

    def _ready(self, node: _Node) -> bool:
        """An open connection nobody else is setting up, not hung: a request can go out at once."""
        assert node.lock is not None
        return (node.writer is not None and not node.lock.locked() and len(node.pending) < MAX_PENDING
                and not (node.pending and self.clock() - node.last_reply_t > max(1.0, 5 * self.timeout_s)))

    def _send_now(self, node: _Node) -> asyncio.Future[dict[str, Any]]:
        """A set written to a ready connection without waiting (``_exchange`` without its awaits:
        a 2 kB frame is far under the transport's high-water mark, and MAX_PENDING bounds the
        backlog to a hung agent)."""
        assert node.writer is not None
        node.last_try_t = self.clock()
        doc = self._set_doc(node)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        node.pending.append(fut)
        self._record_sent(node, doc["caps_w"])
        try:
            node.writer.write(encode(doc))
        except (OSError, RuntimeError, FrameError) as exc:  # a transport closing under us
            fut.set_exception(ConnectionResetError(str(exc) or "connection closed"))
        return fut

    def _fill(self, node: _Node, local: int) -> float:
        """The cap to send for a GPU nobody asked about yet: what it holds, else its safe cap."""
        want = node.desired_w[local]
        if want is None:
            row = node.state["gpus"][local] if node.state else {}
            held = row.get("requested_w")
            want = min(node.safe_w, float(held)) if isinstance(held, int | float) else node.safe_w
            node.desired_w[local] = want
        return want

    async def _poll_all(self) -> None:
        while True:
            await asyncio.sleep(min(0.05, self.poll_s / 4))
            now = self.clock()
            live = now - self._touched <= self.lease_s / 2
            for node in self.nodes:
                assert node.lock is not None
                if node.pending or node.lock.locked() or (node.error and now - node.last_try_t < RECONNECT_S):
                    continue
                if live and any(d is not None for d in node.desired_w) and now - node.last_set_t >= self.lease_s / 4:
                    self._loop.create_task(self._set_node(node))
                elif now - max(node.state_t, node.last_try_t) >= self.poll_s:
                    # a new connection's TLS handshake may take longer than a request on an open one
                    timeout = self.timeout_s if node.writer is not None else CONNECT_TIMEOUT_S
                    self._loop.create_task(self._try(node, self._state_doc(), timeout))

    async def _set_many(self, nodes: list[_Node]) -> dict[str, dict[str, Any] | None]:
        """Every node's set at once: on open connections all frames are written first, then the
        replies are awaited together under one ``node_timeout_s`` (the same deadline each node's
        own timeout would give, without a task, a lock and a timer per node); a node whose
        connection must be (re)made goes the long way, ``_set_node``, alongside."""
        slow = {n.cfg.name: asyncio.ensure_future(self._set_node(n)) for n in nodes if not self._ready(n)}
        fast: dict[str, tuple[_Node, asyncio.Future[dict[str, Any]]]] = {}
        for n in nodes:
            if n.cfg.name not in slow:
                fast[n.cfg.name] = (n, self._send_now(n))
        if fast:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.wait([f for _, f in fast.values()])
        out: dict[str, dict[str, Any] | None] = {}
        for name, (node, fut) in fast.items():
            if not fut.done():
                fut.cancel()  # its reply, when it comes, is discarded (see _read_replies)
                await self._failed(node, TimeoutError(), self.timeout_s)
                out[name] = None
            elif fut.cancelled() or fut.exception() is not None:
                await self._failed(node, fut.exception() or ConnectionResetError("cancelled"), self.timeout_s)
                out[name] = None
            else:
                out[name] = self._took(node, fut.result())
        for name, task in slow.items():
            out[name] = await task
        return out

    # --- worst case for a node that does not answer --------------------------------------------

    def answering(self) -> int:
        """How many nodes answer now."""
        return sum(1 for n in self.nodes if self._fresh(n))

    def _fresh(self, node: _Node) -> bool:
        return not node.error and self.clock() - node.state_t <= max(3 * self.poll_s, 2 * self.timeout_s)

    def assumed_cap_w(self, index: int) -> float:
        """The highest cap GPU ``index`` may hold now, as far as this controller can know."""
        node, local = self._node(index)
        now = self.clock()
        live = [cap for end, cap in node.sent[local] if end > now]
        if live:
            return max(live)
        last = node.last_cap_w[local]
        for end, cap in node.sent[local]:
            last = cap if end <= now else last
        if last is None:  # never sent: a previous controller's lease may still hold it at max
            return node.max_w if now - node.started_s < self.lease_s + CLOCK_ALLOWANCE_S else node.safe_w
        return min(node.safe_w, last)

    def held_caps_w(self) -> dict[int, float]:
        """GPUs on nodes that do not answer now, at ``assumed_cap_w``: the guard's ``held_w``."""
        return {i: self.assumed_cap_w(i) for node in self.nodes if not self._fresh(node) for i in node.gpus}

    def node_rows(self, caps_w: Mapping[int, float]) -> list[tuple[str, dict[str, float]]]:
        """Telemetry per node (measurement ``gpu``, tag ``node``): power (W read back, or the worst
        case while it does not answer), the caps sent, whether it answers."""
        rows = []
        for node in self.nodes:
            p_w = sum(self.read_power_w(i) for i in node.gpus)
            cap_w = sum(caps_w.get(i, math.nan) for i in node.gpus)
            fields = {"p_kw": p_w / 1000.0, "reachable": 1.0 if self._fresh(node) else 0.0}
            if cap_w == cap_w:
                fields["cap_kw"] = cap_w / 1000.0
            rows.append((node.cfg.name, fields))
        return rows

    def node_of(self, index: int) -> str:
        return self._node(index)[0].cfg.name

    # --- GpuBackend ------------------------------------------------------------------------------

    def _node(self, index: int) -> tuple[_Node, int]:
        try:
            return self._where[index]
        except KeyError:
            raise GpuError(f"GPU {index} does not exist ({len(self._where)} GPUs on the agents)") from None

    def _row(self, index: int) -> dict[str, Any] | None:
        node, local = self._node(index)
        if not self._fresh(node) or node.state is None:
            return None
        row: dict[str, Any] = node.state["gpus"][local]
        return row

    def list_gpus(self) -> list[GpuInfo]:
        out = []
        for index in sorted(self._where):
            node, local = self._where[index]
            row = node.state["gpus"][local] if node.state else {}
            lo, hi = float(row.get("min_w", node.min_w)), float(row.get("max_w", node.max_w))
            out.append(GpuInfo(index, f"{node.cfg.name}/{row.get('name', 'GPU')}",
                               str(row.get("uuid", f"{node.cfg.name}-gpu{local}")), lo, hi, hi))
        return out

    def read_power_w(self, index: int) -> float:
        self._touched = self.clock()
        row = self._row(index)
        p = None if row is None else row.get("power_w")
        return float(p) if isinstance(p, int | float) else self.assumed_cap_w(index)

    def read_energy_j(self, index: int) -> float:
        row = self._row(index)
        if row is None or not isinstance(row.get("energy_j"), int | float):
            raise GpuError(f"GPU {index}: node {self.node_of(index)} does not answer")
        return float(row["energy_j"])

    def read_limits_w(self, index: int) -> tuple[float, float]:
        row = self._row(index)
        if row is None:
            raise GpuError(f"GPU {index}: node {self.node_of(index)} does not answer")
        req, enf = row.get("requested_w"), row.get("enforced_w")
        return (math.nan if req is None else float(req), math.nan if enf is None else float(enf))

    def set_caps_w(self, caps_w: Mapping[int, float]) -> list[CapResult]:
        """All caps at once: each node that has a change gets its whole caps vector, concurrently."""
        self._touched = self.clock()
        todo: dict[str, _Node] = {}
        bad: list[CapResult] = []
        for index, cap in caps_w.items():
            node, local = self._node(index)
            if not math.isfinite(cap):
                bad.append(CapResult(index, cap, None, None, False, f"GPU {index}: refusing a non-finite cap"))
                continue
            node.desired_w[local] = float(cap)
            todo[node.cfg.name] = node
        try:
            replies = self._run(self._set_many(list(todo.values())), self.timeout_s + 1.0) if todo else {}
        except GpuError:  # the loop thread itself is starved: every node counts as not answering
            replies = {}
        results = list(bad)
        for index, cap in caps_w.items():
            node, local = self._node(index)
            if node.cfg.name not in todo:
                continue
            reply = replies.get(node.cfg.name)
            rows = reply.get("gpus") if isinstance(reply, dict) else None
            if not isinstance(rows, list):
                why = node.error or "no answer"
                results.append(CapResult(index, cap, None, None, False,
                                         f"GPU {index} on node {node.cfg.name}: {why} (counted at "
                                         f"{self.assumed_cap_w(index):.0f} W until its lease ends)"))
                continue
            row = rows[local]
            rb, enf = row.get("requested_w"), row.get("enforced_w")
            ok = row.get("set_ok") is True
            outside = isinstance(rb, int | float) and isinstance(enf, int | float) and enf < rb - 1.0
            results.append(CapResult(index, cap, float(rb) if isinstance(rb, int | float) else None,
                                     float(enf) if isinstance(enf, int | float) else None, ok,
                                     str(row.get("message", "")), outside))
        return results

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        return self.set_caps_w({index: cap_w})[0]

    def close(self) -> None:
        self._poller.cancel()

        async def close_all() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            # together: each close may wait up to 0.2 s for its peer (300 nodes one by one: 60 s)
            await asyncio.gather(*(self._close(node) for node in self.nodes), return_exceptions=True)

        with contextlib.suppress(Exception):
            self._run(close_all(), 2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
