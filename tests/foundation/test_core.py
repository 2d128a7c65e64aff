"""Controller core: plan -> commands, fallbacks when the plan is missing or old, operator overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import SiteConfig, load_config, parse_config
from powerctl.control.core import ControllerCore, Overrides
from powerctl.control.split import slots_from_pool
from powerctl.natures import SIGNALS, Nature
from powerctl.optimizer import Plan
from powerctl.process_image import ProcessImage

ROOT = Path(__file__).resolve().parents[2]
def _site_with_batch_hook() -> SiteConfig:
    """The demo site plus a shed hook for the batch class (so released batch GPUs stop working)."""
    data = tomllib.loads((ROOT / "examples" / "demo-site.toml").read_text())
    data["gpu"]["shed_hooks"] = [{"workload": "batch", "shed": ["true"], "restore": ["true"]}]
    return parse_config(data)


CFG = _site_with_batch_hook()
T = len(CFG.control.horizon_steps_s)


def _image(now: float, soc: float = 60.0, gen_running: float = 0.0) -> ProcessImage:
    img = ProcessImage()
    for d in CFG.devices:
        for sig in SIGNALS[d.nature]:
            img.declare(d.name, d.nature, sig, 10.0)
    img.update("pv1", "p_kw", 120.0, now)
    img.update("bess", "soc_pct", soc, now)
    img.update("gen1", "running", gen_running, now)
    img.update("gen1", "p_kw", 0.0, now)
    return img


def _plan(gpu_kw: list[float], battery_kw: float, genset_on: bool, rung: str = "primary") -> Plan:
    n_c = len(gpu_kw)
    return Plan(
        pv_kw=np.full((1, T), 100.0), battery_kw=np.full((1, T), battery_kw), soc_pct=np.full((1, T + 1), 60.0),
        genset_kw=np.zeros((1, T)), genset_on=np.full((1, T), genset_on), gpu_kw=np.tile(np.array(gpu_kw)[:, None], (1, T)),
        unserved_kw=np.zeros(T), spill_kw=np.zeros(T), reserve_short_kw=np.zeros(T), objective_terms={}, slack=[],
        status="optimal", solver="TEST", rung=rung, solve_time_s=0.001, steps_s=np.asarray(CFG.control.horizon_steps_s),
    )
    del n_c


def _draw_kw(cmd, cfg: SiteConfig | None = None) -> float:  # type: ignore[no-untyped-def]
    """GPU power the commands allow: caps of running GPUs; released GPUs draw idle power when a
    shed hook stops their work, their minimum cap otherwise."""
    cfg = cfg or CFG
    hooked = {h.workload for h in cfg.gpu.shed_hooks}
    slots = {s.index: s for s in slots_from_pool(cfg.gpu)}
    total = 0.0
    for i, c in cmd.gpu_caps_w.items():
        if i in cmd.released:
            total += cfg.gpu.idle_w if slots[i].klass in hooked else cfg.gpu.min_w
        else:
            total += c
    return total / 1000.0


class FixedPlanProblem:
    """Stands in for DispatchProblem: returns a given plan (the optimizer has its own tests)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def solve(self, inputs, deadline_s):  # type: ignore[no-untyped-def]
        assert inputs.soc_pct.shape == (1,)
        return self.plan


def _core(plan: Plan) -> ControllerCore:
    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        n = len(steps)
        return np.zeros((1, n)), np.full((3, n), 30.0), np.zeros(n)

    return ControllerCore(CFG, slots_from_pool(CFG.gpu), fc, problem=FixedPlanProblem(plan))  # type: ignore[arg-type]


def test_plan_first_step_becomes_commands_within_limits() -> None:
    core = _core(_plan([30.0, 20.0, 5.0], battery_kw=500.0, genset_on=False))
    img = _image(1000.0)
    core.plan(1000.0, img)
    cmd = core.dispatch(1000.5, img)
    assert cmd.mode == "plan"
    # the battery setpoint is clamped to the device's discharge limit (the plan asked for 500 kW)
    assert cmd.battery_kw == {"bess": CFG.device("bess").limits.max_discharge_kw}
    assert cmd.genset_run == {"gen1": False}
    # 55 kW asked; batch's 5 kW is below its floors (n x 200 W), so some of its GPUs are released
    # (work shed, drawing idle power) and the rest run at the floor
    assert _draw_kw(cmd) == pytest.approx(55.0, abs=0.3)
    assert all(CFG.gpu.min_w <= c <= CFG.gpu.max_w for c in cmd.gpu_caps_w.values())
    n_batch = next(c.gpus for c in CFG.gpu.classes if c.name == "batch")
    assert 5.0 < n_batch * CFG.gpu.min_w / 1000
    assert 0 < len(cmd.released) < n_batch
    assert all(core.slots[i].klass == "batch" for i in cmd.released)


