"""The simulator from Python (notebooks): load traces, build a site, replay, compare, sweep.

    from powerctl.sim import api
    site = api.load_site("examples/demo-site.toml")
    trace = api.load_trace(site, pv_power="pv.csv:column=ac_w,unit=W,tz=UTC", start="2022-03-18", days=1)
    run = api.replay(site, trace, controller="ours")        # a Run: .kpis (dict), .series (DataFrame)
    table = api.compare(site, trace)                       # KPIs of ours / rule / static / perfect foresight
    api.report(table, "out/")                              # compare.png, daily_energy.png, report.html
    ranked = api.sweep("site.toml", "examples/sweep.toml", "sweep-out/")

Every function raises ``TraceError`` / ``ConfigError`` / ``SweepError`` with a message naming the
file, column and problem (the same ones the CLI prints). The trace mapping strings are the CLI's
(``FILE:column=NAME,unit=W,tz=ZONE,clock=ZONE,sign=-1,scale=1``; see ``sim/traces/user.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from powerctl.config import SiteConfig, load_config
from powerctl.sim.traces.site_trace import DATA_DIR, SiteTrace, build_site_trace
from powerctl.sim.traces.user import user_traces

__all__ = ["Run", "compare", "kpi_table", "load_site", "load_trace", "replay", "report", "sized", "sweep"]

TMY3 = DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
AZURE = DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv"


def load_site(path: str | Path) -> SiteConfig:
    """The site TOML, validated (secrets are not needed to simulate)."""
    return load_config(path, check_secrets=False)


def sized(site: SiteConfig, **sizes: float) -> SiteConfig:
    """The site with other sizes: ``pv_kwp``, ``battery_kwh``, ``battery_kw``, ``genset_kw``, ``gpus``,
    ``grid_import_kw`` (as in a sweep grid)."""
    from powerctl.sim.sweep import sized_config

    return sized_config(site, sizes)


def load_trace(
    site: SiteConfig,
    *,
    irradiance: str | Path | None = TMY3,
    gpu_trace: str | Path | None = AZURE,
    pv_power: str | None = None,
    weather: str | None = None,
    load: str | None = None,
    gpu: dict[str, str] | None = None,
    price: str | None = None,
    traces_toml: str | Path | None = None,
    gaps: str = "interpolate",
    max_gap_h: float = 3.0,
    start: str = "06-01",
    days: float = 7.0,
    warmup_days: float = 1.0,
    step_s: float = 60.0,
) -> SiteTrace:
    """Everything a replay needs on the plant's grid. PV from ``pv_power`` (measured AC power) when
    given, else modelled from your ``weather`` mapping (``FILE:ghi=COL,...`` or ``FILE:poa=COL``), else
    from the ``irradiance`` file (TMY3, PSM3 CSV/Parquet, RMIS); ``load``, ``gpu`` ({class: mapping}) and ``price``
    from the user's files; ``warmup_days`` of trace before ``start`` for the forecaster."""
    user = user_traces(traces_toml, pv_power=pv_power, load=load, gpu=gpu, price=price, gaps=gaps,
                       max_gap_h=max_gap_h, weather=weather)
    return build_site_trace(site, irradiance, gpu_trace, start=start, days=days, step_s=step_s,
                            history_days=warmup_days, user=user)


@dataclass
class Run:
    """One replay: its KPIs (the CLI's kpi.json) and its time series (one row per plant step)."""

    name: str
    kpis: dict[str, Any]
    series: pd.DataFrame
    result: Any = field(repr=False)  # sim.replay.ReplayResult (plant, loop counters, wall times)


def replay(site: SiteConfig, trace: SiteTrace, controller: str = "ours", *, perfect_foresight: bool = False,
           **options: Any) -> Run:
    """Run the production control loop against the plant over ``trace``. ``options`` are
    ``sim.replay.simulate``'s (``step_s``, ``plan_every_s``, ``soc0_pct``, ``pv_forecast``, ...)."""
    from powerctl.sim.kpi import compute_kpis
    from powerctl.sim.replay import simulate

    res = simulate(site, trace, controller=controller, perfect_foresight=perfect_foresight, **options)
    k = compute_kpis(res)
    k["run"] = {"config": site.site.id, "trace": trace.source, "start": str(trace.t0),
                "days": res.sim_s / 86400.0, "controller": controller, "perfect_foresight": perfect_foresight,
                "step_s": options.get("step_s", 60.0), "plan_every_s": options.get("plan_every_s", 300.0),
                "pv_forecast": "perfect" if perfect_foresight else options.get("pv_forecast", "live")}
    name = "ours_perfect" if perfect_foresight and controller == "ours" else controller
    return Run(name, k, res.series, res)


def compare(site: SiteConfig, trace: SiteTrace, controllers: tuple[str, ...] = ("ours", "rule", "static"),
            *, perfect_foresight: bool = True, **options: Any) -> dict[str, Run]:
    """The same trace under each controller (and the optimizer with perfect foresight, the bound)."""
    runs = {c: replay(site, trace, c, **options) for c in controllers}
    if perfect_foresight:
        runs["ours_perfect"] = replay(site, trace, "ours", perfect_foresight=True, **options)
    return runs


def kpi_table(runs: dict[str, Run]) -> pd.DataFrame:
    """Headline KPIs, one column per run (numbers only)."""
    return pd.DataFrame({n: {k: v for k, v in r.kpis.items() if isinstance(v, int | float)} for n, r in runs.items()})


def report(runs: dict[str, Run], out_dir: str | Path) -> Path:
    """compare.png, daily_energy.png and report.html (self-contained) for ``runs`` into ``out_dir``."""
    from powerctl.sim.kpi import compare_table, format_kpis
    from powerctl.sim.plots import html_report, plot_compare

    out = Path(out_dir)
    results = {n: r.kpis for n, r in runs.items()}
    pngs = plot_compare(results, {n: r.series for n, r in runs.items()}, out)
    table = compare_table(results)
    tables = {"Comparison": table, **{n: format_kpis(k) for n, k in results.items()}}
    return html_report("Controllers compared", tables, pngs, out / "report.html")


def sweep(site_path: str | Path, grid_path: str | Path, out_dir: str | Path = "sweep-out", *,
          workers: int = 2, days: float | None = None, scheduler: str | None = None) -> pd.DataFrame:
    """A sizing sweep on Dask (see ``sim/sweep.py``), ranked; re-running into ``out_dir`` skips the
    runs that already finished."""
    from powerctl.sim.sweep import run_sweep

    return run_sweep(site_path, grid_path, out_dir, workers=workers, days=days, scheduler=scheduler)
