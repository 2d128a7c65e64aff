"""Observe-only over node agents: the batch set the agents backend offers (``set_caps_w``, which
``powerctl.gpu_io.apply_caps`` prefers) is answered by ``ObservingGpus`` without writing; a real
``powerctl agent`` process on loopback keeps the caps it started with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from powerctl.agent.protocol import client_context
from powerctl.gpu.agents import AgentGpus
from powerctl.gpu_io import apply_caps
from powerctl.observe import ObservingGpus
from tests.agent.fleet import Fleet, make_fleet, requested_w
from tests.gpu.site import site
from tests.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

SAFE_W = 150.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = make_fleet(tmp_path / "fleet", [free_port()], gpus=2, safe_cap_w=SAFE_W, ranges_w=[(100.0, 400.0)])
    f.start()
    try:
        yield f
    finally:
        f.stop()


def test_observe_only_sets_no_cap_on_a_node_agent(fleet: Fleet) -> None:
    cfg = site(classes=[{"name": "prod", "gpus": 2}],
               gpu={"backend": "agents", "min_w": 100.0, "max_w": 400.0, "safe_cap_w": SAFE_W,
                    "node_timeout_s": 0.5, "agent_tls": fleet.agent_tls(), "nodes": fleet.nodes(["prod"])})
    inner = AgentGpus(cfg.gpu)
    gpus = ObservingGpus(inner)
    agent = fleet.agents[0]
    ctx = client_context(fleet.pki / "ca.pem", fleet.pki / "controller.pem", fleet.pki / "controller.key")
    try:
        assert requested_w(agent.port, ctx, agent.name) == [SAFE_W, SAFE_W]  # the agent's own start
        results = apply_caps(gpus, {0: 310.0, 1: 320.0})
        assert [(r.index, r.ok, r.message) for r in results] == [(i, True, "observe-only: not written") for i in (0, 1)]
        assert gpus.sets == 2 and gpus.would_set_w == {0: 310.0, 1: 320.0}
        assert requested_w(agent.port, ctx, agent.name) == [SAFE_W, SAFE_W]  # nothing reached the node
        assert gpus.node_rows is not None  # read-only extras still pass through
        with pytest.raises(AttributeError, match="not passed through"):
            gpus.__getattr__("set_lease_s")  # a setter the wrapper does not define is refused, not forwarded
    finally:
        inner.close()
