"""The daemon's operator surfaces in one object: the HTTP server, the SCADA server, Prometheus
metrics, the alarm list and systemd notifications.

The daemon tells it what happened (``guard_ran``, ``cycle_ran``, ``planned``, ``alarm``); the
servers read from it (it is their ``SiteView``). Nothing here blocks the control loop: recording
is a few counters and a deque; the servers run in tasks of their own and only read snapshots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.sdnotify import Notifier
from powerctl.web.health import Health, assess
from powerctl.web.metrics import Metrics

ALARMS_KEPT = 50
SUPPLY = (Nature.PV, Nature.BATTERY, Nature.GENSET, Nature.METER)


class Surfaces:
    def __init__(self, cfg: SiteConfig, state: Callable[[], dict[str, Any]],
                 notifier: Notifier | None = None, mono: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._state = state
        self.mono = mono
        self.metrics_ = Metrics(self.state)
        self.alarms: deque[dict[str, Any]] = deque(maxlen=ALARMS_KEPT)
        self.notifier = notifier if notifier is not None else Notifier()
        self._plan: dict[str, Any] | None = None
        self._last_cycle: float | None = None
        self._last_guard: float | None = None
        self._guard_safe = False
        self._supply = {d.name for d in cfg.devices if d.nature in SUPPLY}
        self.servers: list[Any] = []
        if cfg.http is not None:
            from powerctl.web.server import HttpServer

            h = cfg.http
            self.servers.append(HttpServer(self, h.listen, h.port, max_connections=h.max_connections,
                                           request_timeout_s=h.request_timeout_s))
        if cfg.scada is not None:
            from powerctl.scada import ScadaServer

            self.servers.append(ScadaServer(self.state, cfg.scada.listen, cfg.scada.port, cfg.scada.unit_id))

    # --- what the daemon reports --------------------------------------------------------------

    def guard_ran(self, safe: bool, latency_s: float | None = None) -> None:
        """After every guard tick that really ran: the only place systemd's watchdog is fed."""
        self._last_guard = self.mono()
        self._guard_safe = safe
        if latency_s is not None:
            self.metrics_.guard_s.observe(latency_s)
        if self._last_cycle is not None:  # READY once the loop has dispatched as well
            self.notifier.guard_ran()

    def cycle_ran(self, latency_s: float) -> None:
        self._last_cycle = self.mono()
        self.metrics_.cycle_s.observe(latency_s)

    def planned(self, doc: dict[str, Any], solve_s: float, rung: str) -> None:
        self._plan = doc
        self.metrics_.solve_s.observe(solve_s)
        self.metrics_.plans.labels(rung=rung).inc()

    def alarm(self, doc: dict[str, Any]) -> None:
        self.alarms.append(dict(doc))
        if doc.get("kind") in ("shed", "restore"):
            self.metrics_.sheds.labels(action=doc["kind"], **{"class": str(doc.get("class", ""))}).inc()

    # --- what the servers read (SiteView) -----------------------------------------------------

    def health(self) -> Health:
        now = self.mono()
        st = self._state()
        stale = [s for s in st.get("stale", []) if s.split(".", 1)[0] in self._supply]
        return assess(
            loop_age_s=None if self._last_cycle is None else now - self._last_cycle,
            loop_period_s=self.cfg.control.dispatch_period_s,
            guard_age_s=None if self._last_guard is None else now - self._last_guard,
            guard_period_s=self.cfg.control.guard_period_s,
            stale_supply=stale,
            safe=self._guard_safe,
            no_plan=st.get("mode") == "safe",
        )

    def state(self) -> dict[str, Any]:
        doc = dict(self._state())
        doc["alarms"] = list(self.alarms)
        doc["health"] = self.health().as_dict()
        return doc

    def plan(self) -> dict[str, Any] | None:
        return self._plan

    def metrics(self) -> bytes:
        return self.metrics_.render()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every server now: a taken port stops the daemon before it touches a device."""
        started = []
        try:
            for s in self.servers:
                await s.start()
                started.append(s)
        except BaseException:
            for s in started:
                await s.close()
            raise

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """One task per started server: it only waits, and closes the server when cancelled."""
        async def hold(server: Any) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await server.close()

        return [(type(s).__name__, hold(s)) for s in self.servers]

    async def close(self) -> None:
        self.notifier.stopping()
        for s in self.servers:
            await s.close()
