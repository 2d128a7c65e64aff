"""Replay: the production controller core against the in-process plant on a simulated clock.

``run_replay(cfg_path, trace=..., days=7, out_dir=..., controller="ours")`` builds the site trace,
the plant and a controller, steps the plant every ``step_s`` simulated seconds, plans every
``plan_every_s`` and dispatches + guards every step, then writes KPIs (JSON + text), the time series
(Parquet) and plots (PNG) into ``out_dir`` and returns the KPI dict.

Controllers (``--controller``), all behind the same ``Controller`` protocol and all followed by
the production guard (``powerctl.control.guard``, the independent safety layer every deployment has):

- ``ours``: ``ControllerCore`` with the optimizer (``DispatchProblem``) and its fallback ladder;
- ``rule``: the same core with the solver rungs forced off, so every plan is the rule-based
  fallback (``optimizer.fallback.rule_dispatch``): what the site gets without the optimizer;
- ``static``: every GPU at one fixed cap (``static_cap_w``, default the config's safe cap), battery
  left to the grid-forming inverter, genset started below 30 % SoC and stopped above 80 %.

The controller sees measurements only through a ``ProcessImage`` filled from the plant each step
(fresh, GOOD), and forecasts only through ``sim.forecast_replay`` (no future unless
``perfect_foresight``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from powerctl.config import SiteConfig, load_config
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.sim.forecast_replay import ReplayForecaster, make_forecaster
from powerctl.sim.plant.site import Plant
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace, build_site_trace

log = logging.getLogger(__name__)

CONTROLLERS = ("ours", "rule", "static")


@dataclass
class StepCommands:
    """What a controller asks of the plant for the next step."""

    battery_kw: dict[str, float] = field(default_factory=dict)
    genset_run: dict[str, bool] = field(default_factory=dict)
    gpu_caps_w: np.ndarray | None = None
    gpu_budget_kw: float = float("nan")  # what the planner wanted for GPUs (before the guard)
    guard_cut: bool = False
    guard_safe: bool = False
    released: list[int] = field(default_factory=list)  # GPUs whose work is shed (paused)
    mode: str = ""


class Controller(Protocol):
    name: str

    def plan(self, now_s: float, image: ProcessImage) -> None: ...

    def step(self, now_s: float, image: ProcessImage) -> StepCommands: ...

    def stats(self) -> dict[str, Any]: ...


# --- process image from the plant -------------------------------------------------------------

_SIGNALS = {
    Nature.PV: ("p_kw", "e_kwh", "state"),
    Nature.BATTERY: ("p_kw", "soc_pct", "max_charge_kw", "max_discharge_kw"),
    Nature.GENSET: ("p_kw", "running", "state", "fuel_pct", "run_time_s"),
    Nature.METER: ("p_kw",),
}


def new_image(cfg: SiteConfig, max_age_s: float) -> ProcessImage:
    img = ProcessImage()
    for d in cfg.devices:
        for sig in _SIGNALS.get(d.nature, ()):
            img.declare(d.name, d.nature, sig, max_age_s)
    return img


def fill_image(img: ProcessImage, cfg: SiteConfig, plant: Plant, now_s: float) -> None:
    for d in cfg.devices:
        n = d.name
        if d.nature is Nature.PV:
            img.update(n, "p_kw", plant.pv_kw(n), now_s)
            img.update(n, "e_kwh", plant.pv_e_kwh(n), now_s)
            img.update(n, "state", plant.pv_state(n), now_s)
        elif d.nature is Nature.BATTERY:
            img.update(n, "p_kw", plant.battery_kw(n), now_s)
            img.update(n, "soc_pct", plant.battery_soc_pct(n), now_s)
            img.update(n, "max_charge_kw", plant.battery_max_charge_kw(n), now_s)
            img.update(n, "max_discharge_kw", plant.battery_max_discharge_kw(n), now_s)
        elif d.nature is Nature.GENSET:
            img.update(n, "p_kw", plant.genset_kw(n), now_s)
            img.update(n, "running", 1.0 if plant.genset_running(n) else 0.0, now_s)
            img.update(n, "state", plant.genset_status(n), now_s)
            img.update(n, "fuel_pct", plant.genset_fuel_pct(n), now_s)
            img.update(n, "run_time_s", plant.genset_run_time_s(n), now_s)
        elif d.nature is Nature.METER:
            img.update(n, "p_kw", plant.meter_kw(n), now_s)


# --- controllers ------------------------------------------------------------------------------


def replay_config(cfg: SiteConfig, step_s: float, plan_every_s: float) -> SiteConfig:
    """The site config with control periods set to the replay's (plan age checks use them)."""
    ctl = cfg.control.model_copy(
        update={"guard_period_s": step_s, "dispatch_period_s": step_s, "mpc_period_s": plan_every_s}
    )
    return cfg.model_copy(update={"control": ctl})


