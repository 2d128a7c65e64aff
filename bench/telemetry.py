"""Telemetry throughput and CPU share, against a VictoriaMetrics this script starts on loopback.

1. Sustained points/s: a producer emits points (3 fields, 20 devices) as fast as the writer drains
   them (it pauses while more than ``--max-buffered`` points wait), for ``--seconds``; we report
   points/s actually accepted by the server, fields/s, and the cost of ``emit`` per point
   (p50/p99 over 1000-point chunks). Goal (issue 6): >= 50k points/s.
2. CPU share at 1 Hz for a 20-device site: per second, one point per device (5 fields) plus the
   site, plan, GPU-class and event points the daemon emits; process CPU time / wall time while
   Telemetry.run writes to VictoriaMetrics. Goal: < 2 % of one core.

    .venv/bin/python bench/telemetry.py [--seconds 10] [--site-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerctl.config import Influx
from powerctl.config import Telemetry as TelemetryCfg
from powerctl.telemetry import Telemetry
from tests.servers import VictoriaMetrics


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def make_tel(vm: VictoriaMetrics, spool: Path, batch_size: int = 5000) -> Telemetry:
    cfg = TelemetryCfg(influx=Influx(url=vm.url, org="bench", bucket="bench", spool_dir=str(spool),
                                     batch_size=batch_size, flush_interval_s=0.2))
    return Telemetry(cfg, "bench", "m1", spool.parent)


async def _stop(task: asyncio.Task[None], tel: Telemetry) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    tel.close()


async def throughput(vm: VictoriaMetrics, tmp: Path, seconds: float, max_buffered: int) -> None:
    tel = make_tel(vm, tmp / "spool-tp")
    task = asyncio.create_task(tel.run())
    t0_s = 1_700_000_000.0
    k = 0
    emit_us: list[float] = []
    start = time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - start < seconds:
        if tel.stats()["buffered"] > max_buffered:
            await asyncio.sleep(0.001)
            continue
        c0 = time.perf_counter()
        for _ in range(50):
            ts = t0_s + k * 0.001
            for d in range(20):
                tel.emit("pv", {"p_kw": 12.5 + d, "e_kwh": 1234.5 + k, "state": 4}, ts, device=f"inv{d:02d}")
            k += 1
        emit_us.append((time.perf_counter() - c0) / 1000 * 1e6)
        await asyncio.sleep(0)
    await tel.flush()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    st = tel.stats()
    await _stop(task, tel)
    print(f"sustained write: {st['written']:,} points in {elapsed:.1f} s = {st['written'] / elapsed:,.0f} points/s "
          f"({3 * st['written'] / elapsed:,.0f} fields/s); spooled {st['spooled']}, dropped {st['dropped']}")
    print(f"  emit() per point: p50 {pct(emit_us, 50):.2f} us, p99 {pct(emit_us, 99):.2f} us; "
          f"client process CPU {cpu / elapsed * 100:.0f} % of one core while writing")
    print(f"  goal >= 50,000 points/s: ratio {st['written'] / elapsed / 50_000:.2f}")


async def site_share(vm: VictoriaMetrics, tmp: Path, seconds: float) -> None:
    tel = make_tel(vm, tmp / "spool-site")
    task = asyncio.create_task(tel.run())
    await asyncio.sleep(0.5)
    natures = ["pv"] * 8 + ["battery"] * 4 + ["genset"] * 2 + ["meter"] * 6
    start = time.perf_counter()
    cpu0 = time.process_time()
    cycles = 0
    cycle_us: list[float] = []
    while time.perf_counter() - start < seconds:
        now = time.time()
        c0 = time.perf_counter()
        for d, nature in enumerate(natures):
            tel.emit(nature, {"p_kw": 10.0 + d, "e_kwh": 1000.0 + cycles, "soc_pct": 55.5, "state": 3,
                              "max_discharge_kw": 50.0}, now, device=f"{nature}{d:02d}")
        tel.emit("site", {"mode": "auto", "stale_signals": 0, "caps_w_mean": 250.0, "guard_cuts": 0,
                          "available_kw": 180.0, "solve_ms": 12.0}, now)
        tel.emit("plan", {"solve_ms": 12.0, "rung": "primary", "status": "optimal", "battery_kw": 5.0,
                          "genset_kw": 0.0, "gpu_kw": 150.0, "pv_kw": 120.0, "unserved_kw": 0.0}, now)
        for cls in ("train", "infer"):
            tel.emit("gpu", {"budget_kw": 75.0}, now, device="gpu", tags={"class": cls})
        tel.emit("gpu", {"p_kw": 148.0, "cap_kw": 160.0}, now, device="gpu")
        cycle_us.append((time.perf_counter() - c0) * 1e6)
        cycles += 1
        await asyncio.sleep(max(0.0, start + cycles - time.perf_counter()))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    await tel.flush()
    st = tel.stats()
    await _stop(task, tel)
    share = cpu / elapsed * 100
    print(f"1 Hz site, 20 devices ({st['emitted'] // max(cycles, 1)} points/cycle, {cycles} cycles): "
          f"telemetry CPU {share:.2f} % of one core (process CPU {cpu * 1000:.0f} ms over {elapsed:.1f} s); "
          f"emit per cycle p50 {pct(cycle_us, 50):.0f} us, p99 {pct(cycle_us, 99):.0f} us; written {st['written']}")
    print(f"  goal < 2 %: ratio {share / 2:.2f}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--site-seconds", type=float, default=20.0)
    ap.add_argument("--max-buffered", type=int, default=50_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d, VictoriaMetrics(Path(d) / "vm", dedup=False) as vm:
        await throughput(vm, Path(d), args.seconds, args.max_buffered)
        await site_share(vm, Path(d), args.site_seconds)


if __name__ == "__main__":
    asyncio.run(main())
