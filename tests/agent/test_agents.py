"""The node agents: real ``powerctl agent`` processes on loopback, real TLS 1.3 with client
certificates made by ``powerctl certs``' code, simulated GPUs underneath.

What must hold: caps reach every node and are read back; a node's own limits win; a lease that
is not renewed takes every GPU to min(safe cap, held) with no help from the controller; a
(re)started agent is at the safe cap before it answers anything; a peer without this site's
certificate, or replaying a request, gets only a refusal, and the agent logs it; a node that stops
answering counts, for the guard, at the highest cap it may still hold, so the others are cut.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerctl.agent.certs import init_site
from powerctl.agent.config import parse_agent_config
from powerctl.agent.protocol import client_context, encode
from powerctl.config import ConfigError
from powerctl.gpu.agents import AgentGpus
from tests.agent.fleet import Fleet, make_fleet, probe, requested_w, state_doc
from tests.gpu.site import site
from tests.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

SAFE_W = 150.0


def wait_for(pred, timeout_s: float, what: str, step_s: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(step_s)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Three agents of two GPU models: 2 x [100, 400] W, 3 x [200, 700] W, 2 x [100, 400] W."""
    f = make_fleet(tmp_path / "fleet", [free_port() for _ in range(3)], gpus=[2, 3, 2], safe_cap_w=SAFE_W,
                   ranges_w=[(100.0, 400.0), (200.0, 700.0), (100.0, 400.0)], demand_w=1000.0)
    f.start()
    try:
        yield f
    finally:
        f.stop()


def backend_for(f: Fleet, *, lease_s: float = 2.0) -> AgentGpus:
    cfg = site(classes=[{"name": "prod", "gpus": 4}, {"name": "batch", "gpus": 3, "priority": 1}],
               gpu={"backend": "agents", "min_w": 100.0, "max_w": 700.0, "safe_cap_w": SAFE_W, "lease_s": lease_s,
                    "node_timeout_s": 0.3, "agent_tls": f.agent_tls(), "nodes": f.nodes(["prod", "batch", "prod"])})
    return AgentGpus(cfg.gpu)


def ctx_of(f: Fleet) -> ssl.SSLContext:
    return client_context(f.pki / "ca.pem", f.pki / "controller.pem", f.pki / "controller.key")


# --- certificates and configs ---------------------------------------------------------------


def test_certs_init_keys_are_0600_and_a_commissioned_site_is_not_overwritten(tmp_path: Path) -> None:
    done = init_site(tmp_path / "pki", agents=2)
    assert set(done) == {"ca", "controller", "agent-000", "agent-001"}
    for issued in done.values():
        assert os.stat(issued.key_path).st_mode & 0o777 == 0o600, issued.key_path
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        init_site(tmp_path / "pki", agents=1)


def test_agent_config_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = {"agent": {"name": "a", "allowed_controllers": ["controller"], "min_w": 200, "max_w": 700,
                     "safe_cap_w": 900, "tls": {"ca": "ca.pem", "cert": "a.pem", "key": "a.key"}}}
    with pytest.raises(ConfigError, match=r"agent.toml: agent: .*safe_cap_w \(900\) must lie within"):
        parse_agent_config(bad, tmp_path / "agent.toml")