class _GuardMixin:
    cfg: SiteConfig
    plant: Plant

    def _init_guard(self) -> None:
        from powerctl.control.guard import Guard
        from powerctl.control.split import slots_from_pool

        self.slots = slots_from_pool(self.cfg.gpu)
        self.hooked = [h.workload for h in self.cfg.gpu.shed_hooks]
        self.guard = Guard(self.cfg, self.slots, self.hooked)
        self.guard_cuts = 0
        self.guard_safe = 0

    def _guarded(
        self, now_s: float, image: ProcessImage, caps: dict[int, float] | None, cmd: StepCommands
    ) -> None:
        dec = self.guard.evaluate(
            image,
            now_s,
            requested_caps_w=caps,
            gpu_power_w=self.plant.gpu_power_kw() * 1000.0,
            other_load_kw=self.plant.other_kw,
        )
        self.guard_cuts += int(dec.cut)
        self.guard_safe += int(dec.safe)
        cmd.gpu_caps_w = np.array([dec.caps_w[s.index] for s in self.slots], dtype=float)
        cmd.guard_cut, cmd.guard_safe = dec.cut, dec.safe
        shed_classes = set(self.guard.shedder.shed)
        cmd.released = sorted({*cmd.released, *(s.index for s in self.slots if s.klass in shed_classes)})


class CoreController(_GuardMixin):
    """The production ``ControllerCore`` (+ guard); ``rule_only`` forces the rule-based rung."""

    def __init__(
        self,
        cfg: SiteConfig,
        plant: Plant,
        forecaster: ReplayForecaster,
        *,
        rule_only: bool = False,
        solve_deadline_s: float | None = None,
    ) -> None:
        from powerctl.control.core import ControllerCore

        self.name = "rule" if rule_only else "ours"
        self.cfg, self.plant = cfg, plant
        self._init_guard()
        self.core = ControllerCore(cfg, self.slots, forecaster)
        if rule_only:
            self.core.problem.force_fail.update({"primary", "secondary"})
        self.deadline_s = solve_deadline_s
        self.rungs: dict[str, int] = {}
        self.solve_s: list[float] = []

    def plan(self, now_s: float, image: ProcessImage) -> None:
        plan = self.core.plan(now_s, image, deadline_s=self.deadline_s)
        self.rungs[plan.rung] = self.rungs.get(plan.rung, 0) + 1
        self.solve_s.append(plan.solve_time_s)

    def step(self, now_s: float, image: ProcessImage) -> StepCommands:
        c = self.core.dispatch(now_s, image)
        cmd = StepCommands(
            battery_kw=dict(c.battery_kw),
            genset_run=dict(c.genset_run),
            mode=c.mode,
            gpu_budget_kw=float(sum(c.gpu_budget_kw.values())),
            released=list(c.released),
        )
        caps = None if c.mode == "safe" else dict(c.gpu_caps_w)  # no plan: the guard's safe caps
        self._guarded(now_s, image, caps, cmd)
        return cmd

    def stats(self) -> dict[str, Any]:
        s = np.array(self.solve_s) if self.solve_s else np.array([0.0])
        return {
            "plans": int(sum(self.rungs.values())),
            "plan_rungs": dict(self.rungs),
            "solve_ms_p50": float(np.percentile(s, 50) * 1e3),
            "solve_ms_p99": float(np.percentile(s, 99) * 1e3),
            "guard_cut_steps": self.guard_cuts,
            "guard_safe_steps": self.guard_safe,
        }


