"""Replay: the production control loop against the in-process plant on simulated time.

``run_replay(cfg_path, trace=..., days=7, out_dir=..., controller="ours")`` builds the site trace,
the plant and a planner, runs ``ControlLoop.tick`` (``powerctl.control.loop``: the very loop the
daemon runs) every ``step_s`` simulated seconds against ``PlantPort`` (``sim/plant/port.py``), then
writes KPIs (JSON + text), the time series (Parquet) and plots (PNG) into ``out_dir`` and returns
the KPI dict. The loop's clock is the trace's calendar (epoch seconds), the plant's the seconds
since the trace's start.

Planners (``--controller``), all in the same loop and so all followed by the production guard:

- ``ours``: ``ControllerCore`` with the optimizer (``DispatchProblem``) and its fallback ladder;
- ``rule``: the same core with the solver rungs forced off, so every plan is the rule-based
  fallback (``optimizer.fallback.rule_dispatch``): what the site gets without the optimizer;
- ``static``: ``sim.baselines.StaticPlanner`` (one fixed cap, SoC hysteresis for the genset).

Forecasts: the daemon's own ``LiveForecaster`` (``powerctl.forecast``; ``pv_forecast="live"``, the
default), fed by the loop from the measurements each dispatch, cold at the start like a freshly
started daemon. ``perfect_foresight`` (the upper bound) and the other ``pv_forecast`` methods use
``sim.forecast_replay.ReplayForecaster``, which reads the trace.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from powerctl.config import SiteConfig, load_config
from powerctl.control.core import ControllerCore, Forecaster, Overrides
from powerctl.control.loop import ControlLoop, Planner
from powerctl.control.split import GpuSlot, slots_from_pool
from powerctl.natures import Nature
from powerctl.process_image import ProcessImage
from powerctl.sim.baselines import StaticPlanner
from powerctl.sim.forecast_replay import make_forecaster as make_replay_forecaster
from powerctl.sim.plant.grid import GridConnection
from powerctl.sim.plant.port import PlantPort
from powerctl.sim.plant.site import Plant
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace, build_site_trace

log = logging.getLogger(__name__)

CONTROLLERS = ("ours", "rule", "static")
PV_FORECASTS = ("live", "clearsky", "persistence", "provided")


def replay_config(cfg: SiteConfig, step_s: float, plan_every_s: float) -> SiteConfig:
    """The site config with control periods set to the replay's (plan age checks use them): the
    guard every step, dispatch at the site's period rounded up to whole steps (every step when
    a step is longer), plans every ``plan_every_s``."""
    dispatch_s = step_s * max(1, math.ceil(cfg.control.dispatch_period_s / step_s - 1e-9))
    ctl = cfg.control.model_copy(
        update={"guard_period_s": step_s, "dispatch_period_s": dispatch_s, "mpc_period_s": plan_every_s}
    )
    return cfg.model_copy(update={"control": ctl})


def trace_clear_kw_fns(cfg: SiteConfig, trace: SiteTrace, t0_epoch_s: float
                       ) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Clear-sky AC kW of each PV array at epoch times, from the trace's clear-sky column (the
    same sky model the trace's PV was made with; shared by kWp)."""
    kwp = np.array([d.limits.kwp for d in cfg.by_nature(Nature.PV)], dtype=float)
    share = kwp / kwp.sum() if kwp.sum() > 0 else kwp
    t = np.asarray(trace.t_s, dtype=float)
    clear = trace.df["pv_clear_kw"].to_numpy(float)

    def fn(f: float) -> Callable[[np.ndarray], np.ndarray]:
        return lambda ts: f * np.interp(np.asarray(ts, dtype=float) - t0_epoch_s, t, clear)

    return [fn(float(f)) for f in share]


class _TraceTime:
    """A trace-time forecaster (``ReplayForecaster``) under the loop's epoch clock."""

    def __init__(self, inner: Any, t0_epoch_s: float) -> None:
        self.inner, self.t0 = inner, t0_epoch_s

    @property
    def peeked(self) -> bool:
        return bool(self.inner.peeked)

    def __call__(self, now_s: float, image: ProcessImage, steps_s: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.inner(now_s - self.t0, image, steps_s))


def make_planner(kind: str, cfg: SiteConfig, slots: list[GpuSlot], forecaster: Forecaster, *,
                 static_cap_w: float | None = None) -> Planner:
    if kind in ("ours", "rule"):
        core = ControllerCore(cfg, slots, forecaster)
        if kind == "rule":
            core.problem.force_fail.update({"primary", "secondary"})
        return core
    if kind == "static":
        return StaticPlanner(cfg, slots, cap_w=static_cap_w)
    raise ValueError(f"unknown controller {kind!r}; choose one of {', '.join(CONTROLLERS)}")


