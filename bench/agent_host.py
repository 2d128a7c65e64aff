"""Several ``powerctl agent`` servers in one process (for bench/guard_fleet.py where one process
per agent does not fit the host: 300 agents x ~58 MB). Each serves its own config, port and
certificate over real TLS, exactly as ``powerctl agent`` does, on one shared asyncio loop.

    .venv/bin/python bench/agent_host.py agent-000.toml agent-001.toml ...
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerctl.agent.config import load_agent_config
from powerctl.agent.protocol import server_context
from powerctl.agent.server import AgentCore, AgentServer, make_agent_backend
from powerctl.stop import stop_on_signals


async def main(paths: list[str]) -> None:
    stop = stop_on_signals()
    servers: list[tuple[AgentServer, str]] = []
    for p in paths:
        cfg = load_agent_config(p)
        core = AgentCore(cfg, make_agent_backend(cfg))
        core.fall_back("agent start")
        servers.append((AgentServer(core, server_context(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)), cfg.name))
    async with asyncio.TaskGroup() as tg:
        for srv, name in servers:
            tg.create_task(srv.serve(stop, lambda port, n=name: print(f"agent {n} listening on port {port}", flush=True)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