def test_site_nodes_must_carry_exactly_the_classes_gpus() -> None:
    nodes = [{"name": "n1", "address": "127.0.0.1:7443", "gpus": 8, "workload": "prod"}]
    tls = {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"}
    with pytest.raises(ConfigError, match=r"gpu: .*prod: classes say 24, nodes have 8"):
        site(gpu={"backend": "agents", "nodes": nodes, "agent_tls": tls})
    with pytest.raises(ConfigError, match=r"workload 'gpu-farm' is not a class"):
        site(classes=[{"name": "prod", "gpus": 8}],
             gpu={"backend": "agents", "agent_tls": tls, "nodes": [{**nodes[0], "workload": "gpu-farm"}]})


# --- caps, read-back, leases ----------------------------------------------------------------


def test_caps_reach_every_node_and_are_read_back_mixed_models(fleet: Fleet) -> None:
    b = backend_for(fleet)
    try:
        infos = b.list_gpus()
        # classes in config order, then nodes: prod = node 0 (2) + node 2 (2), batch = node 1 (3)
        assert [b.node_of(i.index) for i in infos] == ["agent-000"] * 2 + ["agent-002"] * 2 + ["agent-001"] * 3
        assert [(i.min_w, i.max_w) for i in infos] == [(100.0, 400.0)] * 4 + [(200.0, 700.0)] * 3
        assert all(b.read_limits_w(i.index)[0] == SAFE_W if i.max_w == 400 else 200.0 for i in infos)
        asked = {0: 310.0, 1: 320.0, 2: 330.0, 3: 990.0, 4: 650.0, 5: 120.0, 6: 500.0}
        results = {r.index: r for r in b.set_caps_w(asked)}
        assert all(r.ok for r in results.values()), results
        # the node's own limits win: 990 W on a 400 W GPU, 120 W on a GPU with a 200 W floor
        want = {0: 310.0, 1: 320.0, 2: 330.0, 3: 400.0, 4: 650.0, 5: 200.0, 6: 500.0}
        assert {i: r.readback_w for i, r in results.items()} == want
        assert "held to this agent's [100, 400] W" in results[3].message
        ports = {a.name: a.port for a in fleet.agents}
        ctx = ctx_of(fleet)
        assert requested_w(ports["agent-000"], ctx, "agent-000") == [310.0, 320.0]
        assert requested_w(ports["agent-002"], ctx, "agent-002") == [330.0, 400.0]
        assert requested_w(ports["agent-001"], ctx, "agent-001") == [650.0, 200.0, 500.0]
        # the agents' read-back power follows the caps (demand is above every cap)
        wait_for(lambda: abs(b.read_power_w(4) - 650.0) < 5.0, 10, "GPU 4's power at its 650 W cap")
    finally:
        b.close()


def test_lease_not_renewed_drops_to_safe_cap_and_never_raises(fleet: Fleet) -> None:
    b = backend_for(fleet, lease_s=1.0)
    a0 = fleet.agents[0]
    ctx = ctx_of(fleet)
    try:
        assert all(r.ok for r in b.set_caps_w({0: 120.0, 1: 350.0}))
        assert requested_w(a0.port, ctx, a0.name) == [120.0, 350.0]
    finally:
        b.close()  # the controller goes quiet: nobody renews
    # within one lease (1 s, plus the agent's lease tick and this poll): 350 -> safe, 120 stays 120
    wait_for(lambda: requested_w(a0.port, ctx, a0.name) == [120.0, SAFE_W], 3.0, "agent-000 at min(safe, held)")
    assert "lease expired without renewal" in a0.log_text()


def test_renewed_lease_holds_while_the_controller_lives(fleet: Fleet) -> None:
    b = backend_for(fleet, lease_s=1.0)
    a0, ctx = fleet.agents[0], ctx_of(fleet)
    try:
        b.set_caps_w({0: 300.0, 1: 300.0})
        t_end = time.monotonic() + 3.0  # three leases
        while time.monotonic() < t_end:
            b.read_power_w(0)  # the guard's reads keep the backend renewing
            time.sleep(0.1)
        assert requested_w(a0.port, ctx, a0.name) == [300.0, 300.0]
    finally:
        b.close()


def test_restarted_agent_starts_at_the_safe_cap(fleet: Fleet) -> None:
    b = backend_for(fleet, lease_s=30.0)
    a1, ctx = fleet.agents[1], ctx_of(fleet)
    try:
        b.set_caps_w({4: 700.0, 5: 700.0, 6: 700.0})
        assert requested_w(a1.port, ctx, a1.name) == [700.0] * 3
    finally:
        b.close()
    a1.signal(signal.SIGKILL)
    assert a1.proc is not None
    a1.proc.wait(10)
    a1.start()  # the simulated GPUs come up at their default (max) limit, as after a driver reload
    # the very first answer of the new process: already at the safe cap (its floor here is 200 W)
    assert requested_w(a1.port, ctx, a1.name) == [200.0] * 3
    assert a1.log_text().count("agent start: GPUs to the safe cap") == 2


# --- refusals --------------------------------------------------------------------------------


def test_no_certificate_other_site_and_replay_are_refused_and_logged(fleet: Fleet, tmp_path: Path) -> None:
    a0 = fleet.agents[0]
    pki = fleet.pki
    # 1. no client certificate at all
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cafile=str(pki / "ca.pem"))
    reply = probe(a0.port, bare, a0.name, state_doc())
    assert "ok" not in reply, reply
    wait_for(lambda: "TLS handshake failed" in a0.log_text(), 5, "the refusal in the agent's log")
    # 2. another site's controller certificate (it trusts our CA, we do not trust its CA)
    other = init_site(tmp_path / "other-site", agents=0, site="other")
    foreign = client_context(pki / "ca.pem", other["controller"].cert_path, other["controller"].key_path)
    before = a0.log_text().count("refused")
    assert "ok" not in probe(a0.port, foreign, a0.name, state_doc())
    wait_for(lambda: a0.log_text().count("refused") > before, 5, "the second refusal in the log")
    # 2b. this site's certificate, but an agent's (server-auth only): not a controller
    peer = client_context(pki / "ca.pem", pki / "agent-001.pem", pki / "agent-001.key")
    before = a0.log_text().count("refused")
    assert "ok" not in probe(a0.port, peer, a0.name, state_doc())
    wait_for(lambda: a0.log_text().count("refused") > before, 5, "the agent-as-controller refusal in the log")
    # 3. a valid request, captured and sent again on a new connection
    ctx = ctx_of(fleet)
    frame = encode({"op": "set", "client": "capture", "seq": time.time_ns() // 1000, "ts": time.time(), "caps_w": [333.0, 333.0],
                    "lease_s": 5.0})
    first = probe(a0.port, ctx, a0.name, frame)
    assert first["ok"] and first["requested_w"] == [333.0, 333.0]
    again = probe(a0.port, ctx, a0.name, frame)
    assert again == {"ok": False, "error": "sequence number already used (replay or out of order)"}
    # 4. a request from before the agent started (a capture replayed after its restart)
    old = probe(a0.port, ctx, a0.name, {"op": "state", "client": "capture", "seq": 2**62, "ts": time.time() - 3600})
    assert old == {"ok": False, "error": "request older than this agent's start (replay?)"}
    log = a0.log_text()
    assert "replay or out of order" in log and "older than this agent's start" in log
    assert json.dumps(first).count("333") >= 2  # the refusals changed nothing: the caps are the first set's
    assert requested_w(a0.port, ctx, a0.name) == [333.0, 333.0]


