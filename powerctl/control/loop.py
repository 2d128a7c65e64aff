"""The control loop: the one sequencing of plan, dispatch and guard, for the daemon and the replay.

No I/O and no clock of its own: every tick takes the time as an argument (``wall_s``: the clock
plans and leases are in; ``mono_s``: a clock that never steps). It talks to the world through two
small ports:

- ``Readings`` (in): the process image (supply, SoC, genset state...) and per-GPU power;
- ``Actuators`` (out): battery/genset setpoints, GPU caps, and the GPUs whose work is shed.

The daemon (``powerctl.daemon``) runs ``plan``, ``dispatch_tick`` and ``guard_tick`` on their own
asyncio tasks at their periods against the drivers; the replay (``powerctl.sim.replay``) calls
``tick`` on simulated time against the in-process plant, which runs the same three in the same
way. So these mean the same thing in both, by construction:

- no plan (or a stale one): the dispatcher's safe-budget caps still go to the guard; a dead planner
  task (``planner_alive=False``) gives the guard no request at all (safe caps, no rise);
- released GPUs: only GPUs of a class the guard has shed (which needs a shed hook) are idled; the
  dispatcher's released GPUs are parked at their minimum cap, nothing stops their work;
- other load (for the guard): measured, supply minus GPU power with overhead, from the readings;
- operator overrides are an input of ``dispatch_tick``/``tick``;
- a clock step shifts the plan's times and holds the next plan until readings taken after it
  arrive (the freshness gate, also applied at start).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from powerctl.config import PvDevice, SiteConfig
from powerctl.control.core import Commands, DispatchMode, Forecaster, Overrides
from powerctl.control.curtail import RELEASED_PCT, ceiling_kw
from powerctl.control.export_hold import ExportHold, merged_pct
from powerctl.control.guard import Guard, GuardDecision
from powerctl.control.plausibility import supply_nameplate_kw
from powerctl.control.shed import ShedAction
from powerctl.control.split import GpuSlot
from powerctl.control.surplus_hold import SurplusHold
from powerctl.natures import Nature
from powerctl.optimizer import Plan
from powerctl.process_image import ProcessImage, Quality

log = logging.getLogger(__name__)

CLOCK_STEP_S = 1.0  # wall vs monotonic disagreement that counts as a step (NTP slewing is far below)
FRESH_WAIT_S = 5.0  # after a start or a step, how long the planner waits for readings taken after it
OTHER_LOAD_TAU_S = 10.0  # smoothing of the measured other load (supply polls lag GPU reads by ~1 s)
SUPPLY = (Nature.PV, Nature.BATTERY, Nature.GENSET)


class Readings(Protocol):
    """Readings in: the process image and the GPUs' measured power."""

    @property
    def image(self) -> ProcessImage: ...

    def gpu_power_w(self) -> Mapping[int, float] | None:
        """Per-GPU power (W), or None when any GPU cannot be read (the guard takes the worst case)."""
        ...


class Actuators(Protocol):
    """Commands out."""

    def setpoints(self, cmd: Commands) -> None:
        """Battery power setpoints and genset start/stop of one dispatch cycle."""
        ...

    def gpu_caps(self, caps_w: Mapping[int, float]) -> None:
        """The guard's caps for every GPU."""
        ...

    def release(self, released: tuple[int, ...], actions: Sequence[ShedAction]) -> None:
        """``released``: every GPU whose work is shed now; ``actions``: this tick's shed/restore."""
        ...


class Planner(Protocol):
    """What plans and dispatches: ``ControllerCore``, or a baseline of the replay."""

    @property
    def forecaster(self) -> Forecaster | None: ...

    def plan(self, now_s: float, image: ProcessImage, deadline_s: float | None = None) -> Plan | None: ...

    def dispatch(self, now_s: float, image: ProcessImage, overrides: Overrides | None = None) -> Commands: ...

    def on_clock_step(self, step_s: float) -> None: ...


