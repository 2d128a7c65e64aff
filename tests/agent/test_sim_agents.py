"""Hardware in the loop for compute: ``powerctl sim serve`` serves the plant's GPU servers as node
agents, and ``powerctl run`` in another process caps the plant's own GPUs through them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from powerctl.agent.certs import init_site
from powerctl.agent.protocol import client_context
from tests.agent.fleet import ROOT, probe, state_doc
from tests.restart.test_kill9 import dump_toml
from tests.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(300)]

SAFE_W = 300.0
CLASSES = ["inference", "training", "batch"]


def test_sim_serve_agents_are_capped_by_the_daemon_and_fall_back_on_their_lease(tmp_path: Path) -> None:
    init_site(tmp_path / "pki", agents=3)
    data: dict[str, Any] = tomllib.loads((ROOT / "tests" / "faults" / "site.toml").read_text())
    data["control"].update(mpc_period_s=2.0, horizon=[{"step_s": 60, "count": 30}, {"step_s": 900, "count": 12}],
                           heartbeat_path=str(tmp_path / "run" / "heartbeat"), state_dir=str(tmp_path / "run"))
    for d in data["devices"]:
        d["transport"]["port"] = free_port()
    for c in data["gpu"]["classes"]:
        c["gpus"] = 8
    ports = [free_port() for _ in CLASSES]
    pki = tmp_path / "pki"
    data["gpu"].update(backend="agents", lease_s=2.0, node_timeout_s=0.2,
                       agent_tls={"ca": str(pki / "ca.pem"), "cert": str(pki / "controller.pem"),
                                  "key": str(pki / "controller.key")},
                       nodes=[{"name": f"agent-{k:03d}", "address": f"127.0.0.1:{p}", "gpus": 8, "workload": c}
                              for k, (c, p) in enumerate(zip(CLASSES, ports, strict=True))])
    data.pop("telemetry", None)
    cfg = tmp_path / "site.toml"
    cfg.write_text(dump_toml(data))
    cfg.chmod(0o600)
    ctx = client_context(pki / "ca.pem", pki / "controller.pem", pki / "controller.key")

    def gpus() -> list[dict[str, Any]]:
        rows = []
        for k, p in enumerate(ports):
            reply = probe(p, ctx, f"agent-{k:03d}", state_doc())
            assert reply.get("ok"), reply
            rows += reply["gpus"]
        return rows

    def start(argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "powerctl.cli", *argv], cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT)

    sim = start(["sim", "serve", str(cfg)], "sim.log")
    daemon = None
    try:
        deadline = time.monotonic() + 60
        while "3 GPU node agents" not in (tmp_path / "sim.log").read_text():
            assert sim.poll() is None and time.monotonic() < deadline, (tmp_path / "sim.log").read_text()[-2000:]
            time.sleep(0.1)
        assert all(g["requested_w"] == SAFE_W for g in gpus())  # the plant's GPUs start at the safe cap
        daemon = start(["run", str(cfg)], "daemon.log")
        deadline = time.monotonic() + 120
        while not any(g["requested_w"] > SAFE_W for g in gpus()):
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon never raised the plant's caps"
            time.sleep(0.2)
        # the plant's GPU power (what the agents report) stays under the caps the daemon set
        for g in gpus():
            assert g["power_w"] <= g["enforced_w"] * 1.05 + 1.0, g
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        deadline = time.monotonic() + 2.0 + 3.0
        while not all(g["requested_w"] <= SAFE_W for g in gpus()):
            assert time.monotonic() < deadline, "plant agents above the safe cap after one lease"
            time.sleep(0.05)
    finally:
        for p in (daemon, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)
