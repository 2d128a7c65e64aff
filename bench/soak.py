"""Soak: the daemon against the simulated demo site at 10x its normal cadence, for a long time.

The demo site (examples/demo-site.toml: PV, battery, genset as Modbus TCP simulators on 127.0.0.1,
128 simulated GPUs) with every control period divided by ``--speedup``
(default 10: guard 0.02 s, dispatch 0.1 s, planner 0.5 s; device polls stay at 0.5-1 s). The plant's PV day
runs ``--time-scale`` x faster (clouds pass, the genset starts and stops). Prints, per sample:
RSS, dispatch cycles, cycle-time p50/p99/max, missed cycles, guard rate, last solve; then a summary
with RSS growth after warm-up. Goal (issue 8): RSS flat (< 5 % growth after warm-up), no missed
cycles.

A missed cycle: a dispatch period in which no cycle started (gap between cycle starts of k
periods, k >= 2, counts k - 1). Cycle time is the dispatcher's processing time per cycle
(``Daemon.status.cycle_ms``), excluding its sleep.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 120   # longer
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import tracemalloc
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from powerctl.config import SiteConfig, load_config  # noqa: E402
from powerctl.daemon import Daemon, Status  # noqa: E402
from powerctl.sim.plant.site import Plant  # noqa: E402
from powerctl.sim.serve import PlantGpus, SimSite  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def soak_config(work: Path, speedup: float) -> SiteConfig:
    """The demo site on free ports, state under ``work``, control periods divided by ``speedup``
(device poll periods stay as configured: the devices do not get faster)."""
    text = (ROOT / "examples" / "demo-site.toml").read_text()
    for port in (15020, 15021, 15022):
        text = text.replace(f"port = {port}", f"port = {free_port()}")
    text = text.replace('"run/', f'"{work}/run/')
    path = work / "site.toml"
    path.write_text(text)
    cfg = load_config(path)
    c = cfg.control
    control = c.model_copy(update={
        "guard_period_s": c.guard_period_s / speedup,
        "dispatch_period_s": c.dispatch_period_s / speedup,
        "mpc_period_s": c.mpc_period_s / speedup,
    })
    return cfg.model_copy(update={"control": control})


class WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def type_counts() -> Counter[str]:
    """Live container objects by type (what gc tracks): a cheap look for what accumulates."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else math.nan


