"""The daemon: wires the control loop (``powerctl.control.loop``) to devices, GPUs, telemetry and
MQTT, and runs it.

One task per concern inside an ``asyncio.TaskGroup``: one poller per device, the planner, the
dispatcher and the guard (the loop's three stages), telemetry, MQTT. Every await that crosses a
wire has a timeout (in the drivers). Whatever ends the group (SIGTERM, Ctrl-C, a crashed task),
``run`` puts every GPU at the configured safe cap before it returns: never at maximum.

The other jobs live in their own modules: device writes (``powerctl.writes``), the status
(``powerctl.status``), telemetry and MQTT payloads (``powerctl.publish``), GPU reads and caps
(``powerctl.gpu_io``) and the guard task (``powerctl.guard_task``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from powerctl.config import ModbusRtu, ModbusTcp, SiteConfig
from powerctl.control.core import ControllerCore, Forecaster, OperatorMode, Overrides
from powerctl.control.guard import GuardDecision
from powerctl.control.loop import ControlLoop
from powerctl.control.split import slots_from_pool
from powerctl.genset_times import GensetTimes
from powerctl.gpu.base import GpuBackend
from powerctl.gpu.factory import make_backend
from powerctl.gpu.failsafe import apply_safe_caps_to
from powerctl.gpu_io import GPU_DEVICE, CapWriter, GpuReadings, apply_caps, read_caps_w
from powerctl.guard_task import SiteActuators, run_guard
from powerctl.hooks import HookRunner
from powerctl.io.modbus import ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles.library import device_profile
from powerctl.publish import Publisher
from powerctl.status import Status
from powerctl.tasks import halt_all
from powerctl.telemetry import Telemetry
from powerctl.watchdog import touch_heartbeat
from powerctl.web.surfaces import Surfaces
from powerctl.writes import WriteQueue

if TYPE_CHECKING:
    from powerctl.mqtt.prices import PriceFeed
    from powerctl.mqtt.sources import MqttSources

log = logging.getLogger("powerctl")
STATUS_LOG_EVERY_S = 60.0

__all__ = ["GPU_DEVICE", "Daemon", "Status"]


class Daemon:
    def __init__(
        self,
        cfg: SiteConfig,
        *,
        gpu_backend: GpuBackend | None = None,
        forecaster: Forecaster | None = None,
        clock: Callable[[], float] = time.time,
        on_cycle: Callable[[Status], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.on_cycle = on_cycle
        self.image = ProcessImage()
        self.status = Status()
        self._heartbeat_failed = False  # logged once
        self.gpu = gpu_backend if gpu_backend is not None else make_backend(cfg.gpu)
        if cfg.control.observe_only:
            from powerctl.observe import ObservingGpus

            log.warning("observe-only mode: reading and planning; nothing is written (devices, GPU caps, hooks)")
            self.gpu = ObservingGpus(self.gpu)
        self.slots = slots_from_pool(cfg.gpu, self.gpu.list_gpus())
        if forecaster is None:
            from powerctl.forecast import make_forecaster

            forecaster = make_forecaster(cfg)
        self.core = ControllerCore(cfg, self.slots, forecaster)
        # The billing period's peak import survives restarts (powerctl/grid_billing.py).
        self.core.billing.tracker.path = Path(cfg.control.state_dir) / "demand_peak.json"
        # so do the gensets' up/down times (powerctl/genset_times.py)
        self.core.gen_times = GensetTimes(Path(cfg.control.state_dir) / "gensets.json")
        run_hooks = cfg.gpu.shed_hooks and not cfg.control.observe_only
        self.hooks = HookRunner(cfg.gpu.shed_hooks, cfg.site.id) if run_hooks else None
        self.devices: dict[str, ModbusDevice] = {}
        for d in cfg.devices:
            profile = device_profile(d, cfg.control.profiles_dir)
            # Declare what the profile actually measures: a signal it cannot provide is absent
            # (consumers know it is optional), not "stale forever".
            for sig in {p.signal for p in profile.points if p.signal}:
                self.image.declare(d.name, d.nature, sig, d.signal_max_age_s)
            if isinstance(d.transport, ModbusTcp | ModbusRtu):
                self.devices[d.name] = ModbusDevice(
                    d.name, profile, d.transport, self.image,
                    poll_period_s=d.poll_period_s, stale_after_failures=d.stale_after_failures, clock=clock,
                )
        self.telemetry = Telemetry(cfg.telemetry, cfg.site.id, cfg.site.module, Path(cfg.control.state_dir))
        self.commands = None
        self.mqtt = None
        self.price_feed: PriceFeed | None = None  # tariff.price_topic's prices (powerctl.mqtt.prices)
        if cfg.mqtt is not None:
            from powerctl.mqtt.commands import CommandState
            from powerctl.mqtt.link import MqttLink

            # leases survive a restart (kept atomically in the state dir); changes paced, ceiling
            # rises slewed (CommandState.for_site)
            self.commands = CommandState.for_site(cfg, clock, state_path=Path(cfg.control.state_dir) / "leases.json")
            self.mqtt = MqttLink(cfg.mqtt, cfg, self.image, self.commands, clock, sources=self._price_sources(cfg))
        self.publish = Publisher(cfg, self.telemetry, self.mqtt, clock)
        node_rows = getattr(self.gpu, "node_rows", None)  # node agents (powerctl.gpu.agents): per-node rows
        self.publish.gpu_node_rows = node_rows if callable(node_rows) else None
        self.writes = WriteQueue(self.devices, on_event=self.publish.event, observe_only=cfg.control.observe_only)
        # status page, API, metrics, SCADA, sd_notify (powerctl/web/surfaces.py): read-only views
        self.surfaces = Surfaces(cfg, lambda: self.status.doc(cfg))
        self.publish.on_alarm = self.surfaces.alarm
        self.publish.on_plan = lambda doc, plan: self.surfaces.planned(doc, plan.solve_time_s, plan.rung)
        self._guard_latency_s: float | None = None
        self._status_logged_s = -STATUS_LOG_EVERY_S
        readings = GpuReadings(self.image, self.gpu, self.slots, clock, lambda: self.loop.caps_w,
                               max_age_s=max(1.0, 5 * cfg.control.guard_period_s))
        actuators = SiteActuators(CapWriter(self.gpu), self.hooks, setpoints_to=self.writes.commands)
        self.loop = ControlLoop(cfg, self.slots, self.core, readings, actuators, on_clock_step=self._on_clock_step)
        self.guard = self.loop.guard
        self._wake_guard = asyncio.Event()

    @property
    def caps_w(self) -> dict[int, float]:
        return self.loop.caps_w

    def _price_sources(self, cfg: SiteConfig) -> MqttSources | None:
        """The MQTT sources with the tariff's price topic (powerctl.mqtt.prices), None without one."""
        prices = self.core.billing.prices
        if cfg.tariff is None or cfg.tariff.price_topic is None or prices is None:
            return None
        from powerctl.mqtt.prices import PricedSources, PriceFeed
        from powerctl.mqtt.sources import build_sources

        self.price_feed = PriceFeed(cfg.tariff.price_topic, cfg.tariff.price_max_age_s)
        prices.live = self.price_feed.series
        return PricedSources(build_sources(cfg), self.price_feed)

    def overrides(self, now: float) -> Overrides:
        if self.commands is None:
            return Overrides()
        return Overrides(
            mode=OperatorMode(self.commands.mode(now)),
            gpu_budget_max_kw=self.commands.gpu_budget_ceiling_kw(now),
            battery_reserve_pct=self.commands.battery_reserve_pct(now),
        )

    def status_line(self) -> str:
        return self.status.line()

    def _now(self) -> float:
        return self.loop.watch_clock(self.clock(), time.monotonic())

    def _on_clock_step(self, step_s: float, now: float) -> None:
        # the loop shifted the plan and genset times; command leases move with the clock too
        if self.commands is not None:
            self.commands.on_clock_step(step_s)
        self.telemetry.emit("event", {"kind": "clock_step", "step_s": step_s}, now)

    def _on_guard(self, d: GuardDecision) -> None:
        self.status.after_guard(d)
        self.surfaces.guard_ran(d.safe, self._guard_latency_s)  # the guard really ran: feeds sd_notify
        self.publish.guard(d)

    def _on_guard_latency(self, latency_s: float) -> None:
        self._guard_latency_s = latency_s

    def _heartbeat(self) -> None:
        # utime, no data written: works on a full disk (see powerctl/watchdog.py)
        if not touch_heartbeat(self.cfg.control.heartbeat_path) and not self._heartbeat_failed:
            self._heartbeat_failed = True
            log.warning("heartbeat: cannot touch %s or its directory", self.cfg.control.heartbeat_path)

    # --- tasks: the loop's stages at their periods ---------------------------------------------

    async def _planner(self) -> None:
        period = self.cfg.control.mpc_period_s
        deadline = self.cfg.control.solve_deadline_s
        while True:
            t0 = time.monotonic()
            now = self._now()
            if not self.loop.plan_ready(now, time.monotonic()):
                await asyncio.sleep(0.1)
                continue
            try:
                # the solve runs in a worker thread; the loop never waits past the deadline
                # (asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that arrives as the
                # thread finishes, and the daemon would not stop)
                async with asyncio.timeout(deadline + 0.5):
                    plan = await asyncio.to_thread(self.loop.plan, now, deadline)
                if plan is not None:
                    st = self.status
                    st.last_solve_ms = plan.solve_time_s * 1000.0
                    st.plan_rung, st.plan_status = plan.rung, plan.status
                    self.publish.plan(now, plan)
            except TimeoutError:
                log.warning("planner: no plan within %.1f s; keeping the previous one", deadline + 0.5)
            except Exception:
                # A planner crash must not take the guard down with it: the dispatcher falls back
                # to the safe cap once the last plan is too old.
                log.exception("planner failed; dispatch falls back to the safe cap when the plan ages out")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    async def _dispatcher(self) -> None:
        period = self.cfg.control.dispatch_period_s
        while True:
            t0 = time.monotonic()
            now = self._now()
            cmd = self.loop.dispatch_tick(now, self.overrides(now))
            self._wake_guard.set()  # the new caps go through the guard at once
            self._heartbeat()
            st = self.status
            st.after_dispatch(self.cfg, self.image, self.loop, now, cmd)
            st.written, st.write_errors = dict(self.writes.written), self.writes.errors
            self.publish.cycle(now, st, cmd, self.image, self.loop.caps_w)
            st.cycle_ms = [*st.cycle_ms[-299:], (time.monotonic() - t0) * 1000.0]
            self.surfaces.cycle_ran(st.cycle_ms[-1] / 1000.0)
            if self.on_cycle is not None:
                self.on_cycle(st)
            elif time.monotonic() - self._status_logged_s >= STATUS_LOG_EVERY_S:
                # one status line a minute at INFO (the status page and /api/state have every cycle)
                self._status_logged_s = time.monotonic()
                log.info(st.line())
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or the task is cancelled; safe caps on the way out."""
        stop = stop or asyncio.Event()
        # start from the safe cap (never from whatever maximum the GPUs booted with)
        apply_safe_caps_to(self.gpu, self.cfg.gpu.safe_cap_w)  # never raises a lower cap
        self.loop.start(self.clock(), time.monotonic(), read_caps_w(self.gpu, [s.index for s in self.slots]))
        # bind the HTTP and SCADA ports now: a taken port stops the start with the address (OSError)
        await self.surfaces.start()
        # Everything built so far (the cvxpy problem, profiles, config) lives as long as the daemon:
        # keep it out of the collector's full passes, whose pause grows with the heap and stretched
        # guard gaps to ~1 s under a flood of MQTT messages (tests/security/test_mqtt_flood.py)
        gc.freeze()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(serve, name=name) for name, serve in self.surfaces.tasks()]
                tasks += [tg.create_task(dev.run(), name=f"poll-{dev.name}") for dev in self.devices.values()]
                tasks.append(tg.create_task(self.telemetry.run(), name="telemetry"))
                if self.mqtt is not None:
                    tasks.append(tg.create_task(self.mqtt.run(), name="mqtt"))
                planner = tg.create_task(self._planner(), name="planner")
                tasks += [planner, tg.create_task(
                    run_guard(self.loop, self.gpu, clock=self.clock, planner=planner, wake=self._wake_guard,
                              hooks=self.hooks, on_decision=self._on_guard, on_latency=self._on_guard_latency),
                    name="guard",
                )]
                tasks.append(tg.create_task(self._dispatcher(), name="dispatcher"))
                await stop.wait()
                # Safe caps first, before anything is cancelled: a task that is slow to cancel
                # (a solver thread, a device driver) must not delay the fail-safe.
                apply_caps(self.gpu, self.guard.safe_caps())
                # The TaskGroup cancels its children once and waits: a child that lost that cancel
                # would hold the stop for ever (powerctl/tasks.py); end each one here for sure.
                await halt_all(tasks)
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.writes.cancel()
            with contextlib.suppress(Exception):
                await self.surfaces.close()
            # the guard task already did this on cancellation; repeat in case it never started
            apply_caps(self.gpu, self.guard.safe_caps())
            # then (GPUs safe first) a battery left in a forced mode would keep charging or
            # discharging without us: hand it back to its own control (bounded, powerctl/writes.py)
            with contextlib.suppress(Exception):
                await self.writes.release()
            with contextlib.suppress(Exception):
                self.telemetry.emit("event", {"kind": "stopped", "caps_w": self.cfg.gpu.safe_cap_w}, self.clock())
                self.telemetry.close()
            log.info("stopped: GPUs at or below the safe cap %.0f W", self.cfg.gpu.safe_cap_w)


class _Stop(Exception):
    """Raised inside the task group to end it cleanly."""
