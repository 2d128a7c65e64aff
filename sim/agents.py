"""The plant's GPU servers as node agents: ``powerctl agent`` servers over the plant's GPU model.

For a config with ``gpu.backend = "agents"``, each ``gpu.nodes`` entry is served on its address by
the agent's own code (``powerctl.agent.server``: the same TLS, leases, limits and safe cap at start)
over a slice of the plant's GPUs, so ``powerctl run`` in another process caps the very GPUs the
plant loads the site with, and the plant's GPU power is what the daemon reads back. The agents run
on a thread of their own (the daemon's backend blocks its caller while it waits for them, so in
one process they must not share its loop). Certificates: ``<node name>.pem/.key`` beside
``gpu.agent_tls.ca`` (``powerctl certs init``); ``demo_agents`` makes a site for the demo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from powerctl.agent.certs import init_site
from powerctl.agent.config import Agent, AgentTls
from powerctl.agent.protocol import server_context
from powerctl.agent.server import AgentCore, AgentServer
from powerctl.gpu.agents import gpu_index_map
from powerctl.gpu.base import CapResult, GpuInfo

if TYPE_CHECKING:
    from powerctl.config import SiteConfig
    from powerctl.sim.plant.site import Plant

log = logging.getLogger(__name__)

NODE_GPUS = 8  # the demo's servers: eight GPUs each


class PlantNodeGpus:
    """One node's GPUs of the plant (a GPU backend over a slice of the plant's GPU cluster)."""

    name = "simulated-plant"

    def __init__(self, plant: Plant, indices: list[int], min_w: float, max_w: float) -> None:
        self.plant, self.indices = plant, indices
        self._infos = [GpuInfo(k, "plant GPU", f"SIM-{i:04d}", min_w, max_w, max_w) for k, i in enumerate(indices)]

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        return float(self.plant.gpu.power_w[self.indices[index]])

    def read_energy_j(self, index: int) -> float:
        return float(self.plant.gpu.e_kwh * 3.6e6 / max(self.plant.gpu.n, 1))

    def read_limits_w(self, index: int) -> tuple[float, float]:
        cap = float(self.plant.gpu.caps_w[self.indices[index]])
        return cap, cap

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        caps = np.array(self.plant.gpu.caps_w, dtype=float)
        caps[self.indices[index]] = cap_w
        enforced = float(self.plant.set_gpu_caps_w(caps)[self.indices[index]])
        return CapResult(index, cap_w, enforced, enforced, abs(enforced - cap_w) < 1.0)


class PlantAgents:
    """Every node of ``cfg.gpu.nodes`` served over the plant's GPUs, on a thread of its own."""

    def __init__(self, cfg: SiteConfig, plant: Plant) -> None:
        gpu = cfg.gpu
        assert gpu.agent_tls is not None
        # 24 simulated agents each saying "safe cap at start" is noise in a demo: errors only
        logging.getLogger("powerctl.agent").setLevel(logging.ERROR)
        pki = Path(gpu.agent_tls.ca).parent
        where = gpu_index_map(gpu)
        self.servers: list[tuple[str, int, AgentServer]] = []
        for n_i, node in enumerate(gpu.nodes):
            lo, hi = node.min_w or gpu.min_w, node.max_w or gpu.max_w
            host, port = node.address.rsplit(":", 1)
            acfg = Agent(name=node.name, listen=node.address, allowed_controllers=["controller"], min_w=lo, max_w=hi,
                         safe_cap_w=min(max(gpu.safe_cap_w, lo), hi),
                         tls=AgentTls(ca=Path(gpu.agent_tls.ca), cert=pki / f"{node.name}.pem",
                                      key=pki / f"{node.name}.key"))
            core = AgentCore(acfg, PlantNodeGpus(plant, [where[(n_i, k)] for k in range(node.gpus)], lo, hi))
            core.fall_back("agent start")
            ctx = server_context(acfg.tls.ca, acfg.tls.cert, acfg.tls.key)
            self.servers.append((host, int(port), AgentServer(core, ctx)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="plant-agents", daemon=True)
        self._stop: asyncio.Event | None = None
        self._task: concurrent.futures.Future[None] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Listen on every node's address; returns once all of them accept connections."""
        self._thread.start()
        up: list[int] = []
        all_up = threading.Event()

        def on_ready(port: int) -> None:  # on the agents' loop: never blocks
            up.append(port)
            if len(up) == len(self.servers):
                all_up.set()

        async def serve() -> None:
            self._stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for _host, _port, srv in self.servers:
                    tg.create_task(srv.serve(self._stop, on_ready))

        self._task = asyncio.run_coroutine_threadsafe(serve(), self._loop)
        if not all_up.wait(timeout_s):
            raise RuntimeError(f"plant agents: {len(up)} of {len(self.servers)} listening after {timeout_s:g} s")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._task is not None:
            try:
                self._task.result(5.0)
            except Exception as exc:  # a server that failed: say so, then stop the rest
                log.warning("plant agents stopped with %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)


def free_ports(n: int) -> list[int]:
    """n free loopback ports, all different (each held open until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def demo_agents(cfg: SiteConfig, pki_dir: Path) -> SiteConfig:
    """``cfg`` with its GPUs on ``NODE_GPUS``-GPU node agents on loopback (free ports), per-GPU
    workload classes in class order, and a fresh site PKI in ``pki_dir``."""
    classes = [c.name for c in cfg.gpu.classes for _ in range(c.gpus)]
    chunks = [classes[i:i + NODE_GPUS] for i in range(0, len(classes), NODE_GPUS)]
    init_site(pki_dir, agents=len(chunks))
    ports = free_ports(len(chunks))
    nodes = [{"name": f"agent-{k:03d}", "address": f"127.0.0.1:{port}", "gpus": len(ch), "workloads": ch}
             for k, (ch, port) in enumerate(zip(chunks, ports, strict=True))]
    tls = {"ca": str(pki_dir / "ca.pem"), "cert": str(pki_dir / "controller.pem"), "key": str(pki_dir / "controller.key")}
    from powerctl.config import parse_config

    data = cfg.model_dump(mode="json", exclude_none=True)
    # one process runs the plant, 24 agents and the daemon on a couple of cores: a roomier timeout
    data["gpu"].update(backend="agents", nodes=nodes, agent_tls=tls, node_timeout_s=0.5)
    return parse_config(data)