async def soak(minutes: float, speedup: float, sample_s: float, warmup_frac: float, time_scale: float, keep: bool,
               objects: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="powerctl-soak-"))
    cfg = soak_config(work, speedup)
    period = cfg.control.dispatch_period_s
    logging.basicConfig(level=logging.WARNING, filename=str(work / "soak.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    warnings = WarningCount()
    logging.getLogger().addHandler(warnings)

    plant = Plant(cfg, t0_s=time.time(), time_scale=time_scale, soc0_pct=60.0)
    site = SimSite(cfg, plant)
    starts = array("d")  # monotonic start of every dispatch cycle
    cycle_ms = array("d")

    def on_cycle(st: Status) -> None:
        now = time.monotonic()
        ms = st.cycle_ms[-1] if st.cycle_ms else 0.0
        starts.append(now - ms / 1000.0)
        cycle_ms.append(ms)

    daemon = Daemon(cfg, gpu_backend=PlantGpus(plant), on_cycle=on_cycle)
    proc = psutil.Process()
    site_task = asyncio.create_task(site.run(time.time, tick_s=min(0.1, period)))
    await asyncio.sleep(0.5)
    stop = asyncio.Event()
    run_task = asyncio.create_task(daemon.run(stop))

    c = cfg.control
    print(f"soak: {minutes:g} min, demo site ({cfg.gpu.count} GPUs, {len(cfg.devices)} Modbus devices on 127.0.0.1), "
          f"cadence x{speedup:g}: guard {c.guard_period_s:g} s, dispatch {period:g} s, planner {c.mpc_period_s:g} s, "
          f"polls {', '.join(f'{d.poll_period_s:g}' for d in cfg.devices)} s; PV day x{time_scale:g}", flush=True)
    print(f"{'t_min':>6} {'rss_mb':>7} {'cycles':>7} {'p50_ms':>7} {'p99_ms':>7} {'max_ms':>7} {'missed':>6} "
          f"{'guard_hz':>8} {'solve_ms':>8} {'rung':>9} {'warn':>5} {'load1':>5}", flush=True)
    t0 = time.monotonic()
    end = t0 + minutes * 60.0
    samples: list[tuple[float, float]] = []  # (t_s, rss_mb)
    last_i, last_guard, last_t = 0, 0, t0
    missed_total = 0
    snap0: tracemalloc.Snapshot | None = None
    types0: Counter[str] | None = None
    while time.monotonic() < end and not run_task.done():
        await asyncio.sleep(min(sample_s, max(0.0, end - time.monotonic())))
        now = time.monotonic()
        if snap0 is None and now - t0 >= warmup_frac * minutes * 60.0:
            if tracemalloc.is_tracing():
                snap0 = tracemalloc.take_snapshot()
            if objects:
                types0 = type_counts()
        rss_mb = proc.memory_info().rss / 2**20
        samples.append((now - t0, rss_mb))
        n = len(cycle_ms)
        # copies: a numpy view would pin the arrays' buffers and stop them growing
        win = np.array(cycle_ms[last_i:n], dtype=float)
        st_w = np.array(starts[max(0, last_i - 1):n], dtype=float)
        gaps = np.diff(st_w)
        missed = int(np.maximum(np.rint(gaps / period) - 1, 0).sum()) if gaps.size else 0
        missed_total += missed
        st = daemon.status
        guard_hz = (st.guard_cycles - last_guard) / (now - last_t)
        solve = f"{st.last_solve_ms:.0f}" if st.last_solve_ms is not None else "n/a"
        print(f"{(now - t0) / 60:6.1f} {rss_mb:7.1f} {n:7d} {pct(win, 50):7.2f} {pct(win, 99):7.2f} "
              f"{(win.max() if win.size else math.nan):7.2f} {missed:6d} {guard_hz:8.1f} {solve:>8} "
              f"{st.plan_rung or '-':>9} {warnings.n:5d} {os.getloadavg()[0]:5.1f}", flush=True)
        last_i, last_guard, last_t = n, st.guard_cycles, now

    stop.set()
    stop_t0 = time.monotonic()
    done, _ = await asyncio.wait({run_task}, timeout=30.0)
    stop_s = time.monotonic() - stop_t0
    hung = not done
    if hung:  # a clean stop must not hang: show where every task is waiting, then give up on it
        print("\nthe daemon did not stop within 30 s of its stop event; pending tasks:")
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(f"--- {task.get_name()}")
                task.print_stack(limit=6, file=sys.stdout)
        run_task.cancel()  # and do not wait for it again: main() exits without joining the worker thread
    site_task.cancel()
    await asyncio.gather(site_task, return_exceptions=True)
    elapsed = time.monotonic() - t0

    all_ms = np.array(cycle_ms, dtype=float)
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = t >= warmup_frac * elapsed
    after_t, after_rss = t[warm], rss[warm]
    if after_rss.size >= 2:
        base, last = float(after_rss[0]), float(after_rss[-1])
        growth_pct = 100.0 * (last - base) / base
        slope_mb_h = float(np.polyfit(after_t / 3600.0, after_rss, 1)[0])
    else:
        base = last = growth_pct = slope_mb_h = math.nan
    expected = int(elapsed / period)
    crashed = not hung and not run_task.cancelled() and run_task.exception() is not None
    ok = growth_pct < 5.0 and missed_total == 0 and not crashed and not hung
    print(f"\nsummary after {elapsed / 60:.1f} min: {len(all_ms)} dispatch cycles (period {period:g} s: ~{expected} "
          f"expected), missed {missed_total}; cycle time p50 {pct(all_ms, 50):.2f} ms, p99 {pct(all_ms, 99):.2f} ms, "
          f"p99.9 {pct(all_ms, 99.9):.2f} ms, max {(all_ms.max() if all_ms.size else math.nan):.2f} ms; "
          f"guard cycles {daemon.status.guard_cycles} ({daemon.status.guard_cycles / elapsed:.1f}/s, "
          f"{daemon.status.guard_cuts} cuts); write errors {daemon.status.write_errors}; warnings logged {warnings.n}; "
          f"host load average (1/5/15 min) {' / '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"RSS: start {rss[0]:.1f} MB, after warm-up ({warmup_frac:.0%} of the run) {base:.1f} MB, end {last:.1f} MB: "
          f"growth {growth_pct:+.2f} % ({slope_mb_h:+.2f} MB/h fitted); peak {rss.max():.1f} MB")
    print(f"stop: {'HUNG (see above)' if hung else f'clean in {stop_s:.2f} s (GPUs to the safe cap)'}")
    print(f"goal: RSS growth < 5 % after warm-up and no missed cycles: {'MET' if ok else 'NOT MET'}")
    if crashed:
        print(f"daemon ended with {run_task.exception()!r}")  # type: ignore[union-attr]
    if types0 is not None:
        grown = (type_counts() - types0).most_common(12)
        print("\nobjects: types whose count grew after warm-up: " + (", ".join(f"{k} +{v}" for k, v in grown) or "none"))
    if snap0 is not None:
        print("\ntracemalloc: top allocation growth after warm-up (file:line, size diff, count diff)")
        for stat in tracemalloc.take_snapshot().compare_to(snap0, "lineno")[:15]:
            print(f"  {stat.traceback[0]}: {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
    if keep or hung:
        print(f"state, telemetry and log kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if hung:
        sys.stdout.flush()
        os._exit(3)  # a worker thread is still busy; joining it could take forever
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--speedup", type=float, default=10.0, help="divide the guard, dispatch and planner periods by this")
    ap.add_argument("--sample-s", type=float, default=None, help="seconds between rows (default: minutes x 2 s)")
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the run counted as warm-up")
    ap.add_argument("--time-scale", type=float, default=20.0, help="simulated PV day speed-up")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (telemetry, log)")
    ap.add_argument("--objects", action="store_true", help="diagnose growth: object counts by type after warm-up vs end")
    ap.add_argument("--tracemalloc", action="store_true", help="diagnose growth: where memory grew after warm-up (slow)")
    a = ap.parse_args()
    if a.tracemalloc:
        tracemalloc.start(1)
    sample_s = a.sample_s if a.sample_s is not None else max(5.0, a.minutes * 2.0)
    raise SystemExit(asyncio.run(soak(a.minutes, a.speedup, sample_s, a.warmup, a.time_scale, a.keep, a.objects)))


if __name__ == "__main__":
    main()