class StaticController(_GuardMixin):
    """Fixed GPU cap, battery idle (grid-forming), genset by SoC hysteresis (+ guard)."""

    def __init__(
        self,
        cfg: SiteConfig,
        plant: Plant,
        *,
        cap_w: float | None = None,
        start_soc_pct: float = 30.0,
        stop_soc_pct: float = 80.0,
    ) -> None:
        self.name = "static"
        self.cfg, self.plant = cfg, plant
        self._init_guard()
        self.cap_w = cfg.gpu.safe_cap_w if cap_w is None else cap_w
        self.start_soc, self.stop_soc = start_soc_pct, stop_soc_pct
        self.batteries = [d.name for d in cfg.by_nature(Nature.BATTERY)]
        self.gensets = [d.name for d in cfg.by_nature(Nature.GENSET)]
        self.run = dict.fromkeys(self.gensets, False)

    def plan(self, now_s: float, image: ProcessImage) -> None:
        return None

    def step(self, now_s: float, image: ProcessImage) -> StepCommands:
        lims = {b: self.cfg.device(b).limits for b in self.batteries}
        socs = [
            image.worst(b, "soc_pct", now_s, low=lims[b].soc_min_pct, high=lims[b].soc_max_pct)
            for b in self.batteries
        ]
        soc = float(np.mean(socs)) if socs else 100.0
        for g in self.gensets:
            if soc <= self.start_soc:
                self.run[g] = True
            elif soc >= self.stop_soc:
                self.run[g] = False
        cmd = StepCommands(
            battery_kw=dict.fromkeys(self.batteries, 0.0),
            genset_run=dict(self.run),
            mode="static",
            gpu_budget_kw=self.cap_w * len(self.slots) / 1000.0,
        )
        self._guarded(now_s, image, {s.index: self.cap_w for s in self.slots}, cmd)
        return cmd

    def stats(self) -> dict[str, Any]:
        return {
            "plans": 0,
            "plan_rungs": {},
            "guard_cut_steps": self.guard_cuts,
            "guard_safe_steps": self.guard_safe,
        }


def make_controller(
    kind: str, cfg: SiteConfig, plant: Plant, forecaster: ReplayForecaster, **kw: Any
) -> Controller:
    if kind == "ours":
        return CoreController(cfg, plant, forecaster, solve_deadline_s=kw.get("solve_deadline_s"))
    if kind == "rule":
        return CoreController(
            cfg, plant, forecaster, rule_only=True, solve_deadline_s=kw.get("solve_deadline_s")
        )
    if kind == "static":
        return StaticController(cfg, plant, cap_w=kw.get("static_cap_w"))
    raise ValueError(f"unknown controller {kind!r}; choose one of {', '.join(CONTROLLERS)}")


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    series: pd.DataFrame
    plant: Plant
    controller: Controller
    trace: SiteTrace
    wall_s: float
    sim_s: float
    forecaster: ReplayForecaster
    plan_wall_s: np.ndarray  # wall time of each planner call (forecast + solve)
    step_wall_s: (
        np.ndarray
    )  # wall time of each step without the planner (image, dispatch, guard, plant, record)


