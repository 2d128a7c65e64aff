"""Fault-injection rig: the real daemon against the simulated site over Modbus TCP on loopback.

``FaultRig`` runs, in the test's event loop:

- a ``Plant`` (PV set by the test through ``rig.pv_kw``; a genset that can be told to ignore
  start commands) advanced every ``tick_s`` with the wall clock, and one ``SimServer`` per device
  port (so ``Fault.DISCONNECT`` can drop connections), fed from the plant by ``SimSite``;
- the ``Daemon`` with a ``PlantGpus`` backend, a steppable clock (``rig.clock``) and, unless the
  test passes one, a persistence forecaster;
- recorders for what the invariants are checked against, independently of the daemon's own view:
  every setpoint write as the device simulator decoded it, every cap the GPU backend was asked
  for (with whether any supply signal was stale in the daemon's process image at that moment),
  the plant's powers every tick, and every dispatcher cycle.

The ``check_*`` methods assert the invariants of issue 8 on those recordings.
"""

from __future__ import annotations

import asyncio
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from powerctl.config import ModbusTcp, SiteConfig, parse_config
from powerctl.control.core import Forecaster
from powerctl.daemon import Daemon, Status
from powerctl.gpu.base import CapResult
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.sim.devices import DeviceSimulator, Fault, SimServer
from powerctl.sim.plant.site import Plant
from powerctl.sim.serve import PlantGpus, SimSite
from tests.servers import free_port

# NVML takes limits in integer mW: a "rise" below 1 mW is float noise, not a rise.
CAP_TOL_W = 1e-3

__all__ = ["Fault", "FaultRig", "SteppableClock", "fault_config"]


