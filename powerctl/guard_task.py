"""The guard's asyncio task: ``ControlLoop.guard_tick`` every ``guard_period_s`` (or at once when
woken), against a GPU backend; every GPU at the safe cap on the way out, however it ends.

``SiteActuators`` is the loop's ``Actuators`` port in the daemon: setpoints to the device write
queue, caps through the ``CapWriter``, shed/restore to the hooks. ``guard_loop`` builds a loop for
the guard alone with fixed requested caps (the watchdog's tests and bench/guard.py run it so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from powerctl.config import SiteConfig
from powerctl.control.core import Commands, Forecaster
from powerctl.control.guard import Guard, GuardDecision
from powerctl.control.loop import ControlLoop
from powerctl.control.shed import ShedAction
from powerctl.control.split import GpuSlot
from powerctl.gpu.base import GpuBackend
from powerctl.gpu_io import CapWriter, GpuReadings, apply_caps, read_caps_w
from powerctl.hooks import HookResult, HookRunner
from powerctl.process_image import ProcessImage

log = logging.getLogger(__name__)


class SiteActuators:
    """Commands out of the loop, to the devices (``setpoints_to``), GPUs and shed hooks."""

    def __init__(self, caps: CapWriter, hooks: HookRunner | None = None,
                 setpoints_to: Callable[[Commands], None] | None = None) -> None:
        self.caps = caps
        self.hooks = hooks
        self.setpoints_to = setpoints_to

    def setpoints(self, cmd: Commands) -> None:
        if self.setpoints_to is not None:
            self.setpoints_to(cmd)

    def gpu_caps(self, caps_w: Mapping[int, float]) -> None:
        self.caps.apply(caps_w)

    def release(self, released: tuple[int, ...], actions: Sequence[ShedAction]) -> None:
        # a class is idled by its hook (the guard sheds hooked classes only); the set itself
        # needs no action here
        if self.hooks is not None:
            for a in actions:
                self.hooks.submit(a)


class _NoPlanner:
    """The guard alone: nothing plans or dispatches; the requested caps are set from outside."""

    forecaster: Forecaster | None = None

    def plan(self, now_s: float, image: ProcessImage, deadline_s: float | None = None) -> None:
        return None

    def dispatch(self, now_s: float, image: ProcessImage, overrides: object = None) -> Commands:
        raise RuntimeError("the guard-only loop does not dispatch")

    def on_clock_step(self, step_s: float) -> None:
        return None


def guard_loop(cfg: SiteConfig, slots: Sequence[GpuSlot], image: ProcessImage, backend: GpuBackend,
               requested_caps_w: Mapping[int, float] | None, *, guard: Guard | None = None,
               clock: Callable[[], float], reassert_s: float = 5.0) -> ControlLoop:
    """A loop whose guard works from ``requested_caps_w`` (None: no plan, safe caps)."""
    holder: list[ControlLoop] = []
    readings = GpuReadings(image, backend, slots, clock, lambda: holder[0].caps_w,
                           max_age_s=max(1.0, 5 * cfg.control.guard_period_s))
    loop = ControlLoop(cfg, slots, _NoPlanner(), readings,
                       SiteActuators(CapWriter(backend, reassert_s, clock)), guard=guard)
    holder.append(loop)
    loop.requested_caps_w = None if requested_caps_w is None else dict(requested_caps_w)
    return loop


async def run_guard(
    loop: ControlLoop,
    backend: GpuBackend,
    *,
    clock: Callable[[], float],
    planner: asyncio.Task[object] | None = None,
    period_s: float | None = None,
    wake: asyncio.Event | None = None,
    hooks: HookRunner | None = None,
    on_decision: Callable[[GuardDecision], None] | None = None,
    on_latency: Callable[[float], None] | None = None,
) -> None:
    """The guard task. Runs until cancelled; on the way out it puts every GPU at the safe cap.

    If ``planner`` is given and has finished (crashed or was cancelled), the guard ticks with no
    request (safe caps). ``wake`` triggers an immediate tick (the dispatcher sets it).
    """
    guard = loop.guard
    period = period_s if period_s is not None else loop.cfg.control.guard_period_s
    indices = [s.index for s in loop.slots]
    planner_reported = False
    hook_task: asyncio.Task[None] | None = None
    if not guard.last_caps_w:
        # Start from what the GPUs hold now, so the first rise is slew-limited too.
        held = read_caps_w(backend, indices)
        if held is not None:
            guard.last_caps_w, guard.last_t_s = guard.clamp(held), clock()
    if hooks is not None:
        def failed(result: HookResult) -> None:
            guard.shedder.hook_failed(result.action, clock())
        hook_task = asyncio.create_task(hooks.serve(failed), name="shed-hooks")
    try:
        while True:
            alive = planner is None or not planner.done()
            if not alive and not planner_reported:
                assert planner is not None
                exc = None if planner.cancelled() else planner.exception()
                log.error("planner task stopped (%s): guard holds GPUs at the safe cap", exc or "cancelled")
                planner_reported = True
            t0 = time.monotonic()
            d = loop.guard_tick(clock(), planner_alive=alive)
            if on_latency is not None:  # /metrics: powerctl_guard_cycle_seconds
                on_latency(time.monotonic() - t0)
            if on_decision is not None:
                on_decision(d)
            if wake is None:
                await asyncio.sleep(period)
            else:
                # asyncio.timeout, not wait_for: on 3.11 wait_for returns normally when the event is
                # set in the same loop pass as a cancel, the cancel is lost and the daemon never stops
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await wake.wait()
                wake.clear()
    finally:
        caps = guard.safe_caps()
        log.warning("guard stopping: GPUs to the safe cap (%.0f W max)", loop.cfg.gpu.safe_cap_w)
        apply_caps(backend, caps)
        guard.last_caps_w = dict(caps)
        if hook_task is not None:
            hook_task.cancel()