def simulate(
    cfg: SiteConfig,
    trace: SiteTrace,
    *,
    controller: str = "ours",
    days: float | None = None,
    step_s: float = 60.0,
    plan_every_s: float = 300.0,
    perfect_foresight: bool = False,
    pv_forecast: str = "clearsky",
    soc0_pct: float = 50.0,
    static_cap_w: float | None = None,
    solve_deadline_s: float | None = None,
    refill_below_pct: float | None = 20.0,
    progress: Callable[[float, float], None] | None = None,
) -> ReplayResult:
    """Run the closed loop over the trace (or its first ``days``); no files written."""
    if days is not None:
        trace = trace.window(days)
    if abs(trace.step_s - step_s) > 1e-9 and step_s % trace.step_s != 0:
        raise ValueError(f"plant step {step_s} s must be a multiple of the trace step {trace.step_s} s")
    rcfg = replay_config(cfg, step_s, plan_every_s)
    plant = Plant(
        rcfg,
        pv_kw_fn=trace.pv_kw_at,
        gpu_demand_fn=trace.gpu_demand_w_at,
        t0_s=0.0,
        soc0_pct=soc0_pct,
        other_load_kw=trace.other_load_kw_at,
        genset_refill_below_pct=refill_below_pct,
    )
    forecaster = make_forecaster(rcfg, trace, perfect_foresight=perfect_foresight, pv_method=pv_forecast)
    ctrl = make_controller(
        controller, rcfg, plant, forecaster, static_cap_w=static_cap_w, solve_deadline_s=solve_deadline_s
    )
    if isinstance(ctrl, CoreController):  # grid tariffs and billing periods on the trace's calendar
        ctrl.core.billing.time_offset_s = pd.Timestamp(trace.t0).timestamp()
    image = new_image(rcfg, max_age_s=2.5 * step_s)
    end_s = trace.end_s
    n = int(np.floor(end_s / step_s + 1e-9))
    plan_every_k = max(1, round(plan_every_s / step_s))
    rows: list[dict[str, Any]] = []
    t_wall = time.perf_counter()
    plant.step(0.0)
    stored0_kwh = plant.stored_kwh()
    last_caps = plant.gpu.caps_w.copy()
    caps_clamped = 0
    plan_wall = []
    step_wall = np.zeros(n)
    for k in range(n):
        t_a = time.perf_counter()
        now = k * step_s
        fill_image(image, rcfg, plant, now)
        if k % plan_every_k == 0:
            t_p = time.perf_counter()
            ctrl.plan(now, image)
            plan_wall.append(time.perf_counter() - t_p)
        t_b = time.perf_counter()
        cmd = ctrl.step(now, image)
        for b, p in cmd.battery_kw.items():
            plant.set_battery_kw(b, p)
        for g, run in cmd.genset_run.items():
            plant.set_genset_run(g, run)
        if cmd.gpu_caps_w is not None:
            caps = cmd.gpu_caps_w
            caps_clamped += int(np.sum((caps < plant.gpu.min_w - 1e-6) | (caps > plant.gpu.max_w + 1e-6)))
            plant.set_gpu_caps_w(caps)
        plant.gpu.set_released(cmd.released)
        plant.step(now + step_s)
        row = plant.snapshot()
        row["t_s"] = now  # the row describes the interval [now, now + step)
        row["battery_set_kw"] = sum(cmd.battery_kw.values())
        row["gpu_budget_kw"] = cmd.gpu_budget_kw
        row["guard_cut"] = cmd.guard_cut
        row["guard_safe"] = cmd.guard_safe
        row["mode"] = cmd.mode
        row["genset_cmd"] = int(any(cmd.genset_run.values()))
        row["gpus_released"] = len(cmd.released)
        row["gpu_caps_changed"] = int(np.sum(np.abs(plant.gpu.caps_w - last_caps) > 1.0))
        last_caps = plant.gpu.caps_w.copy()
        row["value_cum"] = plant.gpu.value
        row["fuel_l_cum"] = sum(g.fuel_used_l for g in plant.gensets.values())
        rows.append(row)
        step_wall[k] = time.perf_counter() - t_b + (t_b - t_a if k % plan_every_k else 0.0)
        if progress is not None and (k % 60 == 0 or k == n - 1):
            progress(now + step_s, end_s)
    wall = time.perf_counter() - t_wall
    series = pd.DataFrame(rows)
    series.index = trace.t0 + pd.to_timedelta(series["t_s"], unit="s")
    series.index.name = "time"
    series.attrs["stored0_kwh"] = stored0_kwh
    series.attrs["caps_clamped"] = caps_clamped
    return ReplayResult(
        series, plant, ctrl, trace, wall, n * step_s, forecaster, np.array(plan_wall), step_wall
    )