# --- a node that stops answering ------------------------------------------------------------


def test_stopped_agent_counts_at_its_last_lease_then_at_the_safe_cap(fleet: Fleet) -> None:
    b = backend_for(fleet, lease_s=1.5)
    a0 = fleet.agents[0]
    try:
        assert all(r.ok for r in b.set_caps_w({0: 300.0, 1: 120.0}))
        a0.signal(signal.SIGSTOP)
        wait_for(lambda: "agent-000" in [b.node_of(r.index) for r in b.set_caps_w({0: 250.0}) if not r.ok],
                 5, "a set to the stopped node fails")
        # the 250 W set may or may not have been applied: the highest cap of a live lease counts
        assert b.read_power_w(0) == 300.0 and b.read_power_w(1) == 120.0
        rows = dict(b.node_rows({0: 250.0, 1: 120.0}))  # telemetry, tag node
        assert rows["agent-000"] == {"p_kw": 0.42, "reachable": 0.0, "cap_kw": 0.37}
        assert rows["agent-001"]["reachable"] == 1.0 and "cap_kw" not in rows["agent-001"]
        # every lease sent to it has run out: min(safe, last cap)
        wait_for(lambda: b.read_power_w(0) == SAFE_W, 5, "GPU 0 counted at the safe cap after the lease")
        assert b.read_power_w(1) == 120.0
    finally:
        a0.signal(signal.SIGCONT)
        b.close()


