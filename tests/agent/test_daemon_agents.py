"""The daemon, the simulated site and three agents, all real processes on loopback.

``powerctl run`` with ``gpu.backend = "agents"`` raises the caps of every node (PV is plentiful);
then ``kill -9`` of the daemon: nobody renews the leases, and every agent lowers itself to the safe
cap within one lease, by itself (there is no shutdown path after SIGKILL). ``apply-safe-caps`` (the
watchdog's and the boot unit's action) reaches the agents through the same backend.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powerctl.agent.protocol import client_context
from tests.agent.fleet import ROOT, Fleet, make_fleet, requested_w
from tests.restart.test_kill9 import dump_toml
from tests.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(300)]

SAFE_W = 300.0
LEASE_S = 2.0
CLASSES = ["inference", "training", "batch"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = make_fleet(tmp_path / "fleet", [free_port() for _ in CLASSES], gpus=8, safe_cap_w=SAFE_W,
                   ranges_w=[(200.0, 700.0)] * 3, demand_w=800.0)
    f.start()
    try:
        yield f
    finally:
        f.stop()


def site_toml(tmp: Path, f: Fleet) -> Path:
    data: dict[str, Any] = tomllib.loads((ROOT / "tests" / "faults" / "site.toml").read_text())
    run = tmp / "run"
    data["control"].update(mpc_period_s=2.0, horizon=[{"step_s": 60, "count": 30}, {"step_s": 900, "count": 12}],
                           heartbeat_path=str(run / "heartbeat"), state_dir=str(run))
    for d in data["devices"]:
        d["transport"]["port"] = free_port()
    for c in data["gpu"]["classes"]:
        c["gpus"] = 8
    data["gpu"].update(backend="agents", lease_s=LEASE_S, node_timeout_s=0.1, agent_tls=f.agent_tls(),
                       nodes=f.nodes(CLASSES))
    data.pop("telemetry", None)
    path = tmp / "site.toml"
    path.write_text(dump_toml(data))
    path.chmod(0o600)
    return path


def start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def test_kill9_of_the_daemon_leaves_every_agent_at_the_safe_cap_within_one_lease(fleet: Fleet, tmp_path: Path) -> None:
    cfg = site_toml(tmp_path, fleet)
    ctx = client_context(fleet.pki / "ca.pem", fleet.pki / "controller.pem", fleet.pki / "controller.key")
    sim = start(["-m", "tests.restart.sim_runner", str(cfg), str(tmp_path / "sim"), "--pv-kw", "150",
                 "--genset-running", "--soc", "60"], tmp_path / "sim.log", ROOT)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "sim" / "plant.json").exists():
            assert sim.poll() is None and time.monotonic() < deadline, (tmp_path / "sim.log").read_text()[-2000:]
            time.sleep(0.1)
        daemon = start(["-m", "powerctl.cli", "run", str(cfg)], tmp_path / "daemon.log", tmp_path)

        def caps() -> list[list[float]]:
            return [requested_w(a.port, ctx, a.name) for a in fleet.agents]

        deadline = time.monotonic() + 120
        while not all(max(node) > SAFE_W for node in caps()):  # the plan raises every node's caps
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"caps never rose above the safe cap: {caps()}"
            time.sleep(0.2)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        killed = time.monotonic()
        while not all(max(node) <= SAFE_W for node in caps()):
            # one lease, plus the agents' lease tick and this loop's own round trips on a busy machine
            assert time.monotonic() - killed < LEASE_S + 3.0, f"agents above the safe cap after one lease: {caps()}"
            time.sleep(0.05)
        for a in fleet.agents:
            assert "lease expired without renewal" in a.log_text(), a.log_text()[-1500:]

        # the fail-safe command reaches the agents too (here: already safe; it never raises a cap)
        out = subprocess.run([sys.executable, "-m", "powerctl.cli", "apply-safe-caps", str(cfg)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count("safe cap") == 24 and "Traceback" not in out.stderr
        assert all(max(node) <= SAFE_W for node in caps())
    finally:
        for p in (daemon, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)


def test_apply_safe_caps_with_an_agent_down_sets_the_others_and_says_which(fleet: Fleet, tmp_path: Path) -> None:
    cfg = site_toml(tmp_path, fleet)
    fleet.agents[2].stop()
    out = subprocess.run([sys.executable, "-m", "powerctl.cli", "apply-safe-caps", str(cfg)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr  # some GPUs failed: the node that is down
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stdout.count("FAILED") == 8 and "agent-002" in out.stdout