def _progress_bar(label: str, enabled: bool) -> tuple[Callable[[float, float], None] | None, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("day {task.fields[day]:.2f}/{task.fields[days]:g}"),
        TextColumn("{task.fields[speed]:,.0f}x real time"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    task = prog.add_task(label, total=1.0, day=0.0, days=0.0, speed=0.0)
    t0 = time.perf_counter()

    def cb(sim_s: float, end_s: float) -> None:
        wall = max(time.perf_counter() - t0, 1e-9)
        prog.update(
            task, completed=sim_s / end_s, day=sim_s / 86400.0, days=end_s / 86400.0, speed=sim_s / wall
        )

    return cb, prog


def run_replay(
    cfg_path: str | Path,
    trace: str | Path | None = None,
    days: float = 7.0,
    out_dir: str | Path = "replay-out",
    controller: str = "ours",
    perfect_foresight: bool = False,
    *,
    gpu_trace: str | Path | None = DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv",
    start: str = "06-01",
    step_s: float = 60.0,
    plan_every_s: float = 300.0,
    pv_forecast: str = "clearsky",
    soc0_pct: float = 50.0,
    static_cap_w: float | None = None,
    solve_deadline_s: float | None = None,
    show_progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Replay and write ``kpi.json``, ``kpi.txt``, ``series.parquet`` and PNG plots to ``out_dir``."""
    from powerctl.sim.kpi import compute_kpis, format_kpis

    cfg = load_config(cfg_path, check_secrets=False)
    irr = Path(trace) if trace is not None else DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
    st = build_site_trace(cfg, irr, gpu_trace, start=start, days=days, step_s=step_s)
    label = f"replay {controller}{' (perfect foresight)' if perfect_foresight else ''}"
    cb, prog = _progress_bar(label, show_progress)
    if prog is not None:
        prog.start()
    try:
        res = simulate(
            cfg,
            st,
            controller=controller,
            step_s=step_s,
            plan_every_s=plan_every_s,
            perfect_foresight=perfect_foresight,
            pv_forecast=pv_forecast,
            soc0_pct=soc0_pct,
            static_cap_w=static_cap_w,
            solve_deadline_s=solve_deadline_s,
            progress=cb,
        )
    finally:
        if prog is not None:
            prog.stop()
    kpis = compute_kpis(res)
    kpis["run"] = {
        "config": str(cfg_path),
        "trace": st.source,
        "start": str(st.t0),
        "days": days,
        "controller": controller,
        "perfect_foresight": perfect_foresight,
        "step_s": step_s,
        "plan_every_s": plan_every_s,
        "pv_forecast": "perfect" if perfect_foresight else pv_forecast,
    }
    write_outputs(res, kpis, Path(out_dir), plots=plots)
    log.info("%s", format_kpis(kpis))
    return kpis


def write_outputs(res: ReplayResult, kpis: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    import json

    from powerctl.sim.kpi import format_kpis

    out.mkdir(parents=True, exist_ok=True)
    (out / "kpi.json").write_text(json.dumps(kpis, indent=2, default=float) + "\n")
    (out / "kpi.txt").write_text(format_kpis(kpis) + "\n")
    series = res.series.copy()
    series["mode"] = series["mode"].astype(str)
    series.to_parquet(out / "series.parquet")
    if plots:
        from powerctl.sim.plots import plot_replay

        plot_replay(res.series, res.plant, out, title=f"{kpis['run']['controller'] if 'run' in kpis else ''}")
