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

import numpy as np
from pymodbus.server import ModbusTcpServer

from powerctl.config import ModbusTcp, SiteConfig
from powerctl.gpu.base import CapResult, GpuInfo
from powerctl.natures import Nature
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator
from powerctl.sim.plant.site import Plant

log = logging.getLogger(__name__)


class SimSite:
    def __init__(self, cfg: SiteConfig, plant: Plant) -> None:
        self.cfg = cfg
        self.plant = plant
        self.sims: dict[str, DeviceSimulator] = {}
        self._servers: list[ModbusTcpServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        for d in cfg.devices:
            if not isinstance(d.transport, ModbusTcp):
                continue
            prof = load_profile(d.profile)
            self.sims[d.name] = DeviceSimulator(
                prof, unit_id=d.transport.unit_id, on_write=self._writer(d.name, d.nature)
            )
        self.push()

    def _writer(self, name: str, nature: Nature) -> Callable[[str, float], None]:
        def on_write(signal: str, value: float) -> None:
            if nature is Nature.BATTERY and signal == "p_set_kw":
                self.plant.set_battery_kw(name, value)
            elif nature is Nature.GENSET and signal == "start_cmd":
                self.plant.set_genset_run(name, value >= 0.5)
            elif nature is Nature.PV and signal == "p_limit_pct":
                self.plant.set_pv_limit_pct(name, value)
            log.debug("%s <- %s = %g", name, signal, value)

        return on_write

    def push(self) -> None:
        """Copy the plant's measurements into the device registers."""
        p = self.plant
        for d in self.cfg.devices:
            sim = self.sims.get(d.name)
            if sim is None:
                continue
            if d.nature is Nature.PV:
                sim.set_signal("p_kw", p.pv_kw(d.name))
                sim.set_signal("e_kwh", p.pv_e_kwh(d.name))
                sim.set_signal("state", float(p.pv_state(d.name)))
            elif d.nature is Nature.BATTERY:
                sim.set_signal("p_kw", p.battery_kw(d.name))
                sim.set_signal("soc_pct", p.battery_soc_pct(d.name))
                sim.set_signal("max_charge_kw", p.battery_max_charge_kw(d.name))
                sim.set_signal("max_discharge_kw", p.battery_max_discharge_kw(d.name))
            elif d.nature is Nature.GENSET:
                sim.set_signal("p_kw", p.genset_kw(d.name))
                sim.set_signal("state", float(p.genset_status(d.name)))
                sim.set_signal("fuel_pct", p.genset_fuel_pct(d.name))
                sim.set_signal("run_time_s", float(int(p.genset_run_time_s(d.name))))
            elif d.nature is Nature.METER:
                sim.set_signal("p_kw", p.meter_kw(d.name))

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
            server = ModbusTcpServer([s.sim_device() for s in sims], address=(host, port))
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve_forever(), name=f"modbus-sim-{port}"))
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


class PlantGpus:
    """GPU backend over the plant's GPU cluster: the demo's daemon caps the very GPUs the plant
    loads the site with (one source of truth for GPU power in one process)."""

    name = "simulated-plant"

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        pool = plant.cfg.gpu
        self._infos = [
            GpuInfo(i, f"sim-gpu-{i}", f"SIM-{i:04d}", pool.min_w, pool.max_w, pool.max_w)
            for i in range(plant.gpu.n)
        ]

    def list_gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def read_power_w(self, index: int) -> float:
        return float(self.plant.gpu.power_w[index])

    def read_energy_j(self, index: int) -> float:
        return float(self.plant.gpu.e_kwh * 3.6e6 / max(self.plant.gpu.n, 1))

    def read_limits_w(self, index: int) -> tuple[float, float]:
        cap = float(self.plant.gpu.caps_w[index])
        return cap, cap

    def set_cap_w(self, index: int, cap_w: float) -> CapResult:
        caps = np.array(self.plant.gpu.caps_w, dtype=float)
        caps[index] = cap_w
        enforced = self.plant.set_gpu_caps_w(caps)[index]
        return CapResult(index, cap_w, float(enforced), float(enforced), abs(enforced - cap_w) < 1.0)
