"""Caps lowered from outside a live daemon (the watchdog, ``apply-safe-caps``, a lease expiry, an
operator's nvidia-smi) come back up at the slew limit, not in one jump (issue 12, Medium: "caps drop
every 30 s and jump back unslewed").

The real guard task (``powerctl.guard_task.run_guard``) on simulated GPUs; the limits are read back
from the GPUs after every guard pass, and each rise between two passes must fit the rise budget of
at most two guard periods (the guard bounds its own dt so: ``Guard.evaluate``), whatever the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable

from powerctl.config import SiteConfig
from powerctl.control.guard import Guard, GuardDecision
from powerctl.control.split import slots_from_pool
from powerctl.gpu.failsafe import apply_safe_caps_to
from powerctl.gpu.simulated import SimulatedGpus
from powerctl.guard_task import guard_loop, run_guard
from powerctl.process_image import ProcessImage
from tests.gpu.site import image_for, site

TOL_W = 1.0  # read-back rounding (powerctl.gpu.base.READBACK_TOL_W) per GPU


@contextlib.asynccontextmanager
async def _guarded(cfg: SiteConfig, sim: SimulatedGpus, guard: Guard, img: ProcessImage,
                   requested_w: float, on_decision: Callable[[GuardDecision], None],
                   pv_kw_at: Callable[[float], float]) -> AsyncIterator[None]:
    """The plant (readings fresh and consistent every 50 ms: PV at ``pv_kw_at(now)``, curtailed to
    the load, the battery the rest) and the real guard task over ``sim``, which asks for
    ``requested_w`` per GPU and reasserts its caps every 0.5 s (a guard that trusts its own caps
    writes them back within 0.5 s); both stopped on the way out."""
    k = 1.0 + cfg.gpu.facility_overhead

    async def plant() -> None:
        while True:
            now = time.monotonic()
            load_kw = sum(sim.read_power_w(i) for i in range(sim.count)) / 1000.0 * k
            pv_kw = min(pv_kw_at(now), load_kw)
            img.update("pv1", "p_kw", pv_kw, now)
            img.update("bat1", "soc_pct", 60.0, now)
            img.update("bat1", "p_kw", load_kw - pv_kw, now)
            await asyncio.sleep(0.05)

    plant_task = asyncio.create_task(plant())
    await asyncio.sleep(0.1)
    slots = guard.gpus
    loop = guard_loop(cfg, slots, img, sim, {s.index: requested_w for s in slots}, guard=guard,
                      clock=time.monotonic, reassert_s=0.5)
    guard_task = asyncio.create_task(run_guard(loop, sim, clock=time.monotonic, on_decision=on_decision))
    try:
        yield
    finally:
        guard_task.cancel()
        plant_task.cancel()
        for t in (guard_task, plant_task):
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_caps_lowered_from_outside_rise_back_at_the_slew_limit() -> None:
    cfg = site()  # 40 GPUs, 100..400 W, safe cap 150 W, ramp 2 kW/s, guard every 0.2 s
    sim = SimulatedGpus.from_pool(cfg.gpu, clock=time.monotonic, demand_w=lambda _i, _t: 390.0)
    slots = slots_from_pool(cfg.gpu, sim.list_gpus())
    guard = Guard(cfg, slots)
    img = image_for(cfg)
    n = sim.count
    full_w = n * cfg.gpu.max_w
    safe_w = n * cfg.gpu.safe_cap_w
    # the most one guard pass may add: the budget of two periods (a longer gap is a stall or a clock step)
    budget_w = guard.slew.rise_budget_w(2.0 * cfg.control.guard_period_s)
    assert budget_w < full_w - safe_w  # else the test could not tell a jump from a slewed rise

    readback: list[float] = []  # sum of the limits the GPUs hold, after every guard pass
    at_full = asyncio.Event()
    lowered = False
    back = asyncio.Event()

    def on_decision(_d: GuardDecision) -> None:
        total = sum(sim.read_limits_w(i)[0] for i in range(n))
        if lowered:
            readback.append(total)
            if total >= full_w - n * TOL_W:
                back.set()
        elif total >= full_w - n * TOL_W:
            at_full.set()

    async with _guarded(cfg, sim, guard, img, cfg.gpu.max_w, on_decision, lambda now: 20.0 + 0.5 * math.sin(now)):
        async with asyncio.timeout(60):
            await at_full.wait()
        # between two guard passes (no await in between): the watchdog's safe caps, from outside
        results = apply_safe_caps_to(sim, cfg.gpu.safe_cap_w)
        assert all(r.ok for r in results)
        readback.append(sum(sim.read_limits_w(i)[0] for i in range(n)))
        lowered = True
        # slewed, the climb takes (full - safe) / budget passes; the bound only catches a hang
        async with asyncio.timeout(120):
            await back.wait()
    assert readback[0] <= safe_w + n * TOL_W, readback[:3]
    rises = [b - a for a, b in itertools.pairwise(readback)]
    worst = max(rises)
    print(f"{len(rises)} passes back to {full_w:.0f} W; largest rise {worst:.0f} W, budget {budget_w:.0f} W")
    assert worst <= budget_w + n * TOL_W, (
        f"caps rose {worst:.0f} W in one guard pass (budget {budget_w:.0f} W): "
        f"read-backs {[round(x) for x in readback[:8]]}")
    assert len(rises) >= math.ceil((full_w - safe_w) / (budget_w + n * TOL_W)), "came back faster than the slew"


async def test_caps_raised_from_outside_come_back_down_at_the_next_reassert() -> None:
    """Someone raises every GPU to its maximum (nvidia-smi -pl) while the guard holds them lower: the
    guard never takes the raise as its own (it follows the read-back only downwards) and its cap
    writer puts its caps back within ``reassert_s``, with no change of plan to trigger a write."""
    cfg = site()
    sim = SimulatedGpus.from_pool(cfg.gpu, clock=time.monotonic, demand_w=lambda _i, _t: 390.0)
    slots = slots_from_pool(cfg.gpu, sim.list_gpus())
    guard = Guard(cfg, slots)
    img = image_for(cfg)
    n = sim.count
    held_w = 250.0  # what the guard is asked for: below max_w, so a raise to max_w is a rise it never sent

    at_cap = asyncio.Event()
    raised = False
    back = asyncio.Event()
    guard_max_w: list[float] = []  # the highest cap the guard held after each pass once raised

    def on_decision(_d: GuardDecision) -> None:
        limits = [sim.read_limits_w(i)[0] for i in range(n)]
        if raised:
            guard_max_w.append(max(guard.last_caps_w.values()))
            if max(limits) <= held_w + TOL_W:
                back.set()
        elif all(abs(w - held_w) <= TOL_W for w in limits):
            at_cap.set()

    async with _guarded(cfg, sim, guard, img, held_w, on_decision, lambda _now: 20.0):
        async with asyncio.timeout(60):
            await at_cap.wait()
        for i in range(n):  # between two guard passes: every GPU to its maximum, from outside
            assert sim.set_cap_w(i, cfg.gpu.max_w).ok
        raised = True
        async with asyncio.timeout(60):  # 0.5 s reassert; the bound only catches "never"
            await back.wait()
    assert guard_max_w and max(guard_max_w) <= held_w + TOL_W, f"the guard took the outside raise as its own: {guard_max_w[:5]}"
