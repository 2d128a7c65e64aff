"""``powerctl demo``: the simulated site and the daemon in one process, with a live table.

Part of the simulator (``pip install 'powerctl[sim]'``), never imported by the edge daemon.

The plant (PV day with a passing cloud, battery, genset, GPUs) is served as Modbus TCP devices on
127.0.0.1 from the same profiles the daemon reads; the daemon polls them over real sockets, plans,
writes the battery setpoint and genset commands over Modbus, and caps the plant's GPUs through a
GPU backend bound to the plant. Telemetry goes to the line-protocol file of the config.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import numpy as np
from rich.live import Live
from rich.table import Table

from powerctl.config import Http, SiteConfig
from powerctl.daemon import Daemon, Status
from powerctl.forecast import make_forecaster
from powerctl.natures import Nature
from powerctl.sim.encodable import nameplate_problems
from powerctl.web.server import PortInUse

DEMO_START_HOUR = 11.0
# The battery starts near its floor, so energy is scarce and the GPU budget follows the sun (and
# the cloud) instead of being carried by a full battery.
DEMO_SOC0_PCT = 15.0
DEMO_HTTP_PORT = 8780  # the status page of `make run`
PLAIN_EVERY_S = 10.0  # without a terminal: one status line per 10 s


def _kwp(cfg: SiteConfig) -> float:
    return sum(d.limits.kwp for d in cfg.by_nature(Nature.PV))


def status_table(st: Status, t_sim_h: float | None = None) -> Table:
    """The live table: one row per quantity, so it fits an 80-column terminal."""

    def f(v: float | None, unit: str, fmt: str = "{:.1f}") -> str:
        return "n/a" if v is None else fmt.format(v) + " " + unit

    title = "powerctl demo site"
    if t_sim_h is not None:
        title += f"  (simulated {int(t_sim_h):02d}:{int(t_sim_h % 1 * 60):02d})"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    gen = f(st.genset_kw, "kW") + ("" if st.genset_running is None else (" (on)" if st.genset_running else " (off)"))
    solve = "n/a" if st.last_solve_ms is None else f"{st.last_solve_ms:.0f} ms ({st.plan_rung})"
    rows = [
        ("PV", f(st.pv_kw, "kW")),
        ("battery SoC", f(st.soc_pct, "%")),
        ("battery power (+ = discharge)", f(st.battery_kw, "kW")),
        ("genset", gen),
        ("GPU power", f(st.gpu_kw, "kW")),
        *((f"GPU budget {name}", f(kw, "kW")) for name, kw in st.gpu_budget_kw.items()),
        ("GPU caps min / mean / max", f"{st.caps_w_min:.0f} / {st.caps_w_mean:.0f} / {st.caps_w_max:.0f} W"),
        ("supply available (guard)", f(st.available_kw, "kW")),
        ("last solve", solve),
        ("mode", st.mode),
    ]
    for k, v in rows:
        table.add_row(k, v)
    table.caption = (
        f"cycles {st.cycles}  guard cuts {st.guard_cuts}  stale signals {len(st.stale)}  "
        f"write errors {st.write_errors}"
    )
    return table


async def run_demo(cfg: SiteConfig, *, seconds: float, time_scale: float = 20.0, plain: bool = False,
                   http_port: int = DEMO_HTTP_PORT, plain_every_s: float = PLAIN_EVERY_S) -> int:
    from powerctl.sim.plant.pv import demo_pv_kw_fn
    from powerctl.sim.plant.site import Plant
    from powerctl.sim.serve import SimSite

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # The plant's GPUs sit on eight-GPU servers, each behind its own node agent (mutual TLS, leases,
    # sim/agents.py): the daemon caps them through the agents, as on a real module.
    from powerctl.sim.agents import PlantAgents, demo_agents

    pki = tempfile.TemporaryDirectory(prefix="powerctl-demo-pki-")
    cfg = demo_agents(cfg, Path(pki.name))
    t0 = time.time()
    plant = Plant(
        cfg,
        pv_kw_fn=demo_pv_kw_fn(_kwp(cfg), time_scale=time_scale, start_hour=DEMO_START_HOUR, t0_s=t0),
        t0_s=t0,
        soc0_pct=DEMO_SOC0_PCT,
    )
    site = SimSite(cfg, plant)
    problems = nameplate_problems(cfg, site.sims)
    if problems:
        print("demo: " + "\n".join(problems), file=sys.stderr)
        pki.cleanup()
        return 1
    if cfg.http is None:  # the status page shows the demo live (README "Status page and HTTP API")
        cfg = cfg.model_copy(update={"http": Http(port=http_port)})
    live: Live | None = None
    last_plain = [0.0]

    def sim_hour() -> float:
        # the demo PV day starts at 11:00 simulated time and runs ``time_scale`` x faster
        return (DEMO_START_HOUR + (time.time() - t0) * time_scale / 3600.0) % 24.0

    # The forecaster knows the simulated sun's clear sky (not the cloud): pvlib's sun for the
    # real date would say "night" while the demo's sun shines.
    clear = demo_pv_kw_fn(plant.kwp_total, time_scale=time_scale, start_hour=DEMO_START_HOUR, t0_s=t0, cloud_depth=0.0)
    shares = [pv.kwp / plant.kwp_total for pv in plant.pvs.values()]
    def clear_kw(share: float) -> Callable[[np.ndarray], np.ndarray]:
        return lambda ts: np.array([clear(float(t)) * share for t in np.atleast_1d(ts)], dtype=float)

    forecaster = make_forecaster(cfg, clear_kw_fns=[clear_kw(k) for k in shares])

    def on_cycle(st: Status) -> None:
        if live is not None:
            live.update(status_table(st, sim_hour()))
        elif time.monotonic() - last_plain[0] >= plain_every_s:  # not a line a second into a log
            last_plain[0] = time.monotonic()
            print(f"{sim_hour():5.2f}h " + daemon.status_line(), flush=True)

    agents = PlantAgents(cfg, plant)
    agents.start()
    daemon = Daemon(cfg, forecaster=forecaster, on_cycle=on_cycle)  # gpu.backend = "agents"
    site_task = asyncio.create_task(site.run(time.time, tick_s=0.1))
    stop = asyncio.Event()
    # the simulated devices must listen on their own ports before the daemon polls them: a taken
    # port (another demo?) is a clear error, never another process's plant
    while not site.listening and not site_task.done():  # noqa: ASYNC110 (a flag set by start())
        await asyncio.sleep(0.05)
    site_task.add_done_callback(lambda _t: stop.set())  # a crashed simulator ends the demo
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError):
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    loop.call_later(seconds, stop.set)
    failed = ""
    try:
        if site_task.done():
            failed = f"simulated site: {site_task.exception()}"
        else:
            assert cfg.http is not None
            print(f"status page: http://{cfg.http.listen}:{cfg.http.port}/  (API /api/state, metrics /metrics)", flush=True)
            if plain:
                await daemon.run(stop)
            else:
                with Live(status_table(daemon.status), refresh_per_second=4) as lv:
                    live = lv
                    await daemon.run(stop)
            if site_task.done() and not site_task.cancelled() and site_task.exception() is not None:
                failed = f"simulated site stopped: {site_task.exception()}"
    except PortInUse as exc:
        failed = str(exc)
    finally:
        site_task.cancel()
        await asyncio.gather(site_task, return_exceptions=True)
        close = getattr(daemon.gpu, "close", None)
        if callable(close):
            close()
        agents.stop()
        pki.cleanup()
    if failed:
        print(f"demo: {failed}", file=sys.stderr)
        return 1
    print(
        f"demo done: {daemon.status.cycles} cycles, {daemon.status.guard_cuts} guard cuts, "
        f"GPUs left at the safe cap ({cfg.gpu.safe_cap_w:.0f} W); telemetry in {cfg.telemetry.file}"
    )
    return 0
