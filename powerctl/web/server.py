"""The HTTP server (aiohttp): read-only, bounded, in a task of its own.

Routes: ``GET /`` (status page), ``/health``, ``/api/state``, ``/api/plan``, ``/metrics``. Only
GET/HEAD exist (anything else is 405): nothing here can change the site. Bounds: at most
``max_connections`` requests in flight (the rest get 503 at once), each handler under
``request_timeout_s``, request bodies refused, idle keep-alive connections closed after 5 s.
The handlers read snapshots (``SiteView``): the loop never waits on a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from powerctl.web.health import Health
from powerctl.web.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SiteView(Protocol):
    """What the server reads; the daemon implements it over its status (no I/O, no waiting)."""

    def state(self) -> dict[str, Any]: ...

    def plan(self) -> dict[str, Any] | None: ...

    def health(self) -> Health: ...

    def metrics(self) -> bytes: ...


class PortInUse(OSError):
    """A configured listen address is taken (or not ours): the daemon refuses to start, and the
    command line prints this one line (HTTP here, SCADA in powerctl/scada.py)."""


def _json(doc: Any, status: int = 200) -> web.Response:
    from powerctl.mqtt.topics import to_json  # the same NaN-free JSON as MQTT

    return web.Response(body=to_json(doc), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def page_html() -> bytes:
    return resources.files("powerctl.web").joinpath("page.html").read_bytes()


def make_app(view: SiteView, *, max_connections: int = 32, request_timeout_s: float = 5.0) -> web.Application:
    in_flight = asyncio.Semaphore(max_connections)

    @web.middleware
    async def bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if in_flight.locked():
            return web.Response(status=503, text="busy\n", headers={"Retry-After": "1"})
        async with in_flight:
            async with asyncio.timeout(request_timeout_s):
                return await handler(request)

    page = page_html()

    async def index(_r: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def health(_r: web.Request) -> web.Response:
        h = view.health()
        return _json(h.as_dict(), 200 if h.ok else 503)

    async def state(_r: web.Request) -> web.Response:
        return _json(view.state())

    async def plan(_r: web.Request) -> web.Response:
        p = view.plan()
        return _json(p, 200) if p is not None else _json({"error": "no plan yet"}, 404)

    async def metrics(_r: web.Request) -> web.Response:
        return web.Response(body=view.metrics(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[bounded], client_max_size=1024)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/plan", plan)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    """``start()`` binds (raises ``PortInUse`` with the address) and serves; ``close()`` stops."""

    def __init__(self, view: SiteView, host: str, port: int, *, max_connections: int = 32,
                 request_timeout_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self._app = make_app(view, max_connections=max_connections, request_timeout_s=request_timeout_s)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        runner = web.AppRunner(self._app, access_log=None, keepalive_timeout=5.0, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=64, reuse_address=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PortInUse(f"HTTP server: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._runner = runner
        log.info("status page and API on %s", self.url)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
