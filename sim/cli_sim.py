"""``powerctl sim serve``, ``sim replay`` and ``sim sweep``: a typer sub-app the main CLI mounts.

``register(sim_app)`` adds the three commands to the ``sim`` Typer group of ``powerctl/cli.py``,
which mounts them only when ``powerctl sim ...`` is run (the edge daemon never loads the simulator). Bad input (config,
trace, grid file) exits 2 with a message naming the file, field and problem, never a traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from powerctl.config import ConfigError
from powerctl.sim.sweep import SweepError
from powerctl.sim.traces.loaders import TraceError
from powerctl.sim.traces.site_trace import DATA_DIR
from powerctl.sim.traces.user import UserTraces, user_traces

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

_TMY3 = DATA_DIR / "pv_irradiance/pvlib_723170TYA_greensboro_tmy3.csv"
_AZURE = DATA_DIR / "gpu_load/azure_llm_inference_trace_2023_code.csv"


def _fail(kind: str, exc: Exception) -> None:
    err.print(f"[bold red]{kind}[/]\n{exc}", highlight=False)
    raise typer.Exit(2) from None


class _Refused(Exception):
    """The simulator cannot serve this site (taken port, unencodable nameplate, a crash)."""


def serve(
    config: Path,
    time_scale: float = typer.Option(20.0, help="simulated PV day speed-up (1 = real time)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the site's devices from a simulated plant over Modbus TCP (hardware in the loop)."""
    import asyncio
    import time

    from powerctl.cli import _load_site, _logging, _until_signal
    from powerctl.sim.encodable import nameplate_problems
    from powerctl.sim.plant.site import Plant
    from powerctl.sim.serve import SimSite

    cfg = _load_site(config)
    _logging(verbose)

    async def main(stop: asyncio.Event) -> None:
        site = SimSite(cfg, Plant(cfg, t0_s=time.time(), time_scale=time_scale))
        problems = nameplate_problems(cfg, site.sims)
        if problems:
            raise _Refused("\n".join(f"{config}: {p}" for p in problems))
        agents = None
        if cfg.gpu.backend == "agents":  # the plant's GPU servers as node agents (sim/agents.py)
            from powerctl.sim.agents import PlantAgents

            agents = PlantAgents(cfg, site.plant)
            await asyncio.to_thread(agents.start)
        task = asyncio.create_task(site.run(time.time))
        stopper = asyncio.create_task(stop.wait())
        try:
            # say "serving" only once every port listens; a simulator that fails (a taken port, a
            # value its registers cannot carry) ends the command with its reason, never silently
            while not site.listening and not task.done():  # noqa: ASYNC110 (a flag set by start())
                await asyncio.sleep(0.05)
            if site.listening:
                print(f"serving {len(site.sims)} simulated devices"
                      + (f" and {len(agents.servers)} GPU node agents" if agents else "") + "; Ctrl-C to stop",
                      flush=True)
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise _Refused(f"simulator stopped: {task.exception()}")
        finally:
            stopper.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if agents is not None:
                await asyncio.to_thread(agents.stop)

    try:
        asyncio.run(_until_signal(main))
    except _Refused as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from None