def test_no_plan_and_old_plan_fall_back_to_safe_cap() -> None:
    core = _core(_plan([33.6, 33.6, 22.4], battery_kw=0.0, genset_on=False))
    img = _image(0.0)
    cmd = core.dispatch(0.0, img)
    assert cmd.mode == "safe" and cmd.reason == "no plan"
    assert set(cmd.gpu_caps_w.values()) == {CFG.gpu.safe_cap_w}
    core.plan(0.0, img)
    assert core.dispatch(1.0, img).mode == "plan"
    old = core.dispatch(3 * CFG.control.mpc_period_s + 1.0, img)
    assert old.mode == "safe" and max(old.gpu_caps_w.values()) == CFG.gpu.safe_cap_w


def test_safe_rung_plan_is_not_followed() -> None:
    core = _core(_plan([33.6, 33.6, 22.4], battery_kw=0.0, genset_on=False, rung="safe"))
    img = _image(0.0)
    core.plan(0.0, img)
    assert core.dispatch(0.5, img).mode == "safe"


def test_genset_min_up_time_respected_after_start() -> None:
    core = _core(_plan([10.0, 0.0, 0.0], battery_kw=0.0, genset_on=False))
    img = _image(0.0, gen_running=1.0)
    core.plan(0.0, img)  # sees the genset running from now
    # the plan wants it off, but it has run for less than min_up_s as far as we know
    assert core.dispatch(1.0, img).genset_run == {"gen1": True}
    img2 = _image(CFG.device("gen1").limits.min_up_s + 5.0, gen_running=1.0)
    core.plan(CFG.device("gen1").limits.min_up_s + 5.0, img2)
    assert core.dispatch(CFG.device("gen1").limits.min_up_s + 6.0, img2).genset_run == {"gen1": False}


def test_overrides_ceiling_reserve_hold_manual() -> None:
    core = _core(_plan([33.6, 33.6, 22.4], battery_kw=40.0, genset_on=False))
    img = _image(0.0, soc=25.0)
    core.plan(0.0, img)
    capped = core.dispatch(0.5, img, Overrides(gpu_budget_max_kw=50.0))
    assert _draw_kw(capped) <= 50.0 + 0.01
    # least important class (batch) gave up first: all its GPUs parked at the floor
    batch = [c for s, c in zip(core.slots, capped.gpu_caps_w.values(), strict=True) if s.klass == "batch"]
    assert max(batch) == CFG.gpu.min_w
    reserve = core.dispatch(1.0, img, Overrides(battery_reserve_pct=30.0))
    assert reserve.battery_kw["bess"] == 0.0 and "at reserve" in reserve.reason
    before = dict(reserve.gpu_caps_w)
    held = core.dispatch(2.0, img, Overrides(mode="hold"))
    assert held.mode == "hold" and held.gpu_caps_w == before
    manual = core.dispatch(3.0, img, Overrides(mode="manual", gpu_budget_max_kw=40.0))
    assert manual.mode == "manual" and manual.battery_kw == {} and manual.genset_run == {}
    assert _draw_kw(manual) == pytest.approx(40.0, abs=0.3)
    inference = [c for s, c in zip(core.slots, manual.gpu_caps_w.values(), strict=True) if s.klass == "inference"]
    assert min(inference) > CFG.gpu.min_w  # the most important class got its share first


