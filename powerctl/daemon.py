"""The daemon: wires the controller core to devices, GPUs, telemetry and MQTT.

One task per concern inside an ``asyncio.TaskGroup``: one poller per device, the planner, the
dispatcher, the guard, the GPU meter, telemetry, MQTT, the heartbeat. Every await that crosses a
wire has a timeout (in the drivers). Whatever ends the group (SIGTERM, Ctrl-C, a crashed task),
``run`` puts every GPU at the configured safe cap before it returns: never at maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from powerctl.config import ModbusRtu, ModbusTcp, SiteConfig
from powerctl.control.core import Commands, ControllerCore, Forecaster, Overrides
from powerctl.control.guard import Guard, GuardDecision, apply_caps, run_guard
from powerctl.control.split import slots_from_pool
from powerctl.gpu.base import GpuBackend
from powerctl.gpu.factory import make_backend
from powerctl.gpu.failsafe import apply_safe_caps_to
from powerctl.hooks import HookRunner
from powerctl.io.modbus import DeviceError, ModbusDevice
from powerctl.natures import SIGNALS, Nature
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles import load_profile
from powerctl.profiles.values import SetpointRangeError
from powerctl.telemetry import Telemetry
from powerctl.watchdog import touch_heartbeat

log = logging.getLogger("powerctl")

GPU_DEVICE = "gpu"
CLOCK_STEP_S = 1.0  # clock vs monotonic disagreement that counts as a step (NTP slewing is far below)
FRESH_WAIT_S = 5.0  # after a step, how long the planner waits for readings taken after it


@dataclass
class Status:
    """What the last cycles did; read by the status line, the live table and tests."""

    t_s: float = 0.0
    cycles: int = 0
    guard_cycles: int = 0
    guard_cuts: int = 0
    mode: str = "starting"
    pv_kw: float | None = None
    soc_pct: float | None = None
    battery_kw: float | None = None
    genset_kw: float | None = None
    genset_running: bool | None = None
    gpu_kw: float | None = None
    gpu_budget_kw: dict[str, float] = field(default_factory=dict)
    caps_w_min: float = 0.0
    caps_w_max: float = 0.0
    caps_w_mean: float = 0.0
    last_solve_ms: float | None = None
    plan_rung: str = ""
    plan_status: str = ""
    available_kw: float | None = None
    stale: list[str] = field(default_factory=list)
    written: dict[str, float] = field(default_factory=dict)
    write_errors: int = 0
    cycle_ms: list[float] = field(default_factory=list)


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
        infos = self.gpu.list_gpus()
        self.slots = slots_from_pool(cfg.gpu, infos)
        if forecaster is None:
            from powerctl.forecast import make_forecaster

            forecaster = make_forecaster(cfg)
        self.core = ControllerCore(cfg, self.slots, forecaster)
        self.guard = Guard(cfg, self.slots, hooked_classes=[h.workload for h in cfg.gpu.shed_hooks])
        self.hooks = HookRunner(cfg.gpu.shed_hooks, cfg.site.id) if cfg.gpu.shed_hooks else None
        # caps the dispatcher asks for; the guard is the only one that sends caps to GPUs
        self.requested_caps: dict[int, float] | None = None
        self.caps_w: dict[int, float] = {s.index: cfg.gpu.safe_cap_w for s in self.slots}
        self._wake_guard = asyncio.Event()
        self.devices: dict[str, ModbusDevice] = {}
        for d in cfg.devices:
            profile = load_profile(d.profile)
            # Declare what the profile actually measures: a signal it cannot provide is absent
            # (consumers know it is optional), not "stale forever".
            for sig in {p.signal for p in profile.points if p.signal}:
                self.image.declare(d.name, d.nature, sig, d.signal_max_age_s)
            if isinstance(d.transport, ModbusTcp | ModbusRtu):
                self.devices[d.name] = ModbusDevice(
                    d.name,
                    profile,
                    d.transport,
                    self.image,
                    poll_period_s=d.poll_period_s,
                    stale_after_failures=d.stale_after_failures,
                    clock=clock,
                )
        for sig in SIGNALS[Nature.GPU_POOL]:
            self.image.declare(GPU_DEVICE, Nature.GPU_POOL, sig, max(1.0, 5 * cfg.control.guard_period_s))
        state_dir = Path(cfg.control.state_dir)
        self.telemetry = Telemetry(cfg.telemetry, cfg.site.id, cfg.site.module, state_dir)
        self._last_written: dict[str, tuple[float, float]] = {}
        self._clock_ref: tuple[float, float] | None = None  # (clock, monotonic) at the last look
        self._fresh_after: tuple[float, float] | None = None  # start or clock step: (since, give up at)
        self._pending: dict[str, dict[str, tuple[float, float]]] = {}  # device -> signal -> (value, deadband)
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._unsupported: set[tuple[str, str]] = set()
        self.commands = None
        self.mqtt = None
        if cfg.mqtt is not None:
            from powerctl.mqtt.commands import CommandLimits, CommandState
            from powerctl.mqtt.link import MqttLink

            # leases survive a restart (kept atomically in the state dir)
            self.commands = CommandState(CommandLimits.from_site(cfg), cfg.mqtt.command_lease_s, clock,
                                         state_path=Path(cfg.control.state_dir) / "leases.json")
            self.mqtt = MqttLink(cfg.mqtt, cfg, self.image, self.commands, clock)

    # --- GPUs ---------------------------------------------------------------------------------

    def meter_gpus(self) -> float:
        """Read GPU power into the image and feed the forecaster's demand history."""
        now = self.clock()
        class_w = dict.fromkeys(self.core.class_names, 0.0)
        class_cap_w = dict.fromkeys(self.core.class_names, 0.0)
        for s in self.slots:
            class_w[s.klass] += self.gpu.read_power_w(s.index)
            class_cap_w[s.klass] += self.caps_w.get(s.index, self.cfg.gpu.safe_cap_w)
        p_w = sum(class_w.values())
        if p_w == p_w:  # NaN from a backend that cannot read: leave the signal to age (worst case)
            self.image.update(GPU_DEVICE, "p_kw", p_w / 1000.0, now)
        self.image.update(GPU_DEVICE, "cap_kw", sum(self.caps_w.values()) / 1000.0, now)
        record = getattr(self.core.forecaster, "record", None)
        if record is not None:
            pv = [self.image.value(d.name, "p_kw", now) for d in self.cfg.by_nature(Nature.PV)]
            names = self.core.class_names
            record(now, pv, [class_w[n] / 1000.0 for n in names], [class_cap_w[n] / 1000.0 for n in names])
        return p_w / 1000.0

    def _on_guard(self, d: GuardDecision) -> None:
        self.caps_w = dict(d.caps_w)
        st = self.status
        st.available_kw = d.available_kw
        st.guard_cycles += 1
        if d.cut:
            st.guard_cuts += 1
            self.telemetry.emit("event", {"kind": "guard_cut", "reason": d.reason}, self.clock())
            log.warning("guard: %s", d.reason)
            if self.mqtt is not None:
                self.mqtt.publish_alarm({"t_s": self.clock(), "kind": "guard_cut", "reason": d.reason})
        for a in (*d.shed, *d.restore):
            self.telemetry.emit("event", {"kind": a.action, "class": a.klass, "gpus": a.gpus, "reason": a.reason}, self.clock())

    # --- tasks --------------------------------------------------------------------------------

    async def _planner(self) -> None:
        period = self.cfg.control.mpc_period_s
        deadline = self.cfg.control.solve_deadline_s
        while True:
            t0 = time.monotonic()
            now = self._watch_clock()
            if not self._readings_after_step(now):
                await asyncio.sleep(0.1)
                continue
            try:
                # the solve runs in a worker thread; the loop never waits past the deadline
                # (asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that arrives as the
                # thread finishes, and the daemon would not stop)
                async with asyncio.timeout(deadline + 0.5):
                    plan = await asyncio.to_thread(self.core.plan, now, self.image, deadline)
                self.status.last_solve_ms = plan.solve_time_s * 1000.0
                self.status.plan_rung, self.status.plan_status = plan.rung, plan.status
                self._emit_plan(now, plan)
            except TimeoutError:
                log.warning("planner: no plan within %.1f s; keeping the previous one", deadline + 0.5)
            except Exception:
                # A planner crash must not take the guard down with it: the dispatcher falls back
                # to the safe cap once the last plan is too old.
                log.exception("planner failed; dispatch falls back to the safe cap when the plan ages out")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    def _watch_clock(self) -> float:
        """Now, by the daemon's clock, noticing when it was stepped (NTP, an operator): its advance
        since the last look is compared with the monotonic clock's."""
        wall, mono = self.clock(), time.monotonic()
        ref, self._clock_ref = self._clock_ref, (wall, mono)
        if ref is not None:
            step_s = (wall - ref[0]) - (mono - ref[1])
            if abs(step_s) >= CLOCK_STEP_S:
                self._on_clock_step(step_s, wall)
        return wall

    def _on_clock_step(self, step_s: float, now: float) -> None:
        # Times the daemon keeps move with the clock (plan age, genset up/down times, command
        # leases), and the next plan waits for readings taken after the step: readings from before
        # it look an hour old (or from the future), i.e. stale, and a plan on them would take PV as
        # zero and could start the genset for nothing.
        log.warning("clock stepped by %+.1f s: plan age, genset times and leases shifted; "
                    "replanning on fresh readings", step_s)
        self.core.on_clock_step(step_s)
        if self.commands is not None:
            self.commands.on_clock_step(step_s)
        self._fresh_after = (now, time.monotonic() + FRESH_WAIT_S)
        self.telemetry.emit("event", {"kind": "clock_step", "step_s": step_s}, now)

    def _readings_after_step(self, now: float) -> bool:
        """False while supply readings date from before the start or a clock step, or were never
        received (for up to FRESH_WAIT_S: a dead device must not keep the planner waiting)."""
        if self._fresh_after is None:
            return True
        since, give_up = self._fresh_after
        supply = {d.name for d in self.cfg.devices if d.nature in (Nature.PV, Nature.BATTERY, Nature.GENSET)}
        fresh = all(sig.ts >= since and sig.quality is not Quality.MISSING
                    for dev, _s, sig in self.image.items(now) if dev in supply)
        if fresh or time.monotonic() > give_up:
            self._fresh_after = None
            return True
        return False

    async def _dispatcher(self) -> None:
        period = self.cfg.control.dispatch_period_s
        while True:
            t0 = time.monotonic()
            now = self._watch_clock()
            self.meter_gpus()
            cmd = self.core.dispatch(now, self.image, self.overrides(now))
            await self._apply(cmd, now)
            self._heartbeat()
            self._update_status(now, cmd)
            self._emit_cycle(now, cmd)
            dt_ms = (time.monotonic() - t0) * 1000.0
            self.status.cycle_ms = [*self.status.cycle_ms[-299:], dt_ms]
            if self.on_cycle is not None:
                self.on_cycle(self.status)
            else:
                log.info(self.status_line())
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    async def _apply(self, cmd: Commands, now: float) -> None:
        # GPU caps go through the guard (clamped, slew-limited, fitted to the supply) at once
        self.requested_caps = dict(cmd.gpu_caps_w)
        self._wake_guard.set()
        self.status.mode = cmd.mode
        for name, p_kw in cmd.battery_kw.items():
            self._queue_write(name, "p_set_kw", p_kw, deadband=0.5)
        for name, run in cmd.genset_run.items():
            self._queue_write(name, "start_cmd", 1.0 if run else 0.0, deadband=0.0)

    def _queue_write(self, device: str, signal: str, value: float, deadband: float) -> None:
        """Hand a setpoint to the device's writer task. A device that stops answering must not hold
        up the dispatcher (nor the other devices) for its timeouts: each device's writes run in
        their own task, and a newer value replaces one not yet sent."""
        self._pending.setdefault(device, {})[signal] = (value, deadband)
        task = self._writers.get(device)
        if task is None or task.done():
            self._writers[device] = asyncio.create_task(self._drain_writes(device), name=f"write-{device}")

    async def _drain_writes(self, device: str) -> None:
        while pending := self._pending.pop(device, None):
            for signal, (value, deadband) in pending.items():
                try:
                    await self._write(device, signal, value, deadband)
                except Exception:
                    log.exception("write %s.%s=%g failed", device, signal, value)

    def overrides(self, now: float) -> Overrides:
        if self.commands is None:
            return Overrides()
        return Overrides(
            mode=self.commands.mode(now),
            gpu_budget_max_kw=self.commands.gpu_budget_ceiling_kw(now),
            battery_reserve_pct=self.commands.battery_reserve_pct(now),
        )

    async def _write(self, device: str, signal: str, value: float, deadband: float) -> None:
        dev = self.devices.get(device)
        if dev is None:
            return
        if not any(sp.signal == signal for sp in dev.profile.setpoints):
            # e.g. a battery profile with vendor-specific named setpoints only: the grid-forming
            # inverter still carries the balance; say so once instead of failing every cycle
            if (device, signal) not in self._unsupported:
                self._unsupported.add((device, signal))
                log.warning("%s: profile %s has no %s setpoint; not written", device, dev.profile.key, signal)
            return
        prev = self._last_written.get(f"{device}.{signal}")
        # re-send unchanged values only every 10 s (the driver keeps keep-alive setpoints alive)
        if prev is not None and abs(prev[0] - value) <= deadband and time.monotonic() - prev[1] < 10.0:
            return
        try:
            res = await dev.write_signal(signal, value)
            self._last_written[f"{device}.{signal}"] = (value, time.monotonic())
            self.status.written[f"{device}.{signal}"] = value
            if not res.ok:
                self.telemetry.emit("event", {"kind": "readback_mismatch", "message": res.message}, self.clock(), device)
        except (SetpointRangeError, DeviceError) as exc:
            self.status.write_errors += 1
            log.warning("write %s.%s=%g refused: %s", device, signal, value, exc)
            self.telemetry.emit("event", {"kind": "write_error", "message": str(exc)}, self.clock(), device)

    def _heartbeat(self) -> None:
        # utime, no data written: works on a full disk (see powerctl/watchdog.py)
        if not touch_heartbeat(self.cfg.control.heartbeat_path) and not self._heartbeat_failed:
            self._heartbeat_failed = True
            log.warning("heartbeat: cannot touch %s or its directory", self.cfg.control.heartbeat_path)

    # --- status and telemetry -----------------------------------------------------------------

    def _sum(self, nature: Nature, signal: str, now: float) -> float | None:
        vals = [self.image.value(d.name, signal, now) for d in self.cfg.by_nature(nature)]
        return None if not vals or any(v is None for v in vals) else float(sum(v for v in vals if v is not None))

    def _update_status(self, now: float, cmd: Commands) -> None:
        st = self.status
        st.t_s, st.cycles = now, st.cycles + 1
        st.pv_kw = self._sum(Nature.PV, "p_kw", now)
        st.battery_kw = self._sum(Nature.BATTERY, "p_kw", now)
        st.genset_kw = self._sum(Nature.GENSET, "p_kw", now)
        socs = [self.image.value(d.name, "soc_pct", now) for d in self.cfg.by_nature(Nature.BATTERY)]
        st.soc_pct = socs[0] if socs else None
        run = [self.image.value(d.name, "running", now) for d in self.cfg.by_nature(Nature.GENSET)]
        st.genset_running = None if not run or run[0] is None else bool(run[0])
        st.gpu_kw = self.image.value(GPU_DEVICE, "p_kw", now)
        st.gpu_budget_kw = dict(cmd.gpu_budget_kw)
        caps = list(self.caps_w.values())
        st.caps_w_min, st.caps_w_max = min(caps), max(caps)
        st.caps_w_mean = sum(caps) / len(caps)
        st.stale = [f"{d}.{s}" for d, s, sig in self.image.not_good(now) if sig.quality.value != "missing"]

    def status_line(self) -> str:
        st = self.status

        def f(v: float | None, unit: str) -> str:
            return "  n/a" if v is None else f"{v:6.1f}{unit}"

        solve = "n/a" if st.last_solve_ms is None else f"{st.last_solve_ms:.0f} ms {st.plan_rung}"
        return (
            f"[{st.mode}] pv {f(st.pv_kw, ' kW')} soc {f(st.soc_pct, ' %')} bat {f(st.battery_kw, ' kW')} "
            f"gen {f(st.genset_kw, ' kW')} gpu {f(st.gpu_kw, ' kW')} caps {st.caps_w_min:.0f}-{st.caps_w_max:.0f} W "
            f"avail {f(st.available_kw, ' kW')} solve {solve} stale {len(st.stale)}"
        )

    def _emit_cycle(self, now: float, cmd: Commands) -> None:
        t = self.telemetry
        per_device: dict[str, dict[str, Any]] = {}
        for d, s, sig in self.image.items(now):
            if sig.good:
                per_device.setdefault(d, {})[s] = sig.value
        for d, fields_d in per_device.items():
            nature = "gpu" if d == GPU_DEVICE else self.cfg.device(d).nature.value
            t.emit(nature, fields_d, now, device=d)
        st = self.status
        fields: dict[str, Any] = {
            "mode": st.mode,
            "stale_signals": len(st.stale),
            "caps_w_mean": st.caps_w_mean,
            "guard_cuts": st.guard_cuts,
        }
        if st.available_kw is not None:
            fields["available_kw"] = st.available_kw
        if st.last_solve_ms is not None:
            fields["solve_ms"] = st.last_solve_ms
        t.emit("site", fields, now)
        if self.mqtt is not None:
            self.mqtt.publish_state(
                {
                    "t_s": now, "mode": st.mode, "pv_kw": st.pv_kw, "soc_pct": st.soc_pct,
                    "battery_kw": st.battery_kw, "genset_kw": st.genset_kw, "genset_running": st.genset_running,
                    "gpu_kw": st.gpu_kw, "available_kw": st.available_kw, "stale": st.stale,
                    "last_solve_ms": st.last_solve_ms, "plan_rung": st.plan_rung,
                }
            )
            self.mqtt.publish_caps(
                {"t_s": now, "budget_kw": cmd.gpu_budget_kw, "caps_w": {str(i): c for i, c in self.caps_w.items()}}
            )
        for cls, kw in cmd.gpu_budget_kw.items():
            t.emit("gpu", {"budget_kw": kw}, now, device=GPU_DEVICE, tags={"class": cls})

    def _emit_plan(self, now: float, plan: Any) -> None:
        fields: dict[str, Any] = {"solve_ms": plan.solve_time_s * 1000.0, "rung": plan.rung, "status": plan.status}
        if plan.battery_kw.size:
            fields["battery_kw"] = float(plan.battery_kw[:, 0].sum())
        if plan.genset_kw.size:
            fields["genset_kw"] = float(plan.genset_kw[:, 0].sum())
        fields["gpu_kw"] = float(plan.gpu_kw[:, 0].sum())
        fields["pv_kw"] = float(plan.pv_kw[:, 0].sum()) if plan.pv_kw.size else 0.0
        fields["unserved_kw"] = float(plan.unserved_kw[0])
        self.telemetry.emit("plan", fields, now)
        if self.mqtt is not None:
            steps = np.asarray(plan.steps_s, dtype=float)
            self.mqtt.publish_plan(
                {
                    "t_s": now, "rung": plan.rung, "status": plan.status, "solver": plan.solver,
                    "solve_ms": plan.solve_time_s * 1000.0,
                    "step_start_s": (np.concatenate([[0.0], np.cumsum(steps)[:-1]])).tolist(),
                    "gpu_kw": plan.gpu_kw.sum(axis=0).tolist(),
                    "battery_kw": plan.battery_kw.sum(axis=0).tolist() if plan.battery_kw.size else [],
                    "genset_kw": plan.genset_kw.sum(axis=0).tolist() if plan.genset_kw.size else [],
                    "pv_kw": plan.pv_kw.sum(axis=0).tolist() if plan.pv_kw.size else [],
                    "soc_pct": plan.soc_pct.tolist(),
                    "slack": [str(x) for x in plan.slack],
                }
            )

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or the task is cancelled; safe caps on the way out."""
        stop = stop or asyncio.Event()
        # The first plan waits for the devices' real state (SoC, genset running or not): a plan on
        # nothing but worst cases would, after a restart, stop a running genset or start one.
        self._fresh_after = (self.clock(), time.monotonic() + FRESH_WAIT_S)
        # start from the safe cap (never from whatever maximum the GPUs booted with)
        apply_safe_caps_to(self.gpu, self.cfg.gpu.safe_cap_w)  # never raises a lower cap
        try:
            async with asyncio.TaskGroup() as tg:
                for dev in self.devices.values():
                    tg.create_task(dev.run(), name=f"poll-{dev.name}")
                tg.create_task(self.telemetry.run(), name="telemetry")
                if self.mqtt is not None:
                    tg.create_task(self.mqtt.run(), name="mqtt")
                planner = tg.create_task(self._planner(), name="planner")
                tg.create_task(
                    run_guard(
                        self.guard,
                        self.gpu,
                        self.image,
                        requested_caps=lambda: self.requested_caps,
                        planner=planner,
                        clock=self.clock,
                        wake=self._wake_guard,
                        hooks=self.hooks,
                        on_decision=self._on_guard,
                    ),
                    name="guard",
                )
                tg.create_task(self._dispatcher(), name="dispatcher")
                await stop.wait()
                # Safe caps first, before anything is cancelled: a task that is slow to cancel
                # (a solver thread, a device driver) must not delay the fail-safe.
                apply_caps(self.gpu, self.guard.safe_caps())
                raise _Stop
        except* _Stop:
            pass
        finally:
            for task in self._writers.values():
                task.cancel()
            # the guard task already did this on cancellation; repeat in case it never started
            apply_caps(self.gpu, self.guard.safe_caps())
            with contextlib.suppress(Exception):
                self.telemetry.emit("event", {"kind": "stopped", "caps_w": self.cfg.gpu.safe_cap_w}, self.clock())
                self.telemetry.close()
            log.info("stopped: GPUs at or below the safe cap %.0f W", self.cfg.gpu.safe_cap_w)


class _Stop(Exception):
    """Raised inside the task group to end it cleanly."""
