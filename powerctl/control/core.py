"""The controller core: planner, dispatcher and fallbacks, with no I/O and the clock as an argument.

The daemon wires it to real devices and the simulator to a simulated plant; both call the same
methods in the same order:

- ``plan(now_s, image)`` every ``mpc_period_s`` (the heavy solve; the daemon runs it in a thread);
- ``dispatch(now_s, image)`` every ``dispatch_period_s``: the plan's first step turned into
  device setpoints and per-GPU caps (budget split, slew limit, clamped to what the supply can
  carry now);
- the guard (``powerctl.control.guard``) every ``guard_period_s``, independently of both.

When there is no plan, or the plan is older than three planner periods (planner dead or late), the
dispatcher falls back to the safe cap: GPUs never jump to maximum because the optimizer is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from powerctl.config import PvDevice, SiteConfig
from powerctl.control.battery import clamp_battery_kw
from powerctl.control.curtail import RELEASED_PCT, pv_limits_pct
from powerctl.control.genset_output import balance_bounds_kw, base_load_gensets, fit_to_balance, setpoint_kw
from powerctl.control.planner import (
    build_inputs,
    genset_running,
    load_uncarried_kw,
    pv_stale_rows,
    pv_worst_case,
    site_params,
)
from powerctl.control.split import GpuSlot, SplitResult, split_budget
from powerctl.genset_times import GensetTimes, since_from_counter
from powerctl.grid_billing import GridBilling
from powerctl.natures import Nature
from powerctl.optimizer import DispatchProblem, Plan
from powerctl.process_image import ProcessImage
from powerctl.site_load import SiteLoadForecaster

log = logging.getLogger(__name__)

# A genset we told to start reads "not running" through pre-start, crank and warm-up. Until it runs,
# or until this long after its warm-up should have ended (the start failed: it counts as off again),
# it counts as committed from our start command: the planner sees it starting (not off, free to be
# "not started" again next cycle) and min up time counts from the command. Without this the next
# plan could stop it mid-warm-up, and a 30 s scenario saw 4 starts (tests/sim/test_tie.py).
START_GRACE_S = 120.0

# forecaster(now_s, image, steps_s) -> (pv_kw (n_pv, T), gpu_demand_kw (n_class, T), other_load_kw (T,)
#                                      [, reserve_extra_kw (T,)])
Forecaster = Callable[[float, ProcessImage, np.ndarray], tuple[np.ndarray, ...]]


class OperatorMode(StrEnum):
    """What the operator asked for (an MQTT lease): the plan, hold the last commands, or manual."""

    AUTO = "auto"
    HOLD = "hold"
    MANUAL = "manual"


class DispatchMode(StrEnum):
    """Where one dispatch cycle's commands came from."""

    STARTING = "starting"  # no cycle yet
    PLAN = "plan"
    SAFE = "safe"  # no plan, or too old: safe-cap budget
    HOLD = "hold"
    MANUAL = "manual"
    STATIC = "static"  # the fixed-cap baseline of the replay


@dataclass(frozen=True)
class Overrides:
    """Operator commands in force (leases from MQTT); None fields mean "no command"."""

    mode: OperatorMode = OperatorMode.AUTO
    gpu_budget_max_kw: float | None = None
    battery_reserve_pct: float | None = None

    def __post_init__(self) -> None:
        # a mode as received ("hold"): the enum, or a ValueError naming the bad value
        object.__setattr__(self, "mode", OperatorMode(self.mode))


@dataclass
class Commands:
    """What one dispatch cycle asks of the devices (all already inside device limits)."""

    t_s: float
    battery_kw: dict[str, float] = field(default_factory=dict)  # + = discharge
    genset_run: dict[str, bool] = field(default_factory=dict)
    genset_kw: dict[str, float] = field(default_factory=dict)  # base-load setpoints (genset_output.py)
    gpu_budget_kw: dict[str, float] = field(default_factory=dict)  # per class, GPU power
    gpu_caps_w: dict[int, float] = field(default_factory=dict)
    released: tuple[int, ...] = ()  # parked at their minimum cap (idled only if their class is shed)
    pv_limit_pct: dict[str, float] = field(default_factory=dict)  # active power limit, 100 = released
    mode: DispatchMode = DispatchMode.PLAN
    reason: str = ""