def test_stale_soc_plans_from_the_floor() -> None:
    seen = {}

    class Spy(FixedPlanProblem):
        def solve(self, inputs, deadline_s):  # type: ignore[no-untyped-def]
            seen["soc"] = float(inputs.soc_pct[0])
            seen["gen"] = bool(inputs.genset_on[0])
            return self.plan

    core = ControllerCore(
        CFG, slots_from_pool(CFG.gpu), lambda n, i, s: (np.zeros((1, len(s))), np.zeros((3, len(s))), np.zeros(len(s))),
        problem=Spy(_plan([1.0, 1.0, 1.0], 0.0, False)),  # type: ignore[arg-type]
    )
    img = _image(0.0, soc=80.0, gen_running=1.0)
    core.plan(100.0, img)  # 100 s later: every reading is stale
    assert seen == {"soc": CFG.device("bess").limits.soc_min_pct, "gen": False}
    assert Nature.BATTERY in {d.nature for d in CFG.devices}


def test_ceiling_counts_unhooked_released_gpus_at_their_floor() -> None:
    """Without a shed hook nothing stops a released GPU's job: it draws its minimum cap, so a
    ceiling is met by cutting other classes, not by pretending the GPU idles."""
    cfg = load_config(ROOT / "examples" / "demo-site.toml")
    assert not cfg.gpu.shed_hooks

    def fc(now, image, steps):  # type: ignore[no-untyped-def]
        return np.zeros((1, len(steps))), np.full((3, len(steps)), 30.0), np.zeros(len(steps))

    core = ControllerCore(cfg, slots_from_pool(cfg.gpu), fc, problem=FixedPlanProblem(_plan([44.8, 44.8, 44.8], 0.0, False)))  # type: ignore[arg-type]
    img = _image(0.0)
    core.plan(0.0, img)
    cmd = core.dispatch(0.5, img, Overrides(gpu_budget_max_kw=60.0))
    assert _draw_kw(cmd, cfg) <= 60.0 + 0.01


class RecordingProblem(FixedPlanProblem):
    """A FixedPlanProblem that keeps the inputs it was given."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.inputs: list = []  # type: ignore[type-arg]

    def solve(self, inputs, deadline_s):  # type: ignore[no-untyped-def]
        self.inputs.append(inputs)
        return super().solve(inputs, deadline_s)


def test_genset_starting_on_our_command_counts_as_committed() -> None:
    """Pre-start, crank and warm-up read "not running": a genset we told to start is committed from
    the command on, so a plan that no longer wants it (it saw a stopped genset that can still start)
    does not stop it mid-warm-up (min up time counts from the command), and the planner is told it
    is on (warming up), not off. A start that never shows running counts as failed after its
    warm-up plus START_GRACE_S: off again, in the planner's inputs and the commands."""
    from powerctl.control.core import START_GRACE_S

    problem = RecordingProblem(_plan([10.0, 0.0, 0.0], battery_kw=0.0, genset_on=True))
    core = ControllerCore(CFG, slots_from_pool(CFG.gpu), _core(problem.plan).forecaster, problem=problem)  # type: ignore[arg-type]
    lim = CFG.device("gen1").limits
    core.plan(0.0, _image(0.0))  # first sight: stopped, min down time counts from now
    t0 = lim.min_down_s + 1.0
    core.plan(t0, _image(t0))
    assert not problem.inputs[-1].genset_on[0]
    assert core.dispatch(t0 + 0.5, _image(t0 + 0.5)).genset_run == {"gen1": True}  # the start
    problem.plan = _plan([10.0, 0.0, 0.0], battery_kw=0.0, genset_on=False)  # now it wants it off
    for t in (t0 + 2.0, t0 + 4.0, t0 + lim.warmup_s):  # warming up: still reads not running
        core.plan(t, _image(t))
        assert problem.inputs[-1].genset_on[0], t
        assert problem.inputs[-1].genset_state_s[0] <= t - t0, t  # on since the start, not before
        assert core.dispatch(t + 0.5, _image(t + 0.5)).genset_run == {"gen1": True}, t
    # it never runs: after warm-up + grace the start has failed and the genset counts as off
    t_fail = t0 + 0.5 + lim.warmup_s + START_GRACE_S + 1.0
    core.plan(t_fail, _image(t_fail))
    assert not problem.inputs[-1].genset_on[0]
    t_off = t_fail + lim.min_down_s
    core.plan(t_off, _image(t_off))
    assert core.dispatch(t_off + 0.5, _image(t_off + 0.5)).genset_run == {"gen1": False}