class SteppableClock:
    """Wall clock plus an offset the test can step (an NTP step forward or back)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def step(self, delta_s: float) -> None:
        self.offset_s += delta_s


def fault_config(
    tmp_path: Path,
    *,
    battery: dict[str, Any] | None = None,
    genset: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
    telemetry: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    device_timeout_s: float = 1.0,
) -> SiteConfig:
    """The suite's site (tests/faults/site.toml) on free loopback ports, short horizon, tight supply.

    Defaults make the supply bind: the battery may discharge 40 kW (the 192 GPUs alone can draw
    145 kW with overhead), so with PV around 60 kW the guard must keep caps well below maximum.
    """
    data = tomllib.loads((Path(__file__).parent / "site.toml").read_text())
    run = tmp_path / "run"
    data["control"].update(
        mpc_period_s=2.0,
        horizon=[{"step_s": 60, "count": 30}, {"step_s": 900, "count": 12}],
        heartbeat_path=str(run / "heartbeat"),
        state_dir=str(run),
    )
    data["control"].update(control or {})
    for d in data["devices"]:
        d["transport"]["port"] = free_port()
        d["transport"]["timeout_s"] = device_timeout_s
        if d["nature"] == "battery":
            d["limits"].update({"max_discharge_kw": 40.0, "max_charge_kw": 40.0, **(battery or {})})
        if d["nature"] == "genset":
            d["limits"].update(genset or {})
    data["telemetry"] = {"period_s": 1.0, "file": str(run / "telemetry.lp"), **(telemetry or {})}
    if mqtt is not None:
        data["mqtt"] = mqtt
    return parse_config(data, tmp_path / "site.toml")


def persistence_forecaster(cfg: SiteConfig) -> Forecaster:
    """PV stays as measured (worst case when stale), every GPU wants its maximum."""
    pv_names = [d.name for d in cfg.by_nature(Nature.PV)]

    def fc(now_s: float, image: ProcessImage, steps_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(steps_s)
        pv = np.array([[image.worst(p, "p_kw", now_s, high=0.0)] * n for p in pv_names])
        demand = np.array([[c.gpus * cfg.gpu.max_w / 1000.0] * n for c in cfg.gpu.classes])
        return pv, demand, np.zeros(n)

    return fc


@dataclass
class CapSet:
    t: float  # time.monotonic()
    index: int
    cap_w: float
    stale_supply: bool  # any supply signal not GOOD in the daemon's image at the guard decision behind it


@dataclass
class Sample:
    t: float  # time.monotonic()
    load_kw: float
    pv_kw: float  # available PV
    battery_kw: float
    battery_limit_kw: float  # discharge the battery allows now
    genset_kw: float
    genset_cap_kw: float  # rating of running gensets
    unserved_kw: float
    caps_kw: float  # sum of the caps the plant's GPUs hold
    soc_pct: float
    grid_cap_kw: float = 0.0  # import the grid allows now (0 in an outage or an island)


@dataclass
class Cycle:
    t: float  # time.monotonic()
    t_s: float  # the daemon's clock
    mode: str
    caps_w_max: float
    stale: list[str]
    budget_kw: float  # the dispatcher's GPU budget (all classes)


@dataclass
class FaultRig:
    cfg: SiteConfig
    pv_kw: float = 60.0
    soc0_pct: float = 60.0
    forecaster: Forecaster | None = None
    tick_s: float = 0.05
    gpu_tau_s: float = 0.5
    genset_ignores_start: bool = False
    genset_running: bool = False  # start the plant with the genset already running
    clock: SteppableClock = field(default_factory=SteppableClock)
    writes: list[tuple[float, str, str, float]] = field(default_factory=list)
    caps: list[CapSet] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plant = Plant(self.cfg, pv_kw_fn=lambda _t: self.pv_kw, t0_s=time.time(),
                           soc0_pct=self.soc0_pct, gpu_tau_s=self.gpu_tau_s, genset_start_delay_s=1.0)
        if self.genset_running:
            for g in self.plant.gensets.values():
                g.command(True)
                g.status = type(g.status).RUNNING
        real_run = self.plant.set_genset_run

        def set_run(name: str, run: bool) -> None:
            if run and self.genset_ignores_start:
                return  # the controller sees no start: status stays stopped
            real_run(name, run)

        self.plant.set_genset_run = set_run  # type: ignore[method-assign]
        self.site = SimSite(self.cfg, self.plant)
        for name, sim in self.site.sims.items():
            self._record_writes(name, sim)
        self.servers: list[SimServer] = []
        by_port: dict[int, list[DeviceSimulator]] = {}
        for d in self.cfg.devices:
            if isinstance(d.transport, ModbusTcp):
                by_port.setdefault(d.transport.port, []).append(self.site.sims[d.name])
        for port, sims in by_port.items():
            self.servers.append(SimServer(sims, port))
        self.gpus = PlantGpus(self.plant)
        self._wrap_gpus()
        self.daemon = Daemon(
            self.cfg,
            gpu_backend=self.gpus,
            forecaster=self.forecaster or persistence_forecaster(self.cfg),
            clock=self.clock,
            on_cycle=self._on_cycle,
        )
        self._supply_signals = self._supply_signal_names()
        self._decided_stale = True  # the supply data behind the newest guard decision (none yet: stale)
        self._wrap_guard()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.t_start = 0.0
        self.t_end = 0.0

    # --- recorders ----------------------------------------------------------------------------

    def _record_writes(self, name: str, sim: DeviceSimulator) -> None:
        inner = sim.on_write

        def on_write(signal: str, value: float) -> None:
            self.writes.append((time.monotonic(), name, signal, value))
            if inner is not None:
                inner(signal, value)

        sim.on_write = on_write

    def _supply_signal_names(self) -> list[tuple[str, str]]:
        """The signals the guard counts supply from (what 'supply data stale' means)."""
        out = []
        for d in self.cfg.by_nature(Nature.PV):
            out.append((d.name, "p_kw"))
        for d in self.cfg.by_nature(Nature.BATTERY):
            out.append((d.name, "soc_pct"))
        for d in self.cfg.by_nature(Nature.GENSET):
            out += [(d.name, "running"), (d.name, "p_kw")]
        return out

    def supply_stale(self, at_s: float | None = None) -> bool:
        now = self.clock() if at_s is None else at_s
        return any(not self.daemon.image.get(d, s, now).good for d, s in self._supply_signals)

    def _wrap_guard(self) -> None:
        # what a cap is judged by is the data its guard decision saw: the cap writer sends the
        # caps after the decision, and a signal that ages out while it works through 192 GPUs on
        # a busy machine did not make a decision taken on fresh data a raise on stale data
        loop = self.daemon.loop
        real_tick = loop.guard_tick

        def guard_tick(wall_s: float, **kw: Any) -> Any:
            self._decided_stale = self.supply_stale(wall_s)
            return real_tick(wall_s, **kw)

        loop.guard_tick = guard_tick  # type: ignore[method-assign]

    def _wrap_gpus(self) -> None:
        real_set = self.gpus.set_cap_w

        def set_cap_w(index: int, cap_w: float) -> CapResult:
            stale = self._decided_stale if hasattr(self, "daemon") else True
            self.caps.append(CapSet(time.monotonic(), index, float(cap_w), stale))
            return real_set(index, cap_w)

        self.gpus.set_cap_w = set_cap_w  # type: ignore[method-assign]

    def _on_cycle(self, st: Status) -> None:
        self.cycles.append(Cycle(time.monotonic(), st.t_s, st.mode, st.caps_w_max, list(st.stale),
                                 sum(st.gpu_budget_kw.values())))

    def _sample(self) -> None:
        p = self.plant
        bats = list(p.batteries.values())
        gens = list(p.gensets.values())
        self.samples.append(Sample(
            t=time.monotonic(),
            load_kw=p.load_kw,
            pv_kw=sum(pv.available_kw for pv in p.pvs.values()),
            battery_kw=sum(b.p_kw for b in bats),
            battery_limit_kw=sum(b.discharge_limit_kw() for b in bats),
            genset_kw=sum(g.p_kw for g in gens),
            genset_cap_kw=sum(g.rating_kw for g in gens if g.running),
            unserved_kw=p.unserved_kw_now,
            caps_kw=float(p.gpu.caps_w.sum()) / 1000.0,
            soc_pct=bats[0].soc_pct if bats else math.nan,
            grid_cap_kw=p.grid_import_max_kw if p.grid_up else 0.0,
        ))

    # --- lifecycle ----------------------------------------------------------------------------

    async def _plant_loop(self) -> None:
        while True:
            self.site.step(time.time())
            self._sample()
            await asyncio.sleep(self.tick_s)

    async def __aenter__(self) -> FaultRig:
        for s in self.servers:
            await s.start()
        self._tasks.append(asyncio.create_task(self._plant_loop(), name="plant"))
        await asyncio.sleep(0.2)
        self.t_start = time.monotonic()
        self._tasks.append(asyncio.create_task(self.daemon.run(self._stop), name="daemon"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        daemon_task = self._tasks[1]
        try:
            await asyncio.wait_for(daemon_task, 10.0)
        except TimeoutError:
            daemon_task.cancel()
            raise AssertionError("the daemon did not stop within 10 s") from None
        finally:
            self.t_end = time.monotonic()
            self._tasks[0].cancel()
            await asyncio.gather(self._tasks[0], return_exceptions=True)
            for s in self.servers:
                await s.stop()

    async def sleep(self, seconds: float) -> None:
        """Wait, failing at once if the daemon task ended on its own (crashed)."""
        task = self._tasks[1]
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:
            raise AssertionError(f"daemon stopped by itself: {task.exception() if not task.cancelled() else 'cancelled'}")

    async def settled(self, timeout_s: float = 10.0) -> float:
        """Wait until the daemon runs on its plan with fresh data and some caps above the safe cap."""
        def ok() -> bool:
            c = self.cycles[-1] if self.cycles else None
            return c is not None and c.mode == "plan" and not c.stale and c.caps_w_max > self.cfg.gpu.safe_cap_w
        return await self.wait_for(ok, timeout_s, "daemon on its plan with caps above the safe cap")

    def mark(self, what: str) -> float:
        t = time.monotonic()
        self.events.append((t, what))
        return t

    def sim(self, device: str) -> DeviceSimulator:
        return self.site.sims[device]

    def set_fault(self, device: str, fault: Fault) -> float:
        self.sim(device).fault = fault
        return self.mark(f"{device} {fault.value}")

    async def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``cond`` until true; returns the monotonic time it became true."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if cond():
                return time.monotonic()
            await self.sleep(0.05)
        raise AssertionError(f"not within {timeout_s} s: {what}")

    # --- invariants ---------------------------------------------------------------------------

    def check_commands_within_limits(self) -> None:
        """Every setpoint that reached a device and every cap sent to a GPU is inside its limits."""
        for t, dev, sig, v in self.writes:
            d = self.cfg.device(dev)
            assert math.isfinite(v), f"{dev}.{sig} = {v} at {t - self.t_start:.2f} s"
            if d.nature is Nature.BATTERY and sig == "p_set_kw":
                lim = d.limits
                assert -lim.max_charge_kw - 1e-6 <= v <= lim.max_discharge_kw + 1e-6, (dev, sig, v)
            elif d.nature is Nature.GENSET and sig == "start_cmd":
                assert v in (0.0, 1.0), (dev, sig, v)
            elif d.nature is Nature.PV and sig == "p_limit_pct":
                assert 0.0 <= v <= 100.0, (dev, sig, v)
        g = self.cfg.gpu
        assert self.caps, "no cap was ever sent"
        bad = [c for c in self.caps if not (g.min_w - 1e-6 <= c.cap_w <= g.max_w + 1e-6)]
        assert not bad, f"caps outside [{g.min_w}, {g.max_w}] W: {bad[:5]}"

    def check_no_raise_while_stale(self, after: float = 0.0) -> int:
        """No GPU cap goes up while the daemon's image has a supply signal that is not GOOD.

        Returns how many caps were sent while stale after ``after`` (so a test can check the case
        was exercised; before the first polls everything is missing, hence stale)."""
        last: dict[int, float] = {}
        n_stale = 0
        for c in self.caps:
            prev = last.get(c.index)
            if c.stale_supply:
                n_stale += c.t > after
                assert prev is None or c.cap_w <= prev + CAP_TOL_W, (
                    f"GPU {c.index} raised {prev} -> {c.cap_w} W at {c.t - self.t_start:.2f} s with supply stale")
            last[c.index] = c.cap_w
        return n_stale

    def caps_sum_kw_at(self, t: float) -> float:
        """Sum of the last cap sent to each GPU at or before ``t`` (kW)."""
        last: dict[int, float] = {}
        for c in self.caps:
            if c.t > t:
                break
            last[c.index] = c.cap_w
        return sum(last.values()) / 1000.0

    def check_no_raise_between(self, t0: float, t1: float) -> None:
        """Ground truth: no GPU cap goes up in [t0, t1] (a fault in force, after its detection time)."""
        last: dict[int, float] = {}
        for c in self.caps:
            prev = last.get(c.index)
            if t0 <= c.t <= t1:
                assert prev is None or c.cap_w <= prev + CAP_TOL_W, (
                    f"GPU {c.index} raised {prev} -> {c.cap_w} W at {c.t - self.t_start:.2f} s "
                    f"(window {t0 - self.t_start:.2f}..{t1 - self.t_start:.2f} s)")
            last[c.index] = c.cap_w

    def margin_kw(self, available_kw: float) -> float:
        c = self.cfg.control
        return c.supply_margin_kw + c.supply_margin_pct / 100.0 * available_kw

    def available_kw(self, s: Sample) -> float:
        return s.pv_kw + s.battery_limit_kw + s.genset_cap_kw + s.grid_cap_kw

    def check_supply(self, *, transients: list[tuple[float, float]] = (), tol_kw: float = 0.5) -> float:  # type: ignore[assignment]
        """Plant truth: nothing unserved, and load <= available supply - margin (+ ``tol_kw`` for the
        GPUs' power lag), except inside ``transients`` [(t0, t1)] (a step in supply and the time the
        guard and the GPUs need to follow it). Returns the unserved energy (kWh) inside transients."""
        assert self.samples
        unserved_kwh = 0.0
        prev_t = self.samples[0].t
        settle_s = 4 * self.gpu_tau_s + self.cfg.control.guard_period_s
        for s in self.samples:
            dt = s.t - prev_t
            prev_t = s.t
            if s.t < self.t_start + settle_s:
                continue  # the daemon is still taking the GPUs from boot caps to the safe cap
            if any(a <= s.t <= b for a, b in transients):
                unserved_kwh += s.unserved_kw * dt / 3600.0
                continue
            assert s.unserved_kw <= 1e-6, f"unserved {s.unserved_kw:.2f} kW at {s.t - self.t_start:.2f} s: {s}"
            avail = self.available_kw(s)
            if s.caps_kw * 1000.0 <= self.cfg.gpu.count * self.cfg.gpu.min_w + 1e-6:
                continue  # every GPU at its floor: nothing a cap can do (shedding's job)
            limit = avail - self.margin_kw(avail) + tol_kw
            assert s.load_kw <= limit, (
                f"load {s.load_kw:.1f} kW > supply {avail:.1f} - margin at {s.t - self.t_start:.2f} s: {s}")
        return unserved_kwh

    def check_cadence(self, *, min_fraction: float = 0.8) -> None:
        """The dispatcher ran about every dispatch period and no cycle overran it; the guard ran
        about every guard period."""
        period = self.cfg.control.dispatch_period_s
        elapsed = (self.t_end or time.monotonic()) - self.t_start
        st = self.daemon.status
        expected = elapsed / period
        assert st.cycles >= min_fraction * expected - 1, f"{st.cycles} dispatch cycles in {elapsed:.1f} s"
        gaps = np.diff([c.t for c in self.cycles])
        assert gaps.size and gaps.max() < 2 * period, (
            f"dispatcher stalled: longest gap {gaps.max():.2f} s between cycles (period {period} s)")
        assert max(st.cycle_ms) < 1000.0 * period, f"a dispatch cycle took {max(st.cycle_ms):.0f} ms"
        g_expected = elapsed / self.cfg.control.guard_period_s
        assert st.guard_cycles >= min_fraction * g_expected - 2, f"{st.guard_cycles} guard cycles in {elapsed:.1f} s"

    def summary(self) -> str:
        st = self.daemon.status
        el = (self.t_end or time.monotonic()) - self.t_start
        return (f"{el:.1f} s: {st.cycles} cycles (max {max(st.cycle_ms, default=0):.0f} ms), "
                f"{st.guard_cycles} guard cycles, {st.guard_cuts} cuts, {len(self.caps)} cap sets, "
                f"{len(self.writes)} writes, rung {st.plan_rung}, write errors {st.write_errors}; "
                f"events {[(round(t - self.t_start, 2), w) for t, w in self.events]}")

    def check_all(self, *, transients: list[tuple[float, float]] = ()) -> float:  # type: ignore[assignment]
        print(self.summary())
        self.check_commands_within_limits()
        self.check_no_raise_while_stale()
        self.check_cadence()
        return self.check_supply(transients=transients)