@dataclass
class LoopStats:
    """Counters for KPIs and the status line."""

    plans: int = 0
    plan_rungs: dict[str, int] = field(default_factory=dict)
    solve_s: list[float] = field(default_factory=list)
    dispatches: int = 0
    guard_ticks: int = 0
    guard_cuts: int = 0
    guard_safe: int = 0


@dataclass
class TickResult:
    """What one ``tick`` did (fields None when that stage was not due)."""

    plan: Plan | None = None
    commands: Commands | None = None
    decision: GuardDecision | None = None


def measured_other_kw(cfg: SiteConfig, image: ProcessImage, now_s: float, gpu_kw: float) -> float | None:
    """Site load besides the GPUs and their overhead, from the readings: supply (PV + battery
    discharge + gensets + grid import) minus GPU power x (1 + overhead). None while any of those
    readings is not GOOD (the estimate then holds its last value)."""
    total = 0.0
    for d in cfg.devices:
        if d.nature not in (*SUPPLY, Nature.METER):
            continue
        try:
            s = image.get(d.name, "p_kw", now_s)
        except KeyError:
            continue  # not measured by this device's profile
        if not s.good or s.value is None:
            return None
        total += float(s.value)
    return max(0.0, total - gpu_kw * (1.0 + cfg.gpu.facility_overhead))


# Inverter states that say "delivering less than the array could" (curtailed or at a limit), by
# profile: SunSpec model 103 St 5 THROTTLED (device_profiles/sunspec/inverter_103.yaml). The forecaster
# must not learn the sky from such readings (powerctl.forecast.pv_forecast, meas_limited).
PV_LIMITED_STATES: dict[str, frozenset[float]] = {"sunspec/inverter_103": frozenset({5.0})}


def pv_limited(image: ProcessImage, device: str, profile: str, now_s: float) -> bool:
    """Whether a PV inverter reports that it delivers less than it could (False when unknown)."""
    states = PV_LIMITED_STATES.get(profile)
    if not states:
        return False
    try:
        st = image.value(device, "state", now_s)
    except KeyError:
        return False
    return st is not None and float(st) in states