@dataclass
class LoopReport:
    """The loop's counters in the shape the KPIs report them."""

    name: str
    loop: ControlLoop

    def stats(self) -> dict[str, Any]:
        st = self.loop.stats
        s = np.array(st.solve_s) if st.solve_s else np.array([0.0])
        out: dict[str, Any] = {"plans": st.plans, "plan_rungs": dict(st.plan_rungs)}
        if st.plans:
            out["solve_ms_p50"] = float(np.percentile(s, 50) * 1e3)
            out["solve_ms_p99"] = float(np.percentile(s, 99) * 1e3)
        out["guard_cut_steps"] = st.guard_cuts
        out["guard_safe_steps"] = st.guard_safe
        return out


@dataclass
class ReplayResult:
    series: pd.DataFrame
    plant: Plant
    controller: LoopReport
    trace: SiteTrace
    wall_s: float
    sim_s: float
    forecaster: Any
    plan_wall_s: np.ndarray  # wall time of each planner call (forecast + solve)
    step_wall_s: np.ndarray  # wall time of each step without the planner (image, dispatch, guard, plant, record)


def simulate(
    cfg: SiteConfig,
    trace: SiteTrace,
    *,
    controller: str = "ours",
    days: float | None = None,
    step_s: float = 60.0,
    plan_every_s: float = 300.0,
    perfect_foresight: bool = False,
    pv_forecast: str = "live",
    soc0_pct: float = 50.0,
    static_cap_w: float | None = None,
    solve_deadline_s: float | None = None,
    refill_below_pct: float | None = 20.0,
    genset_start_delay_s: float = 10.0,
    overrides_at: Callable[[float], Overrides] | None = None,
    forecaster: Forecaster | None = None,
    progress: Callable[[float, float], None] | None = None,
    grid_outages_per_day: float = 0.0,
    grid_outage_mean_s: float = 1800.0,
    grid_seed: int = 0,
) -> ReplayResult:
    """Run the closed loop over the trace (or its first ``days``); no files written.

    ``overrides_at(t_s)`` gives the operator commands in force at ``t_s`` s into the trace;
    ``forecaster`` replaces the one ``pv_forecast``/``perfect_foresight`` choose (its clock is
    the trace's calendar, epoch seconds)."""
    if days is not None:
        trace = trace.window(days)
    if abs(trace.step_s - step_s) > 1e-9 and step_s % trace.step_s != 0:
        raise ValueError(f"plant step {step_s} s must be a multiple of the trace step {trace.step_s} s")
    if pv_forecast not in PV_FORECASTS:
        raise ValueError(f"unknown PV forecast {pv_forecast!r}; choose one of {', '.join(PV_FORECASTS)}")
    rcfg = replay_config(cfg, step_s, plan_every_s)
    plant = Plant(
        rcfg,
        pv_kw_fn=trace.pv_kw_at,
        gpu_demand_fn=trace.gpu_demand_w_at,
        t0_s=0.0,
        soc0_pct=soc0_pct,
        other_load_kw=trace.other_load_kw_at,
        genset_refill_below_pct=refill_below_pct,
        genset_start_delay_s=genset_start_delay_s,
    )
    if grid_outages_per_day > 0:  # random grid outages, the same for every controller (seeded)
        plant.grid = GridConnection(plant.grid_import_max_kw, plant.grid_export_max_kw,
                                    outages_per_day=grid_outages_per_day, mean_outage_s=grid_outage_mean_s,
                                    seed=grid_seed)
    t0 = pd.Timestamp(trace.t0).timestamp()  # the loop runs on the trace's calendar
    if forecaster is not None:
        pass
    elif perfect_foresight or pv_forecast != "live":
        forecaster = _TraceTime(make_replay_forecaster(rcfg, trace, perfect_foresight=perfect_foresight,
                                                       pv_method=pv_forecast), t0)
    else:
        from powerctl.forecast import make_forecaster

        forecaster = make_forecaster(rcfg, clear_kw_fns=trace_clear_kw_fns(rcfg, trace, t0))
    slots = slots_from_pool(rcfg.gpu)
    port = PlantPort(rcfg, plant, max_age_s=2.5 * step_s)
    loop = ControlLoop(rcfg, slots, make_planner(controller, rcfg, slots, forecaster, static_cap_w=static_cap_w),
                       port, port)
    end_s = trace.end_s
    n = int(np.floor(end_s / step_s + 1e-9))
    rows: list[dict[str, Any]] = []
    t_wall = time.perf_counter()
    plant.step(0.0)
    stored0_kwh = plant.stored_kwh()
    # the GPUs start at the safe cap, as the daemon puts them (never from their maximum)
    port.gpu_caps({i: min(float(c), rcfg.gpu.safe_cap_w) for i, c in enumerate(plant.gpu.caps_w)})
    loop.start(t0, 0.0, {i: float(c) for i, c in enumerate(plant.gpu.caps_w)})
    last_caps = plant.gpu.caps_w.copy()
    plan_wall = []
    step_wall = np.zeros(n)
    for k in range(n):
        t_a = time.perf_counter()
        now = k * step_s
        port.refresh(t0 + now)
        out = loop.tick(t0 + now, now, None if overrides_at is None else overrides_at(now), solve_deadline_s)
        t_b = time.perf_counter()
        plant.step(now + step_s)
        cmd, dec = out.commands or loop.last_commands, out.decision
        assert cmd is not None and dec is not None  # dispatch and guard run every step
        row = plant.snapshot()
        row["t_s"] = now  # the row describes the interval [now, now + step)
        row["battery_set_kw"] = sum(cmd.battery_kw.values())
        row["gpu_budget_kw"] = float(sum(cmd.gpu_budget_kw.values()))  # before the guard
        row["guard_cut"] = dec.cut
        row["guard_safe"] = dec.safe
        row["mode"] = str(cmd.mode)
        row["genset_cmd"] = int(any(cmd.genset_run.values()))
        # base loads held by running gensets (where the profile takes one, powerctl/control/genset_output.py)
        row["genset_set_kw"] = sum(g.setpoint_kw for g in plant.gensets.values() if g.running and g.setpoint_kw is not None)
        row["gpus_released"] = len(loop.released)
        row["gpu_caps_changed"] = int(np.sum(np.abs(plant.gpu.caps_w - last_caps) > 1.0))
        last_caps = plant.gpu.caps_w.copy()
        row["value_cum"] = plant.gpu.value
        row["fuel_l_cum"] = sum(g.fuel_used_l for g in plant.gensets.values())
        rows.append(row)
        if out.plan is not None:  # the tick's time is the plan's (dispatch and guard take ~1 ms)
            plan_wall.append(t_b - t_a)
        step_wall[k] = time.perf_counter() - t_b + (t_b - t_a if out.plan is None else 0.0)
        if progress is not None and (k % 60 == 0 or k == n - 1):
            progress(now + step_s, end_s)
    wall = time.perf_counter() - t_wall
    series = pd.DataFrame(rows)
    series.index = trace.t0 + pd.to_timedelta(series["t_s"], unit="s")
    series.index.name = "time"
    series.attrs["stored0_kwh"] = stored0_kwh
    series.attrs["caps_clamped"] = port.caps_clamped
    return ReplayResult(series, plant, LoopReport(controller, loop), trace, wall, n * step_s, forecaster,
                        np.array(plan_wall), step_wall)


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
    pv_forecast: str = "live",
    soc0_pct: float = 50.0,
    static_cap_w: float | None = None,
    solve_deadline_s: float | None = None,
    show_progress: bool = True,
    plots: bool = True,
    grid_outages_per_day: float = 0.0,
    grid_seed: int = 0,
    user: Any = None,
    warmup_days: float = 1.0,
) -> dict[str, Any]:
    """Replay and write ``kpi.json``, ``kpi.txt``, ``series.parquet`` and PNG plots to ``out_dir``.
    ``user`` (``sim.traces.user.UserTraces``): the engineer's own PV power, load, GPU demand, price
    files; ``warmup_days``: trace kept before ``start`` (1 day needs 1 day of data before it)."""
    from powerctl.sim.kpi import compute_kpis, format_kpis

    cfg = load_config(cfg_path, check_secrets=False)
    irr = Path(trace) if trace is not None else DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
    st = build_site_trace(cfg, irr, gpu_trace, start=start, days=days, step_s=step_s,
                          history_days=warmup_days, user=user)
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
            grid_outages_per_day=grid_outages_per_day,
            grid_seed=grid_seed,
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
        from powerctl.sim.plots import html_report, plot_replay, run_title

        pngs = plot_replay(res.series, res.plant, out, title=run_title(kpis))
        html_report(f"Replay: {run_title(kpis)}", {"KPIs": format_kpis(kpis)}, pngs, out / "report.html")