def test_guard_cuts_the_other_nodes_to_make_room_for_a_stopped_one(fleet: Fleet) -> None:
    from powerctl.control.guard import Guard
    from powerctl.control.split import slots_from_pool
    from powerctl.gpu_io import read_gpu_power_w
    from tests.gpu.site import image_for

    b = backend_for(fleet, lease_s=60.0)  # node 1 holds its lease for the whole test
    cfg = site(classes=[{"name": "prod", "gpus": 4}, {"name": "batch", "gpus": 3, "priority": 1}],
               gpu={"min_w": 100.0, "max_w": 700.0, "safe_cap_w": SAFE_W, "ramp_up_kw_per_s": 100.0})
    guard = Guard(cfg, slots_from_pool(cfg.gpu, b.list_gpus()), gpu_lag_s=0.1)
    img = image_for(cfg, max_age_s=5.0)
    indices = list(range(7))
    stopped = [4, 5, 6]  # agent-001, the batch node: [200, 700] W GPUs

    def tick(pv_kw: float) -> float:
        now = time.monotonic()
        img.update("pv1", "p_kw", pv_kw, now)
        img.update("bat1", "soc_pct", 10.0, now)  # at its floor: the battery adds nothing
        img.update("bat1", "p_kw", 0.0, now)
        d = guard.evaluate(img, now, requested_caps_w={i: 300.0 for i in indices},
                           gpu_power_w=read_gpu_power_w(b, indices), held_w=b.held_caps_w())
        b.set_caps_w(d.caps_w)
        return d.gpu_allowed_kw * 1000.0

    try:
        for _ in range(5):
            tick(10.0)  # plenty: every GPU at the 300 W asked
        assert [b.read_limits_w(i)[0] for i in indices] == [300.0] * 7
        fleet.agents[1].signal(signal.SIGSTOP)
        assert [b.assumed_cap_w(i) for i in stopped] == [300.0] * 3

        def fits() -> bool:
            allowed_w = tick(3.0)  # the supply drops: ~1.7 kW of GPU power allowed
            held_w = sum(b.read_limits_w(i)[0] for i in indices if i not in stopped)
            time.sleep(0.1)
            return held_w + sum(b.assumed_cap_w(i) for i in stopped) <= allowed_w + 1.0

        wait_for(fits, 30, "the reachable nodes cut so that they plus the stopped node's lease fit", step_s=0.0)
        assert [b.assumed_cap_w(i) for i in stopped] == [300.0] * 3  # still counted at its lease
        assert all(b.read_limits_w(i)[0] < 300.0 for i in indices if i not in stopped)
    finally:
        fleet.agents[1].signal(signal.SIGCONT)
        b.close()


def test_replay_guard_per_client_and_forgets_only_what_its_clock_would_refuse() -> None:
    from powerctl.agent import protocol
    from powerctl.agent.protocol import Refused, ReplayGuard

    g = ReplayGuard(start_wall_s=1000.0, max_skew_s=10.0)
    g.check("controller", "daemon", 5, 1001.0, 1001.0)
    g.check("controller", "watchdog", 3, 1001.0, 1001.0)  # another process of the same controller
    with pytest.raises(Refused, match="already used"):
        g.check("controller", "daemon", 5, 1001.5, 1001.5)
    with pytest.raises(Refused, match="from the agent's clock"):
        g.check("controller", "daemon", 6, 980.0 + 30, 1030.0 + 11)
    old_max = protocol.MAX_CLIENTS
    protocol.MAX_CLIENTS = 2
    try:
        with pytest.raises(Refused, match="over 2 clients"):
            g.check("controller", "third", 1, 1002.0, 1002.0)
        g.check("controller", "third", 1, 1020.0, 1020.0)  # the first two are silent for > max_skew_s
        with pytest.raises(Refused, match="from the agent's clock"):  # their old requests stay refused
            g.check("controller", "daemon", 5, 1001.0, 1020.0)
    finally:
        protocol.MAX_CLIENTS = old_max