class ControlLoop:
    def __init__(
        self,
        cfg: SiteConfig,
        slots: Sequence[GpuSlot],
        planner: Planner,
        readings: Readings,
        actuators: Actuators,
        *,
        guard: Guard | None = None,
        on_clock_step: Callable[[float, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.slots = list(slots)
        self.planner = planner
        self.readings = readings
        self.actuators = actuators
        hooked = [h.workload for h in cfg.gpu.shed_hooks]
        self.guard = guard if guard is not None else Guard(cfg, self.slots, hooked_classes=hooked)
        self.on_clock_step = on_clock_step
        self.class_names = [c.name for c in cfg.gpu.classes]
        self.requested_caps_w: dict[int, float] | None = None  # the dispatcher's latest
        self.caps_w: dict[int, float] = {s.index: cfg.gpu.safe_cap_w for s in self.slots}  # the guard's
        self.released: tuple[int, ...] = ()
        self.other_kw = 0.0
        self.last_commands: Commands | None = None
        self.stats = LoopStats()
        self._other_t_s: float | None = None
        self._clock_ref: tuple[float, float] | None = None  # (wall, mono) at the last look
        self._fresh_after: tuple[float, float] | None = None  # (readings since wall, give up at mono)
        self._last_said: tuple[str, str] = ("", "")  # what say_why logged last (rung, slack)
        self._next_plan_s = -math.inf
        self._next_dispatch_s = -math.inf
        self._supply_devices = {d.name for d in cfg.devices if d.nature in SUPPLY}
        # the export cap held between plans (powerctl.control.export_hold): its PV limits, and the
        # plan's own, which come back when the hold lets go
        self.export_hold = ExportHold(cfg)
        self.surplus_hold = SurplusHold(cfg)  # an island's PV surplus, same hooks (powerctl.control.surplus_hold)
        self._hold_pct: dict[str, float] = {}
        self._plan_pv_pct: dict[str, float] = {}
        self._pvs = [d for d in cfg.devices if isinstance(d, PvDevice)]

    # --- clock and freshness --------------------------------------------------------------------

    def start(self, wall_s: float, mono_s: float, held_caps_w: Mapping[int, float] | None = None) -> None:
        """The first plan waits for the devices' real state (SoC, genset running or not): a plan on
        nothing but worst cases would, after a restart, stop a running genset or start one.
        ``held_caps_w``: what the GPUs hold now, so that the first rise is slew-limited too."""
        self._clock_ref = (wall_s, mono_s)
        self._fresh_after = (wall_s, mono_s + FRESH_WAIT_S)
        if held_caps_w is not None:
            self.guard.last_caps_w, self.guard.last_t_s = self.guard.clamp(held_caps_w), wall_s
            self.caps_w = dict(self.guard.last_caps_w)

    def watch_clock(self, wall_s: float, mono_s: float) -> float:
        """``wall_s``, noticing a step (NTP, an operator): its advance since the last look is
        compared with the monotonic clock's."""
        ref, self._clock_ref = self._clock_ref, (wall_s, mono_s)
        if ref is not None:
            step_s = (wall_s - ref[0]) - (mono_s - ref[1])
            if abs(step_s) >= CLOCK_STEP_S:
                self._clock_stepped(step_s, wall_s, mono_s)
        return wall_s

    def _clock_stepped(self, step_s: float, wall_s: float, mono_s: float) -> None:
        # Times the loop keeps move with the clock (plan age, genset up/down times), and the next
        # plan waits for readings taken after the step: readings from before it look an hour old
        # (or from the future), i.e. stale, and a plan on them would take PV as zero and could
        # start the genset for nothing.
        log.warning("clock stepped by %+.1f s: plan age and genset times shifted; replanning on fresh readings",
                    step_s)
        self.planner.on_clock_step(step_s)
        self._fresh_after = (wall_s, mono_s + FRESH_WAIT_S)
        if self.on_clock_step is not None:
            self.on_clock_step(step_s, wall_s)

    def plan_ready(self, wall_s: float, mono_s: float) -> bool:
        """False while supply readings date from before the start or a clock step, or were never
        received (for up to FRESH_WAIT_S: a dead device must not keep the planner waiting)."""
        if self._fresh_after is None:
            return True
        since, give_up = self._fresh_after
        image = self.readings.image
        fresh = all(sig.ts >= since and sig.quality is not Quality.MISSING
                    for dev, _s, sig in image.items(wall_s) if dev in self._supply_devices)
        if fresh or mono_s > give_up:
            self._fresh_after = None
            return True
        return False

    # --- the three stages -----------------------------------------------------------------------

    def plan(self, wall_s: float, deadline_s: float | None = None) -> Plan | None:
        """The heavy solve (the daemon runs it in a worker thread). Call after ``plan_ready``."""
        plan = self.planner.plan(wall_s, self.readings.image, deadline_s)
        if plan is not None:
            st = self.stats
            st.plans += 1
            st.plan_rungs[plan.rung] = st.plan_rungs.get(plan.rung, 0) + 1
            st.solve_s.append(plan.solve_time_s)
            self._last_said = say_why(plan, self._last_said)
        return plan

    def dispatch_tick(self, wall_s: float, overrides: Overrides | None = None) -> Commands:
        """Record the measurements for the forecaster, dispatch, send the setpoints, and hand the
        caps to the guard (the only stage that sends caps to GPUs)."""
        image = self.readings.image
        self._record(wall_s, image, self.readings.gpu_power_w())
        cmd = self.planner.dispatch(wall_s, image, overrides)
        self._plan_pv_pct = dict(cmd.pv_limit_pct)
        if self._hold_pct:
            cmd.pv_limit_pct = merged_pct(cmd.pv_limit_pct, self._hold_pct)
        # no plan: the safe-budget caps still go to the guard (it may raise caps up to them)
        self.requested_caps_w = dict(cmd.gpu_caps_w)
        self.actuators.setpoints(cmd)
        self._pv_commanded()
        # a base load stays on the device until the next one: the guard counts the last sent
        self.guard.genset_base_kw.update(cmd.genset_kw)
        self.last_commands = cmd
        self.stats.dispatches += 1
        return cmd

    def guard_tick(self, wall_s: float, *, planner_alive: bool = True) -> GuardDecision:
        """Caps that fit the supply now, sent; shed classes idled. ``planner_alive`` False (the
        daemon's planner task ended) means no request: safe caps."""
        image = self.readings.image
        per_gpu = self.readings.gpu_power_w()
        gpu_w = None if per_gpu is None else float(sum(per_gpu.get(s.index, math.nan) for s in self.slots))
        if gpu_w is not None and gpu_w != gpu_w:
            gpu_w = None
        self._update_other(wall_s, image, gpu_w)
        d = self.guard.evaluate(
            image, wall_s,
            requested_caps_w=self.requested_caps_w if planner_alive else None,
            gpu_power_w=gpu_w,
            other_load_kw=self.other_kw,
            held_w=self._held_w(),
            enforced_w=self._enforced_w(),
        )
        self.caps_w = dict(d.caps_w)
        self.actuators.gpu_caps(d.caps_w)
        self._hold_export(image, wall_s, d.load_kw)
        shed = set(self.guard.shedder.shed)
        self.released = tuple(s.index for s in self.slots if s.klass in shed)
        self.actuators.release(self.released, (*d.shed, *d.restore))
        st = self.stats
        st.guard_ticks += 1
        st.guard_cuts += int(d.cut)
        st.guard_safe += int(d.safe)
        return d

    def tick(self, wall_s: float, mono_s: float, overrides: Overrides | None = None,
             deadline_s: float | None = None) -> TickResult:
        """One guard period, in-line: plan and dispatch when their periods are due, then the guard.
        The replay's whole cycle; the daemon runs the same stages on its own tasks."""
        c = self.cfg.control
        wall_s = self.watch_clock(wall_s, mono_s)
        out = TickResult()
        eps = 1e-6 * c.guard_period_s
        if mono_s + eps >= self._next_plan_s and self.plan_ready(wall_s, mono_s):
            out.plan = self.plan(wall_s, deadline_s)
            self._next_plan_s = mono_s + c.mpc_period_s
        if mono_s + eps >= self._next_dispatch_s:
            out.commands = self.dispatch_tick(wall_s, overrides)
            self._next_dispatch_s = mono_s + c.dispatch_period_s
        out.decision = self.guard_tick(wall_s)
        return out

    # --- helpers --------------------------------------------------------------------------------

    def _hold_export(self, image: ProcessImage, wall_s: float, load_kw: float) -> None:
        """PV limits that hold the export cap now, written when they change (the lower of the
        hold's and the plan's; the plan's own again when the hold lets go)."""
        hold = merged_pct(self.export_hold.update(image, wall_s, load_kw),
                          self.surplus_hold.update(image, wall_s, load_kw))
        reason = self.export_hold.reason or self.surplus_hold.reason
        if hold == self._hold_pct:
            return
        if hold and not self._hold_pct:
            log.warning("export hold: %s", reason)
        elif not hold:
            log.info("export hold released")
        pct = merged_pct(self._plan_pv_pct, hold) if hold else {
            name: self._plan_pv_pct.get(name, RELEASED_PCT) for name in self._hold_pct}
        self._hold_pct = hold
        self.actuators.setpoints(Commands(t_s=wall_s, pv_limit_pct=pct, mode=self.mode, reason=reason))
        self._pv_commanded()

    def _pv_commanded(self) -> None:
        """Tell the guard the PV limit now in force (the plan's and the hold's, the lower): PV
        falling to it is curtailment, not a cloud edge (powerctl.control.guard)."""
        self.guard.pv_ceiling_kw = ceiling_kw(self._pvs, merged_pct(self._plan_pv_pct, self._hold_pct))

    @property
    def mode(self) -> DispatchMode:
        return DispatchMode.STARTING if self.last_commands is None else self.last_commands.mode

    def _enforced_w(self) -> Mapping[int, float] | None:
        """The limits the GPUs obey now, read back: optional on a ``Readings``
        (``powerctl.gpu_io.GpuReadings.enforced_caps_w``); None: the guard keeps its own caps."""
        read = getattr(self.readings, "enforced_caps_w", None)
        return read() if callable(read) else None

    def _held_w(self) -> Mapping[int, float] | None:
        """GPUs no cap reaches now (a node agent that does not answer, powerctl.gpu.agents), at the
        highest cap they may hold: optional on a ``Readings`` (``GpuReadings.held_caps_w``)."""
        held = getattr(self.readings, "held_caps_w", None)
        return held() if callable(held) else None

    def _update_other(self, wall_s: float, image: ProcessImage, gpu_w: float | None) -> None:
        est = None if gpu_w is None else measured_other_kw(self.cfg, image, wall_s, gpu_w / 1000.0)
        if est is None or self.guard.plausibility.active or est > supply_nameplate_kw(self.cfg):
            return  # not from readings physics rules out (a lie, garbage registers): hold the estimate
        if self._other_t_s is None:
            self.other_kw = est
        else:
            dt_s = max(0.0, wall_s - self._other_t_s)
            self.other_kw += (est - self.other_kw) * (1.0 - math.exp(-dt_s / OTHER_LOAD_TAU_S))
        self._other_t_s = wall_s
        site_load = getattr(self.planner, "site_load", None)  # ControllerCore's; baselines have none
        if site_load is not None:
            site_load.record(wall_s, self.other_kw)  # the plan's site-load forecast

    def _record(self, wall_s: float, image: ProcessImage, per_gpu: Mapping[int, float] | None) -> None:
        """Feed a forecaster that keeps history (``LiveForecaster.record``)."""
        record = getattr(self.planner.forecaster, "record", None)
        if record is None:
            return
        class_w = dict.fromkeys(self.class_names, 0.0)
        class_cap_w = dict.fromkeys(self.class_names, 0.0)
        for s in self.slots:
            p = math.nan if per_gpu is None else per_gpu.get(s.index, math.nan)
            class_w[s.klass] += p if p == p else self.caps_w.get(s.index, self.cfg.gpu.safe_cap_w)
            class_cap_w[s.klass] += self.caps_w.get(s.index, self.cfg.gpu.safe_cap_w)
        pvs = self.cfg.by_nature(Nature.PV)
        pv = [image.value(d.name, "p_kw", wall_s) for d in pvs]
        names = self.class_names
        record(wall_s, pv, [class_w[n] / 1000.0 for n in names], [class_cap_w[n] / 1000.0 for n in names],
               [pv_limited(image, d.name, d.profile, wall_s) for d in pvs])


def say_why(plan: Plan, last: tuple[str, str]) -> tuple[str, str]:
    """One log line per plan that came from a lower rung (or whose commitment did) with the reason,
    and `explain()` at INFO when the plan uses slack. A line that repeats the last one goes to DEBUG
    (the reason has not changed; a plan every few seconds must not flood the journal). Returns what
    was said, for the next call."""
    lower = plan.rung != "primary" or any(n.startswith("milp") for n in plan.notes)
    why = "; ".join(plan.notes) if plan.notes else plan.status
    rung_line = f"plan from rung {plan.rung} (commitment {plan.commitment or '-'}): {why}" if lower else ""
    slack_line = plan.explain().replace("\n", "; ") if plan.slack else ""
    for line, prev, level in ((rung_line, last[0], logging.WARNING), (slack_line, last[1], logging.INFO)):
        if line:
            # the numbers in a slack line move every plan: compare what is short, not by how much
            same = line == prev if level == logging.WARNING else _slack_names(plan) == prev
            log.log(logging.DEBUG if same else level, "%s", line)
    return (rung_line, _slack_names(plan) if plan.slack else "")


def _slack_names(plan: Plan) -> str:
    return ",".join(sorted({s.constraint for s in plan.slack}))