def replay(
    config: Path = typer.Argument(..., help="site TOML"),
    trace: Path = typer.Option(_TMY3, help="irradiance file: TMY3, NSRDB PSM3 or RMIS CSV"),
    gpu_trace: str = typer.Option(
        str(_AZURE), help="Azure LLM request trace for the inference class, or 'none'"
    ),
    days: float = typer.Option(7.0, help="simulated days"),
    start: str = typer.Option("06-01", help="first day (MM-DD in the weather year, or ISO time)"),
    out_dir: Path = typer.Option(Path("replay-out"), "--out", help="output folder"),
    controller: str = typer.Option(
        "ours", help="ours | rule | static | compare (all three + perfect foresight)"
    ),
    perfect_foresight: bool = typer.Option(
        False, "--perfect-foresight", help="forecasts = the future (upper bound)"
    ),
    pv_forecast: str = typer.Option("live", help="live (the daemon's forecaster) | clearsky | persistence | provided"),
    step_s: float = typer.Option(60.0, help="plant step, simulated seconds"),
    plan_every_s: float = typer.Option(300.0, help="planner period, simulated seconds"),
    soc0_pct: float = typer.Option(50.0, help="initial state of charge"),
    static_cap_w: float = typer.Option(None, help="per-GPU cap of the static controller (default: safe cap)"),
    solve_deadline_s: float = typer.Option(None, help="planner deadline in wall seconds (default: config)"),
    grid_outages_per_day: float = typer.Option(0.0, help="random grid outages per day (grid-tied sites)"),
    grid_seed: int = typer.Option(0, help="seed of the random grid outages"),
    no_plots: bool = typer.Option(False, "--no-plots"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    pv_power: str = typer.Option(None, "--pv-power", help="measured PV AC power: FILE:column=NAME,unit=W"
                                 "[,tz=ZONE,clock=ZONE,sign=-1,scale=1,time=COL,label=start|end|instant]"),
    weather: str = typer.Option(None, "--weather", help="your irradiance: FILE:ghi=COL[,dni=COL,dhi=COL] or "
                                "FILE:poa=COL [,temp_air=COL,unit=W/m2,tz=ZONE,...]"),
    pv_forecast_file: str = typer.Option(None, "--pv-forecast-file", help="PV forecast issued before the run "
                                         "(for --pv-forecast provided): FILE:column=NAME,unit=kW,..."),
    load: str = typer.Option(None, "--load", help="site load besides the GPUs: FILE:column=NAME,unit=kW,..."),
    gpu_demand: list[str] = typer.Option(None, "--gpu-demand",
                                         help="CLASS=FILE:column=NAME,unit=W|% (W per GPU or utilisation)"),
    price: str = typer.Option(None, "--price", help="grid price per kWh: FILE:column=NAME,unit=1"),
    traces_toml: Path = typer.Option(None, "--traces", help="traces TOML ([pv_power], [load], [gpu.CLASS], ...)"),
    gaps: str = typer.Option(None, "--gaps", help="gap policy: interpolate | zero | refuse (default interpolate)"),
    max_gap_h: float = typer.Option(None, "--max-gap-h", help="longest gap filled, hours (default 3)"),
    warmup_days: float = typer.Option(1.0, "--warmup-days", help="trace kept before --start for the forecaster"),
) -> None:
    """Replay the controller against the simulated plant on a trace; write KPIs, Parquet and plots."""
    from powerctl.sim.kpi import compare_table, format_kpis
    from powerctl.sim.replay import CONTROLLERS, run_replay

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        user = _user_traces(traces_toml, pv_power, load, gpu_demand, price, gaps, max_gap_h, weather,
                            pv_forecast_file)
    except TraceError as exc:
        _fail("trace error", exc)
    runs: list[tuple[str, str, bool]]
    if controller == "compare":
        runs = [(c, c, False) for c in CONTROLLERS] + [("ours_perfect", "ours", True)]
    elif controller in CONTROLLERS:
        runs = [(controller, controller, perfect_foresight)]
    else:
        err.print(
            f"[bold red]bad option[/] --controller {controller!r}: choose ours, rule, static or compare"
        )
        raise typer.Exit(2)
    results = {}
    for name, ctrl, pf in runs:
        dest = out_dir / name if len(runs) > 1 else out_dir
        try:
            k = run_replay(
                config,
                trace,
                days,
                dest,
                ctrl,
                pf,
                gpu_trace=None if gpu_trace.lower() == "none" else gpu_trace,
                start=start,
                step_s=step_s,
                plan_every_s=plan_every_s,
                pv_forecast=pv_forecast,
                soc0_pct=soc0_pct,
                static_cap_w=static_cap_w,
                solve_deadline_s=solve_deadline_s,
                show_progress=not quiet,
                plots=not no_plots,
                grid_outages_per_day=grid_outages_per_day,
                grid_seed=grid_seed,
                user=user,
                warmup_days=warmup_days,
            )
        except ConfigError as exc:
            _fail("config error", exc)
        except TraceError as exc:
            _fail("trace error", exc)
        except ValueError as exc:
            _fail("bad option", exc)
        results[name] = k
        out.print(format_kpis(k), highlight=False)
        out.print(f"  written to {dest}/ (kpi.json, kpi.txt, series.parquet, *.png, report.html)", highlight=False)
    if len(results) > 1:
        table = compare_table(results)
        (out_dir / "compare.txt").write_text(table + "\n")
        (out_dir / "compare.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        out.print(table, highlight=False)
        if not no_plots:
            report = _compare_report(results, out_dir, table)
            out.print(f"  comparison: {out_dir}/compare.png, daily_energy.png; report: {report}", highlight=False)


def _compare_report(results: dict, out_dir: Path, table: str) -> Path:
    """compare.png, daily_energy.png and one self-contained report.html for ``--controller compare``."""
    import pandas as pd

    from powerctl.sim.kpi import format_kpis
    from powerctl.sim.plots import html_report, plot_compare

    series = {n: pd.read_parquet(out_dir / n / "series.parquet") for n in results}
    pngs = plot_compare(results, series, out_dir)
    for n in results:  # each controller's power stack and GPU budget under the comparison
        pngs += [out_dir / n / "power_stack.png", out_dir / n / "gpu_budget.png"]
    tables = {"Comparison": table, **{n: format_kpis(k) for n, k in results.items()}}
    return html_report("Controllers compared", tables, pngs, out_dir / "report.html")


def _user_traces(toml: Path | None, pv_power: str | None, load: str | None, gpu: list[str] | None,
                 price: str | None, gaps: str | None, max_gap_h: float | None,
                 weather: str | None = None, pv_forecast: str | None = None) -> UserTraces | None:
    """The user's trace files: the TOML first, then the command-line mappings over it."""
    if not any((toml, pv_power, weather, load, gpu, price, gaps, max_gap_h is not None, pv_forecast)):
        return None
    by_class = {}
    for spec in gpu or []:
        cls, eq, rest = spec.partition("=")
        if not eq:
            raise TraceError(f"--gpu-demand {spec!r}: write CLASS=FILE:column=NAME,unit=W")
        by_class[cls] = rest
    return user_traces(toml, pv_power=pv_power, load=load, gpu=by_class, price=price, gaps=gaps,
                       max_gap_h=max_gap_h, weather=weather, pv_forecast=pv_forecast)


def sweep(
    config: Path = typer.Argument(..., help="site TOML (the base the grid varies)"),
    grid: Path = typer.Option(..., "--grid", help="grid TOML (see examples/sweep.toml)"),
    out_dir: Path = typer.Option(Path("sweep-out"), "--out"),
    scheduler: str = typer.Option(
        None, help="existing dask scheduler, e.g. tcp://127.0.0.1:8786 (default: local cluster)"
    ),
    workers: int = typer.Option(2, help="local cluster worker processes"),
    days: float = typer.Option(None, help="override sweep.days"),
) -> None:
    """Replay a grid of sizes x controllers on Dask and rank them by a KPI."""
    from rich.progress import Progress

    from powerctl.sim.sweep import run_sweep

    try:
        with Progress(transient=True) as prog:
            task = prog.add_task("sweep", total=None)

            def tick(i: int, n: int) -> None:
                prog.update(task, completed=i, total=n)

            df = run_sweep(
                config, grid, out_dir, scheduler=scheduler, workers=workers, days=days, on_result=tick
            )
    except ConfigError as exc:
        _fail("config error", exc)
    except (SweepError, TraceError) as exc:
        _fail("sweep error", exc)
    cols = [
        c for c in ["rank", "label", "net_value", "value_minus_fuel", "fuel_cost", "unserved_kwh"] if c in df
    ]
    out.print(df[cols].head(20).to_string(index=False), highlight=False)
    out.print(f"{len(df)} configurations -> {out_dir}/sweep.parquet, sweep.csv, sweep.png", highlight=False)


def register(sim_app: typer.Typer) -> None:
    """Add ``serve``, ``replay`` and ``sweep`` to the ``powerctl sim`` group."""
    sim_app.command("serve")(serve)
    sim_app.command("replay")(replay)
    sim_app.command("sweep")(sweep)


app = typer.Typer(no_args_is_help=True, help="Replay and sweeps (also mounted as `powerctl sim`).")
register(app)
