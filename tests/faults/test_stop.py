"""Stopping while an event wakes the loop: the cancel must not be lost (Python 3.11 ``wait_for``
returns normally when its inner wait completes in the same loop pass as the cancel; the daemon's
guard then ran on and ``powerctl run`` ignored SIGTERM: found by tests/restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from powerctl.control.guard import Guard
from powerctl.control.split import slots_from_pool
from powerctl.gpu.simulated import SimulatedGpus
from powerctl.guard_task import guard_loop, run_guard
from powerctl.process_image import ProcessImage
from tests.faults.harness import fault_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


async def test_guard_stops_when_cancelled_as_it_is_woken(tmp_path: Path) -> None:
    cfg = fault_config(tmp_path)
    gpus = SimulatedGpus.from_pool(cfg.gpu)
    slots = slots_from_pool(cfg.gpu, gpus.list_gpus())
    for _ in range(10):
        wake = asyncio.Event()
        loop = guard_loop(cfg, slots, ProcessImage(), gpus, None, guard=Guard(cfg, slots), clock=lambda: 0.0)
        task = asyncio.create_task(run_guard(loop, gpus, clock=lambda: 0.0, period_s=10.0, wake=wake))
        await asyncio.sleep(0.05)  # the guard now waits on its wake event
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, "the guard did not stop: the cancel was lost"
        assert task.cancelled()
        # and it left every GPU at or below the safe cap on the way out
        assert all(gpus.read_limits_w(s.index)[0] <= cfg.gpu.safe_cap_w for s in slots)
