"""The HTTP server on a real socket: only GET exists (nothing can change the site), unknown paths
are 404, health is 503 with its reasons."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

from powerctl.web.health import Health
from powerctl.web.server import HttpServer
from tests.servers import free_port


class View:
    def state(self) -> dict[str, Any]:
        return {"t_s": 1.0}

    def plan(self) -> dict[str, Any] | None:
        return None

    def health(self) -> Health:
        return Health(False, ["guard has not run yet"])

    def metrics(self) -> bytes:
        return b""


def status_of(url: str, data: bytes | None = None, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def test_bounded_and_read_only() -> None:
    port = free_port()
    server = HttpServer(View(), "127.0.0.1", port, max_connections=1, request_timeout_s=0.5)
    await server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(status_of, base + "/health") == 503
        assert await asyncio.to_thread(status_of, base + "/api/plan") == 404  # no plan yet
        assert await asyncio.to_thread(status_of, base + "/api/state", b"x", "POST") == 405
        assert await asyncio.to_thread(status_of, base + "/api/state", None, "DELETE") == 405
        assert await asyncio.to_thread(status_of, base + "/nothing") == 404
    finally:
        await server.close()
