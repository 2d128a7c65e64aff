"""Polling benchmark: 10 simulated devices of 60 points each on loopback.

The simulators run in a separate process (their own event loop and CPU time, like real devices);
this process runs the driver. One cycle = every device polled once, concurrently; the figure is
the wall time from the start of a cycle until every device's signals are in the process image.

    .venv/bin/python bench/modbus_poll.py [--devices 10] [--points 60] [--cycles 500]

Prints requests per cycle, p50/p99 cycle time, and the block plan of every shipped profile.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerctl.config import ModbusTcp
from powerctl.io.blocks import plan_blocks
from powerctl.io.modbus import ModbusDevice
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage
from powerctl.profiles import list_profiles, load_profile
from powerctl.profiles.model import Profile, parse_profile


def synthetic_profile(n_points: int) -> Profile:
    """A battery-like device: 2/3 16-bit points in one run, 1/3 int32 points after a gap."""
    n16 = (2 * n_points) // 3
    points: list[dict[str, Any]] = []
    for i in range(n16):
        points.append({"name": f"r{i}", "address": 100 + i, "type": "int16" if i % 2 else "uint16", "scale": 0.1})
    for j in range(n_points - n16):
        points.append({"name": f"d{j}", "address": 1000 + 2 * j, "type": "int32"})
    points[0].update({"unit": "%", "signal": "soc_pct"})
    points[n16].update({"unit": "W", "signal": "p_kw"})
    doc = {"vendor": "Bench", "model": f"{n_points} points", "nature": "battery", "points": points,
           "polling": {"max_registers": 125, "max_hole": 16}}
    return parse_profile(doc, "bench/synthetic", Path("bench/synthetic.yaml"))


def serve(ports: list[int], n_points: int, ready: Any) -> None:
    """Child process: one pymodbus server per device."""
    from powerctl.sim.devices import DeviceSimulator, SimServer

    async def main() -> None:
        profile = synthetic_profile(n_points)
        servers = []
        for k, port in enumerate(ports):
            sim = DeviceSimulator(profile, unit_id=1)
            sim.set_signal("soc_pct", 50 + k)
            sim.set_signal("p_kw", -1.5 * k)
            srv = SimServer([sim], port)
            await srv.start()
            servers.append(srv)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def run(n_devices: int, n_points: int, cycles: int, ports: list[int]) -> None:
    profile = synthetic_profile(n_points)
    image = ProcessImage()
    devs = []
    for k, port in enumerate(ports):
        name = f"dev{k}"
        for sig in SIGNALS[profile.nature]:
            image.declare(name, profile.nature, sig, 60)
        t = ModbusTcp(kind="modbus_tcp", host="127.0.0.1", port=port, unit_id=1, timeout_s=1.0)
        devs.append(ModbusDevice(name, profile, t, image))
    for _ in range(5):  # connect and warm up
        await asyncio.gather(*(d.poll_once() for d in devs))
    req0 = sum(d.stats.requests for d in devs)
    times_ms: list[float] = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        ok = await asyncio.gather(*(d.poll_once() for d in devs))
        times_ms.append((time.perf_counter() - t0) * 1000.0)
        assert all(ok), [d.stats.last_error for d in devs]
    reqs = (sum(d.stats.requests for d in devs) - req0) / cycles
    now = time.time()
    assert all(image.value(f"dev{k}", "soc_pct", now) == 50 + k for k in range(n_devices))
    for d in devs:
        d.close()
    print(f"devices: {n_devices}, points per device: {n_points}, cycles: {cycles}")
    print(f"requests per cycle: {reqs:.0f} ({reqs / n_devices:.0f} per device; {n_points} points merged into "
          f"{len(devs[0].blocks)} reads)")
    print(f"time to refresh all devices: p50 {statistics.median(times_ms):.2f} ms, p99 {pct(times_ms, 0.99):.2f} ms, "
          f"max {max(times_ms):.2f} ms (goal p99 < 20 ms)")


def library_table() -> None:
    print("\nblock plan of the shipped profiles (reads per poll):")
    for key in list_profiles():
        p = load_profile(key)
        if p.protocol != "modbus" or not p.points:
            continue
        blocks = plan_blocks(p.points, p.polling.max_registers, p.polling.max_hole)
        print(f"  {key:<24} {len(p.points):>3} points -> {len(blocks):>2} reads "
              f"(max_hole {p.polling.max_hole}, max_registers {p.polling.max_registers})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--cycles", type=int, default=500)
    args = ap.parse_args()
    ports = free_ports(args.devices)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=serve, args=(ports, args.points, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(60):
            raise SystemExit("simulators did not start")
        asyncio.run(run(args.devices, args.points, args.cycles, ports))
        library_table()
    finally:
        child.terminate()
        child.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
