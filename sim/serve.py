"""Serve a site config's devices from a simulated plant over Modbus TCP on loopback.

``SimSite`` builds one register-level simulator per Modbus TCP device of the config (from the same
profiles the daemon reads), groups devices that share a host:port behind one pymodbus server (one
unit id each, like a gateway), pushes the plant's measurements into the registers every tick, and
hands setpoint writes back to the plant. ``powerctl sim serve site.toml`` runs it alone (for the
unmodified daemon in another process); ``powerctl demo`` runs it with the daemon in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from pymodbus.server import ModbusTcpServer

from powerctl.config import ModbusTcp, SiteConfig
from powerctl.natures import Nature
from powerctl.profiles.library import device_profile
from powerctl.scada import bind_problem
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.port import PlantGpus, apply_write, measurements
from powerctl.sim.plant.site import Plant
from powerctl.web.server import PortInUse

log = logging.getLogger(__name__)

__all__ = ["PlantGpus", "SimSite"]  # PlantGpus lives in sim/plant/port.py; imported from here too


class SimSite:
    def __init__(self, cfg: SiteConfig, plant: Plant) -> None:
        self.cfg = cfg
        self.plant = plant
        self.sims: dict[str, DeviceSimulator] = {}
        self._servers: list[ModbusTcpServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = False
        for d in cfg.devices:
            if not isinstance(d.transport, ModbusTcp):
                continue
            prof = device_profile(d, cfg.control.profiles_dir)
            self.sims[d.name] = DeviceSimulator(
                prof, unit_id=d.transport.unit_id, on_write=self._writer(d.name, d.nature)
            )
        self.push()

    def _writer(self, name: str, nature: Nature) -> Callable[[str, float], None]:
        def on_write(signal: str, value: float) -> None:
            apply_write(self.plant, nature, name, signal, value)

        return on_write

    def push(self) -> None:
        """Copy the plant's measurements into the device registers (a signal the device's profile
        does not map is ignored by its simulator)."""
        for d in self.cfg.devices:
            sim = self.sims.get(d.name)
            if sim is None:
                continue
            for signal, value in measurements(self.plant, d.nature, d.name).items():
                sim.set_signal(signal, value)

    def step(self, t_s: float) -> None:
        self.plant.step(t_s)
        self.push()

    async def start(self) -> None:
        groups: dict[tuple[str, int], list[DeviceSimulator]] = {}
        for d in self.cfg.devices:
            if d.name in self.sims:
                assert isinstance(d.transport, ModbusTcp)
                groups.setdefault((d.transport.host, d.transport.port), []).append(self.sims[d.name])
        for (host, port), sims in groups.items():
            server = ModbusTcpServer([u for s in sims for u in s.sim_devices()], address=(host, port))
            # listen here, not in serve_forever's task: pymodbus only logs a taken port there, and
            # the daemon would then drive whatever else listens on it
            if not await server.listen():
                await self.stop()
                raise PortInUse(f"simulated devices: cannot listen on {host}:{port}: {bind_problem(host, port)}")
            self._servers.append(server)
        # wait until every port accepts connections, so a daemon started next finds them
        for (host, port) in groups:
            for _ in range(100):
                try:
                    async with asyncio.timeout(0.5):
                        _r, w = await asyncio.open_connection(host, port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"simulated device on {host}:{port} did not start")
        self.listening = True  # every port bound and accepting (sim serve says so only then)

    async def stop(self) -> None:
        for s in self._servers:
            with suppress(Exception):
                await s.shutdown()
        for t in self._tasks:
            t.cancel()
        self._servers.clear()
        self._tasks.clear()

    async def run(self, clock: Callable[[], float] = time.time, tick_s: float = 0.1) -> None:
        """Advance the plant with ``clock`` every ``tick_s`` until cancelled."""
        await self.start()
        try:
            while True:
                self.step(clock())
                await asyncio.sleep(tick_s)
        finally:
            await self.stop()