class ControllerCore:
    def __init__(
        self,
        cfg: SiteConfig,
        gpu_slots: list[GpuSlot],
        forecaster: Forecaster,
        *,
        problem: DispatchProblem | None = None,
    ) -> None:
        self.cfg = cfg
        self.slots = gpu_slots
        self.forecaster = forecaster
        self.params = site_params(cfg, gpu_slots)
        # Grid prices and the billing period's peak (in memory; the daemon may give it a state file).
        self.billing = GridBilling(cfg)
        self.problem = problem if problem is not None else DispatchProblem(self.params)
        self.steps_s = np.asarray(self.params.steps_s, dtype=float)
        self.plan_result: Plan | None = None
        self.plan_t_s: float | None = None
        self.class_names = [c.name for c in cfg.gpu.classes]
        self.prev_gpu_kw = np.array(
            [c.gpus * cfg.gpu.safe_cap_w / 1000.0 for c in cfg.gpu.classes], dtype=float
        )
        self.gensets = [d.name for d in cfg.by_nature(Nature.GENSET)]
        self.base_load_gensets = base_load_gensets(cfg)  # name -> device: their controllers take the plan's kW
        self.pvs = [d for d in cfg.devices if isinstance(d, PvDevice)]
        self.pv_forecast_kw: np.ndarray | None = None  # (n_pv, T) the last plan was made with
        self.pvs_by_nature = [d.name for d in cfg.by_nature(Nature.PV)]
        self._pv_good_s: dict[str, float] = {}  # when each PV's reading was last GOOD (stale age)
        self.batteries = [d.name for d in cfg.by_nature(Nature.BATTERY)]
        # when each genset last changed state as we saw it (for min up/down times)
        self._gen_state: dict[str, tuple[bool, float]] = {}
        # where those survive a restart (the daemon gives it a file), and what was read back
        self.gen_times = GensetTimes(None)
        self._gen_restored: dict[str, tuple[bool, float, float | None]] | None = None
        self._gen_run0_s: dict[str, float | None] = {}  # the run-time counter at each state change
        # gensets whose minimum down time yields now (safety over wear, see _wear_yields)
        self.min_down_yields: set[str] = set()
        # the measured load besides the GPUs (fed by the control loop), forecast for the plan
        self.site_load = SiteLoadForecaster()
        self._gen_start_s: dict[str, float] = {}  # our start command's time, until the genset runs
        self._gen_run_cmd: dict[str, bool] = {}  # the last run command we gave each genset
        self.caps_w: dict[int, float] = {s.index: cfg.gpu.safe_cap_w for s in gpu_slots}
        self.last_commands: Commands | None = None
        self.hooked = {h.workload for h in cfg.gpu.shed_hooks}

    # --- planning -----------------------------------------------------------------------------

    def genset_state_s(self, now_s: float, running: np.ndarray,
                       run_s: list[float | None] | None = None) -> np.ndarray:
        """Seconds each genset has been in its present state; `run_s` its run-time counter where the
        profile has one (None: unknown), which times what happened while no controller watched."""
        if self._gen_restored is None:
            self._gen_restored = self.gen_times.load(now_s, self.gensets)
        runs = run_s if run_s is not None else [None] * len(self.gensets)
        out = []
        for name, on, run in zip(self.gensets, running.tolist(), runs, strict=True):
            prev = self._gen_state.get(name)
            stored = self._gen_restored.pop(name, None)
            since_s = since_from_counter(on, now_s, stored, run) if prev is None else None
            if since_s is not None:
                # what a predecessor saw, carried on by the counter (powerctl.genset_times)
                self._gen_state[name] = prev = (on, since_s)
                self._gen_run0_s[name] = None if run is None else run - max(0.0, now_s - since_s) * on
            if prev is None or prev[0] != on:
                # first sight, or a change: a restart must not pretend a long run/rest time,
                # so we start counting now (min up/down times are respected from here)
                self._gen_state[name] = (on, now_s)
                self._gen_run0_s[name] = run
                prev = self._gen_state[name]
            out.append(max(0.0, now_s - prev[1]))
        self.gen_times.save(self._gen_state, self._gen_run0_s)
        return np.array(out, dtype=float)

    def genset_committed(self, now_s: float, running: np.ndarray) -> np.ndarray:
        """Per genset: running as measured, or starting on our command (see `START_GRACE_S`)."""
        out = []
        for name, on in zip(self.gensets, running.tolist(), strict=True):
            t_cmd = self._gen_start_s.get(name)
            if on or t_cmd is None or now_s - t_cmd > self.cfg.device(name).limits.warmup_s + START_GRACE_S:
                self._gen_start_s.pop(name, None)  # running, never started, or the start failed
                out.append(bool(on))
            else:
                out.append(True)
        return np.array(out, dtype=bool)

    def _wear_yields(self, now_s: float, image: ProcessImage, running: np.ndarray, other_kw: float) -> np.ndarray:
        """Seconds in state per genset, for the optimizer. Safety over wear: while the batteries are
        at their floor and the least load cannot be carried otherwise, a stopped genset's minimum
        down time yields (it counts as met, so the plan may start it now, and the dispatch lets it
        start). After a restart the down time counts from first sight, which would otherwise keep a
        stopped genset off for `min_down_s` with the load unserved."""
        state_s = self.genset_state_s(now_s, running, [_run_time_s(image, n, now_s) for n in self.gensets])
        short_kw = load_uncarried_kw(self.cfg, self.params, image, now_s, other_kw)
        yields: set[str] = set()
        for i, (name, on) in enumerate(zip(self.gensets, running.tolist(), strict=True)):
            lim = self.cfg.device(name).limits
            if short_kw > 0 and not on and state_s[i] < lim.min_down_s:
                yields.add(name)
                state_s[i] = lim.min_down_s
        if yields and yields != self.min_down_yields:
            log.warning("minimum down time yields for %s: batteries at their floor, %.1f kW of the least load"
                        " cannot be carried otherwise (safety over wear)", ", ".join(sorted(yields)), short_kw)
        self.min_down_yields = yields
        return state_s

    def plan(self, now_s: float, image: ProcessImage, deadline_s: float | None = None) -> Plan:
        """Solve the dispatch problem from the current image and forecasts."""
        fc = self.forecaster(now_s, image, self.steps_s)
        pv_kw, gpu_kw, other_kw = fc[0], fc[1], fc[2]
        # a forecaster without a site-load model says 0: the measured site load's forecast is better
        other_kw = np.maximum(np.asarray(other_kw, dtype=float), self.site_load.forecast(now_s, self.steps_s))
        reserve_extra_kw = fc[3] if len(fc) > 3 else None  # stale forecasts widen the reserve
        stale = pv_stale_rows(self.cfg, image, now_s)
        for d, bad in zip(self.pvs_by_nature, stale.tolist(), strict=True):
            if not bad or d not in self._pv_good_s:
                self._pv_good_s[d] = now_s  # first sight stale: its stale age counts from now
        age_s = np.array([now_s - self._pv_good_s[d] for d in self.pvs_by_nature], dtype=float)
        pv_kw, reserve_extra_kw = pv_worst_case(np.asarray(pv_kw, dtype=float).reshape(len(stale), -1),
                                                stale, age_s, self.steps_s, reserve_extra_kw)
        self.pv_forecast_kw = pv_kw
        running = self.genset_committed(now_s, genset_running(self.cfg, image, now_s))
        state_s = self._wear_yields(now_s, image, running, float(np.asarray(other_kw, dtype=float).reshape(-1)[0]))
        inputs = build_inputs(
            self.cfg,
            image,
            now_s,
            pv_kw,
            gpu_kw,
            self.prev_gpu_kw,
            state_s,
            other_kw,
            reserve_extra_kw,
            prices=self.billing.horizon(now_s, self.steps_s),
            peak_import_kw=self.billing.observe(now_s, image),
            genset_on=running,
        )
        plan = self.problem.solve(inputs, deadline_s=deadline_s or self.cfg.control.solve_deadline_s)
        self.plan_result, self.plan_t_s = plan, now_s
        return plan

    def on_clock_step(self, step_s: float) -> None:
        """The wall clock was stepped by ``step_s``: the plan's time and the observed genset state
        times move with it (a step is not time passing: no min up/down time is met by it)."""
        if self.plan_t_s is not None:
            self.plan_t_s += step_s
        self._gen_state = {n: (on, t_s + step_s) for n, (on, t_s) in self._gen_state.items()}
        self._pv_good_s = {n: t_s + step_s for n, t_s in self._pv_good_s.items()}
        self._gen_start_s = {n: t_s + step_s for n, t_s in self._gen_start_s.items()}

    def plan_is_fresh(self, now_s: float) -> bool:
        if self.plan_result is None or self.plan_t_s is None:
            return False
        age_s = now_s - self.plan_t_s
        return -1.0 <= age_s <= 3 * self.cfg.control.mpc_period_s and self.plan_result.rung != "safe"

    # --- dispatch -----------------------------------------------------------------------------

    def dispatch(self, now_s: float, image: ProcessImage, overrides: Overrides | None = None) -> Commands:
        """The commands for now. Operator overrides apply on top of the plan:

        - ``hold`` repeats the last commands (the guard still cuts caps if supply falls), each
          battery setpoint clamped again to its limits, the SoC window and the reserve;
        - ``manual`` ignores the plan's GPU budget: the ceiling (or, without one, the caps in
          force) is the budget; batteries get no setpoint change and gensets keep their state;
        - a GPU budget ceiling scales the budget down, least important class first;
        - a battery reserve stops planned discharge of a battery at or below it, and takes the
          discharge the plan counted on out of the GPU budget.
        """
        ov = overrides or Overrides()
        if ov.mode is OperatorMode.HOLD and self.last_commands is not None:
            held = self.last_commands
            # held setpoints still obey the device, the SoC window and the reserve (issue 12)
            battery_kw = {n: self._clamp_battery(n, p, image.value(n, "soc_pct", now_s), ov.battery_reserve_pct)
                          for n, p in held.battery_kw.items()}
            return Commands(
                t_s=now_s, battery_kw=battery_kw, genset_run=dict(held.genset_run),
                genset_kw=dict(held.genset_kw), pv_limit_pct=dict(held.pv_limit_pct),
                gpu_budget_kw=dict(held.gpu_budget_kw), gpu_caps_w=dict(held.gpu_caps_w),
                released=held.released, mode=DispatchMode.HOLD, reason="operator hold",
            )
        cmd = self._dispatch_plan(now_s, image, ov)
        self.last_commands = cmd
        return cmd

    def _dispatch_plan(self, now_s: float, image: ProcessImage, ov: Overrides) -> Commands:
        cmd = Commands(t_s=now_s)
        plan = self.plan_result
        if plan is None or not self.plan_is_fresh(now_s):
            cmd.mode = DispatchMode.SAFE
            cmd.reason = "no plan" if plan is None else "plan too old or safe rung"
            budget = {
                c.name: c.gpus * self.cfg.gpu.safe_cap_w / 1000.0 for c in self.cfg.gpu.classes
            }
            for name in self.batteries:
                cmd.battery_kw[name] = 0.0  # the grid-forming inverter carries the balance
            cmd.pv_limit_pct = {pv.name: RELEASED_PCT for pv in self.pvs}  # no plan: no reason to hold PV back
        else:
            idx = self._step_index(now_s)
            budget = {n: float(plan.gpu_kw[i, idx]) for i, n in enumerate(self.class_names)}
            for i, name in enumerate(self.batteries):
                cmd.battery_kw[name] = self._clamp_battery(name, float(plan.battery_kw[i, idx]),
                                                           image.value(name, "soc_pct", now_s))
            for i, name in enumerate(self.gensets):
                if image.value(name, "running", now_s) is None:
                    continue  # state unknown (not read yet, or stale): no start or stop on a guess
                cmd.genset_run[name] = run = self._genset_decision(name, bool(plan.genset_on[i, idx]), now_s, image)
                if run and not self._gen_run_cmd.get(name, False):
                    self._gen_start_s[name] = now_s  # a start we give (see START_GRACE_S)
                elif not run:
                    self._gen_start_s.pop(name, None)
                self._gen_run_cmd[name] = run
                if run and name in self.base_load_gensets and (image.value(name, "running", now_s) or 0.0) >= 0.5:
                    # the minimum load the plan counts on is what the genset is asked to carry
                    cmd.genset_kw[name] = setpoint_kw(float(plan.genset_kw[i, idx]), self.base_load_gensets[name])
            if cmd.genset_kw:  # into what the battery (or grid) can balance now (genset_output.py)
                planned_kw = float(sum(cmd.battery_kw.values()) + plan.genset_kw[:, idx].sum()
                                   + (plan.grid_import_kw[idx] if plan.grid_import_kw.size > idx else 0.0))
                cmd.genset_kw = fit_to_balance(cmd.genset_kw, self.base_load_gensets,
                                               balance_bounds_kw(self.cfg, image, now_s, planned_kw))
            fc_pv = self.pv_forecast_kw
            cmd.pv_limit_pct = pv_limits_pct(
                self.pvs,
                plan.pv_kw[:, idx].tolist() if plan.pv_kw.size else [0.0] * len(self.pvs),
                fc_pv[:, idx].tolist() if fc_pv is not None and fc_pv.shape[0] == len(self.pvs) and fc_pv.shape[1] > idx else None,
                self.cfg.control.supply_margin_kw,
                float(plan.spill_kw[idx]) if plan.spill_kw.size > idx else 0.0,
            )
        if ov.mode is OperatorMode.MANUAL:
            cmd.mode, cmd.reason = DispatchMode.MANUAL, "operator manual mode"
            cmd.battery_kw = {}
            cmd.genset_run = {}
            cmd.genset_kw = {}
            cmd.pv_limit_pct = {}
            if ov.gpu_budget_max_kw is None:
                budget = {c: sum(self.caps_w_of(c)) / 1000.0 for c in self.class_names}
            else:
                # most important class first, each up to all its GPUs at max
                budget, left = {}, ov.gpu_budget_max_kw
                for name in reversed(self._priority_order()):
                    n = sum(1 for sl in self.slots if sl.klass == name)
                    budget[name] = min(left, n * self.cfg.gpu.max_w / 1000.0)
                    left -= budget[name]
        if ov.battery_reserve_pct is not None:
            for name in list(cmd.battery_kw):
                soc = image.value(name, "soc_pct", now_s)
                if (soc is None or soc <= ov.battery_reserve_pct) and cmd.battery_kw[name] > 0:
                    budget = _scale_down(
                        budget,
                        self._priority_order(),
                        sum(budget.values()) - cmd.battery_kw[name] / (1 + self.cfg.gpu.facility_overhead),
                        self._idle_floor_kw(),
                    )
                    cmd.battery_kw[name] = 0.0
                    cmd.reason = (cmd.reason + "; " if cmd.reason else "") + f"{name} at reserve"
        if ov.gpu_budget_max_kw is not None:
            budget = _scale_down(budget, self._priority_order(), ov.gpu_budget_max_kw, self._idle_floor_kw())
        split = self._split(budget)
        cmd.gpu_budget_kw = budget
        cmd.gpu_caps_w = dict(split.caps_w)
        cmd.released = split.released
        self.prev_gpu_kw = np.array([split.class_cap_kw.get(n, 0.0) for n in self.class_names])
        self.caps_w = dict(split.caps_w)
        return cmd

    def caps_w_of(self, klass: str) -> list[float]:
        return [self.caps_w[s.index] for s in self.slots if s.klass == klass]

    def _release_w(self, klass: str) -> float:
        """What a released GPU of this class draws: idle power if a shed hook stops its work,
        else its minimum cap (nothing stops the job, the cap cannot go lower)."""
        return self.cfg.gpu.idle_w if klass in self.hooked else self.cfg.gpu.min_w

    def _idle_floor_kw(self) -> dict[str, float]:
        return {
            n: sum(1 for sl in self.slots if sl.klass == n) * self._release_w(n) / 1000.0 for n in self.class_names
        }

    def _split(self, budget: dict[str, float]) -> SplitResult:
        """Budget split, each class with what its released GPUs really draw."""
        caps: dict[int, float] = {}
        released: list[int] = []
        class_kw: dict[str, float] = {}
        for name in self.class_names:
            part = split_budget(
                {name: budget.get(name, 0.0)},
                [sl for sl in self.slots if sl.klass == name],
                idle_w=self._release_w(name),
            )
            caps.update(part.caps_w)
            released.extend(part.released)
            class_kw.update(part.class_cap_kw)
        return SplitResult(caps, tuple(sorted(released)), class_kw)

    def _priority_order(self) -> list[str]:
        """Class names, least important first (the order budgets are cut in)."""
        prio = {c.name: c.priority for c in self.cfg.gpu.classes}
        return sorted(self.class_names, key=lambda n: (-prio[n], n))

    def _step_index(self, now_s: float) -> int:
        """The plan step that covers ``now_s`` (a plan is used until the next one arrives)."""
        assert self.plan_t_s is not None
        elapsed = max(0.0, now_s - self.plan_t_s)
        edges = np.cumsum(self.steps_s)
        idx = int(np.searchsorted(edges, elapsed, side="right"))
        return min(idx, len(edges) - 1)

    def _clamp_battery(self, name: str, p_kw: float, soc_pct: float | None,
                       reserve_pct: float | None = None) -> float:
        return clamp_battery_kw(p_kw, self.cfg.device(name).limits, soc_pct, reserve_pct)

    def _genset_decision(self, name: str, want_on: bool, now_s: float, image: ProcessImage) -> bool:
        """Follow the plan, but never against min up/down times as we observed them."""
        lim = self.cfg.device(name).limits
        state = self._gen_state.get(name)
        if state is None:
            return want_on
        on, since_s = state
        if want_on == on:
            return want_on
        held_s = now_s - since_s
        if on and held_s < lim.min_up_s:
            return True
        if not on and held_s < lim.min_down_s and name not in self.min_down_yields:
            return False
        return want_on


def _run_time_s(image: ProcessImage, name: str, now_s: float) -> float | None:
    """The genset's run-time counter if its profile has one and the reading is GOOD, else None."""
    try:
        return image.value(name, "run_time_s", now_s)
    except KeyError:  # not in the profile: the signal was never declared
        return None


def _scale_down(
    budget_kw: dict[str, float], order: list[str], total_max_kw: float, floor_kw: dict[str, float] | None = None
) -> dict[str, float]:
    """Cut a per-class budget to ``total_max_kw``, taking from classes in ``order`` first.

    A class never goes below ``floor_kw`` (its GPUs' idle power once all are released: a
    released GPU still draws idle power, so the ceiling must count it).
    """
    floors = floor_kw or {}
    out = {n: max(v, floors.get(n, 0.0)) for n, v in budget_kw.items()}
    excess = sum(out.values()) - max(0.0, total_max_kw)
    for name in order:
        if excess <= 0:
            break
        take = min(excess, out.get(name, 0.0) - floors.get(name, 0.0))
        if take <= 0:
            continue
        out[name] = out.get(name, 0.0) - take
        excess -= take
    return out
