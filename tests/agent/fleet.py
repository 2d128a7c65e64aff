"""Real agent processes on loopback for the tests and bench/guard_fleet.py: a site PKI, one
``agent.toml`` per node, ``powerctl agent`` started and stopped, the matching ``gpu.nodes``."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerctl.agent.certs import agent_name, init_site
from powerctl.agent.protocol import encode, frame_length

ROOT = Path(__file__).resolve().parents[2]


def _toml(d: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for an agent config (scalars, lists of scalars, nested tables)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append(_toml(v, f"{prefix}{k}."))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "\n".join(lines) + "\n\n" + "".join(tables)


@dataclass
class AgentProc:
    name: str
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        seen = self.log_text().count(f"listening on port {self.port}")  # a restart appends to the log
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "powerctl.cli", "agent", str(self.config)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()
        deadline = time.monotonic() + timeout_s
        while self.log_text().count(f"listening on port {self.port}") <= seen:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {self.name} not listening after {timeout_s} s:\n{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Fleet:
    dir: Path
    agents: list[AgentProc] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def nodes(self, workloads: list[str]) -> list[dict[str, Any]]:
        return [{"name": a.name, "address": f"127.0.0.1:{a.port}", "gpus": g, "workload": w}
                for a, (w, g) in zip(self.agents, ((w, self.gpus[i]) for i, w in enumerate(workloads)), strict=True)]

    gpus: list[int] = field(default_factory=list)

    def agent_tls(self) -> dict[str, str]:
        return {"ca": str(self.pki / "ca.pem"), "cert": str(self.pki / "controller.pem"),
                "key": str(self.pki / "controller.key")}

    def start(self) -> None:
        for a in self.agents:
            a.start()

    def stop(self) -> None:
        for a in self.agents:
            a.stop()


def make_fleet(directory: Path, ports: list[int], *, gpus: int | list[int] = 8, safe_cap_w: float = 150.0,
               ranges_w: list[tuple[float, float]] | None = None, max_lease_s: float = 10.0,
               demand_w: float | None = None) -> Fleet:
    """PKI + one agent config per port (simulated GPUs); nothing started yet."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(ports)
    init_site(directory / "pki", agents=n)
    counts = gpus if isinstance(gpus, list) else [gpus] * n
    fleet = Fleet(directory, gpus=counts)
    for i, port in enumerate(ports):
        lo, hi = (ranges_w or [(100.0, 400.0)] * n)[i]
        name = agent_name(i)
        sim: dict[str, Any] = {"gpus": counts[i], "min_w": lo, "max_w": hi, "tau_s": 0.05}
        if demand_w is not None:
            sim["demand_w"] = demand_w
        cfg = {"agent": {
            "name": name, "listen": f"127.0.0.1:{port}", "allowed_controllers": ["controller"],
            "min_w": lo, "max_w": hi, "safe_cap_w": min(max(safe_cap_w, lo), hi), "max_lease_s": max_lease_s,
            "backend": "simulated",
            "tls": {"ca": "pki/ca.pem", "cert": f"pki/{name}.pem", "key": f"pki/{name}.key"},
            "simulated": sim,
        }}
        path = directory / f"{name}.toml"
        path.write_text(_toml(cfg))
        fleet.agents.append(AgentProc(name, path, port, directory / f"{name}.log"))
    return fleet


def probe(port: int, ctx: ssl.SSLContext, name: str, doc: dict[str, Any] | bytes, timeout_s: float = 5.0
          ) -> dict[str, Any]:
    """One request on a fresh TLS connection (``doc`` as a dict or as the exact frame bytes); the reply,
    or ``{"tls_error": ...}`` when the agent ends the handshake or the connection without a reply."""
    raw = doc if isinstance(doc, bytes) else encode(doc)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s, \
                ctx.wrap_socket(s, server_hostname=name) as t:
            t.sendall(raw)
            head = _recv(t, 4)
            return dict(json.loads(_recv(t, frame_length(head))))
    except (ssl.SSLError, ConnectionError, EOFError) as exc:
        return {"tls_error": str(exc)}


def _recv(t: ssl.SSLSocket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = t.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


_seq = [0]


def state_doc() -> dict[str, Any]:
    _seq[0] = max(_seq[0] + 1, time.time_ns() // 1000)
    return {"op": "state", "client": "test-probe", "seq": _seq[0], "ts": time.time()}


def requested_w(port: int, ctx: ssl.SSLContext, name: str) -> list[float]:
    reply = probe(port, ctx, name, state_doc())
    assert reply.get("ok"), reply
    return [float(g["requested_w"]) for g in reply["gpus"]]
