"""Guard over a fleet of node agents: from a supply drop being measured to every node's new cap
read back, over real mutual TLS on loopback.

N agents (simulated GPUs, ``--gpus`` each; ``--per-process`` agents share one process, see
bench/agent_host.py) and, in this process, the guard core and the ``agents`` backend the daemon
uses. Each drop: PV falls (30-60 %) -> process image -> read GPU power -> Guard.evaluate ->
``set_caps_w`` to every node at once -> every node's read-back of its new caps. Between drops the
supply comes back and the caps rise again (not measured). Lease renewals run in the background
as in the daemon.

    .venv/bin/python bench/guard_fleet.py [--agents 64] [--gpus 8] [--drops 200] [--per-process 1]
        [--node-timeout-s 0.15]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerctl.config import parse_config
from powerctl.control.guard import Guard
from powerctl.control.split import slots_from_pool
from powerctl.gpu.agents import AgentGpus
from powerctl.gpu_io import read_gpu_power_w
from powerctl.sim.agents import free_ports
from tests.agent.fleet import Fleet, make_fleet
from tests.gpu.site import image_for, site_dict

ROOT = Path(__file__).resolve().parents[1]


def start_hosts(fleet: Fleet, per_process: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    groups = [fleet.agents[i:i + per_process] for i in range(0, len(fleet.agents), per_process)]
    logs = []
    for k, group in enumerate(groups):
        log = tmp / f"host-{k:03d}.log"
        with open(log, "wb") as out:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "agent_host.py"),
                                           *[str(a.config) for a in group]], stdout=out, stderr=subprocess.STDOUT))
        logs.append((log, len(group)))
    deadline = time.monotonic() + 60 + 3 * len(groups)
    for (log, n), p in zip(logs, procs, strict=True):
        while log.read_text().count("listening on port") < n:
            if p.poll() is not None or time.monotonic() > deadline:
                stop_hosts(procs)
                raise SystemExit(f"agent host did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    return procs


def cpu_s(procs: list[subprocess.Popen[bytes]]) -> tuple[float, float]:
    """CPU seconds (user + system) so far: this process (the controller), the agent hosts."""
    def used(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    return used(psutil.Process()), sum(used(psutil.Process(p.pid)) for p in procs)


def stop_hosts(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--drops", type=int, default=200)
    ap.add_argument("--per-process", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--node-timeout-s", type=float, default=0.15,
                    help="gpu.node_timeout_s (lease 4x it, at least 2 s): a host too small for the fleet "
                         "answers late, and a longer timeout measures how late instead of counting misses")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(args.seed)
    n_gpus = args.agents * args.gpus
    pv_high_kw = n_gpus * 0.4 * 1.3 + 3.0  # every GPU at 400 W fits
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        fleet = make_fleet(tmp / "fleet", free_ports(args.agents), gpus=args.gpus,
                           safe_cap_w=150.0, ranges_w=[(100.0, 400.0)] * args.agents, demand_w=1000.0)
        t0 = time.monotonic()
        procs = start_hosts(fleet, args.per_process, tmp)
        atexit.register(stop_hosts, procs)  # whatever ends this script, the agents go too
        print(f"{args.agents} agents x {args.gpus} GPUs ({len(procs)} processes) up in {time.monotonic() - t0:.1f} s")
        data = site_dict(classes=[{"name": "prod", "gpus": n_gpus}],
                         gpu={"backend": "agents", "min_w": 100.0, "max_w": 400.0, "safe_cap_w": 150.0,
                              "lease_s": max(2.0, 4 * args.node_timeout_s), "node_timeout_s": args.node_timeout_s, "ramp_up_kw_per_s": 1e4,
                              "agent_tls": fleet.agent_tls(), "nodes": fleet.nodes(["prod"] * args.agents)},
                         control={"guard_period_s": 0.2})
        data["devices"][0]["limits"]["kwp"] = pv_high_kw * 1.2  # the array can deliver what it reads
        data["devices"][1]["limits"]["max_charge_kw"] = pv_high_kw * 1.2
        cfg = parse_config(data)
        time.sleep(5.0)  # let the start-up load of N Python processes pass
        backend = AgentGpus(cfg.gpu)
        deadline = time.monotonic() + 120
        while backend.answering() < args.agents and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"{backend.answering()} of {args.agents} agents answer")
        guard = Guard(cfg, slots_from_pool(cfg.gpu, backend.list_gpus()), gpu_lag_s=0.1)
        img = image_for(cfg, max_age_s=5.0)
        indices = list(range(n_gpus))
        lat_ms: list[float] = []
        misses = 0
        try:
            def tick(pv_kw: float) -> tuple[float, bool]:
                t_meas = time.perf_counter()
                img.update("pv1", "p_kw", pv_kw, time.monotonic())
                img.update("bat1", "soc_pct", 10.0, time.monotonic())
                gpu_w = read_gpu_power_w(backend, indices)
                # the battery takes the PV surplus: the power balance the plausibility check expects
                load_kw = (gpu_w or 0.0) / 1000.0 * (1.0 + cfg.gpu.facility_overhead)
                img.update("bat1", "p_kw", min(0.0, load_kw - pv_kw), time.monotonic())
                d = guard.evaluate(img, time.monotonic(), requested_caps_w={i: 400.0 for i in indices},
                                   gpu_power_w=gpu_w, held_w=backend.held_caps_w())
                res = backend.set_caps_w(d.caps_w)
                ok = len(res) == n_gpus and all(r.ok and r.readback_w is not None
                                                and abs(r.readback_w - d.caps_w[r.index]) <= 1.0 for r in res)
                return (time.perf_counter() - t_meas) * 1000.0, ok

            for _ in range(25):
                tick(pv_high_kw)
                time.sleep(0.2)
            cpu0 = cpu_s(procs)
            for _ in range(args.drops):
                ms, ok = tick(pv_high_kw * rng.uniform(0.4, 0.7))
                lat_ms.append(ms)
                misses += not ok
                time.sleep(0.2)
                for _ in range(2):
                    tick(pv_high_kw)
                    time.sleep(0.2)
            cpu1 = cpu_s(procs)
        finally:
            backend.close()
            stop_hosts(procs)
    q = statistics.quantiles(lat_ms, n=100, method="inclusive")  # never beyond the largest sample
    print(f"supply drop measured -> every node's new cap read back, {len(lat_ms)} drops, {n_gpus} GPUs on "
          f"{args.agents} agents: p50 {statistics.median(lat_ms):.1f} ms, p99 {q[98]:.1f} ms, "
          f"max {max(lat_ms):.1f} ms; drops where some node's read-back was missing or off: {misses}")
    ticks = 3 * args.drops  # each drop, then the supply back twice: all alike in work
    print(f"CPU per cap update (load-independent): controller {(cpu1[0] - cpu0[0]) / ticks * 1000:.1f} ms, "
          f"agents {(cpu1[1] - cpu0[1]) / ticks * 1000:.1f} ms in all; load average {os.getloadavg()[0]:.1f} "
          f"(at the start {load0:.1f})")


if __name__ == "__main__":
    main()
