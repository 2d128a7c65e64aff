"""Device writes: the dispatcher's setpoints to the devices, one writer task per device.

A device that stops answering must not hold up the dispatcher (nor the other devices) for its
timeouts: each device's writes run in their own task, and a newer value replaces one not yet sent.
Unchanged values are re-sent only every ``RESEND_S`` (the driver keeps keep-alive setpoints alive).

On the way out ``release`` hands back what this run commanded where the profile names a release
(Sungrow: stop, power 0, EMS self-consumption): a forced mode must not outlive the daemon. It is
bounded by ``RELEASE_TIMEOUT_S`` in all: a dead device cannot hold up the stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from powerctl.control.core import Commands
from powerctl.io.modbus import DeviceError, ModbusDevice
from powerctl.profiles.values import SetpointRangeError

log = logging.getLogger(__name__)

RESEND_S = 10.0
BATTERY_DEADBAND_KW = 0.5
PV_LIMIT_DEADBAND_PCT = 0.5
GENSET_DEADBAND_KW = 1.0
RELEASE_TIMEOUT_S = 5.0

# (kind, fields, device) -> None: where write events go (telemetry)
EventSink = Callable[[str, dict[str, Any], str | None], None]


class WriteQueue:
    def __init__(
        self, devices: Mapping[str, ModbusDevice], on_event: EventSink | None = None, *, observe_only: bool = False
    ) -> None:
        self.devices = devices
        self.on_event = on_event
        self.observe_only = observe_only  # commissioning: log what would be written, write nothing
        self.would_write: dict[str, float] = {}  # "device.signal" -> last value not written (observe-only)
        self.would_refuse: dict[str, float] = {}  # observe-only: values a live daemon would have refused
        self.written: dict[str, float] = {}  # "device.signal" -> last value written
        self.errors = 0
        self._last: dict[str, tuple[float, float]] = {}  # "device.signal" -> (value, monotonic s)
        self._pending: dict[str, dict[str, tuple[float, float]]] = {}  # device -> signal -> (value, deadband)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._unsupported: set[tuple[str, str]] = set()
        self._commanded: set[tuple[str, str]] = set()  # (device, signal) a write was sent for

    def commands(self, cmd: Commands) -> None:
        """Queue one dispatch cycle's battery setpoints, genset start/stop and base load, PV limits."""
        for name, p_kw in cmd.battery_kw.items():
            self.queue(name, "p_set_kw", p_kw, deadband=BATTERY_DEADBAND_KW)
        for name, run in cmd.genset_run.items():
            self.queue(name, "start_cmd", 1.0 if run else 0.0, deadband=0.0)
        for name, p_kw in cmd.genset_kw.items():
            self.queue(name, "p_set_kw", p_kw, deadband=GENSET_DEADBAND_KW)
        for name, pct in cmd.pv_limit_pct.items():
            self.queue(name, "p_limit_pct", pct, deadband=PV_LIMIT_DEADBAND_PCT)

    def queue(self, device: str, signal: str, value: float, deadband: float) -> None:
        self._pending.setdefault(device, {})[signal] = (value, deadband)
        task = self._tasks.get(device)
        if task is None or task.done():
            self._tasks[device] = asyncio.create_task(self._drain(device), name=f"write-{device}")

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def release(self, timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
        """Stop the writers, then write the release of every signal this run commanded whose
        profile names one, all devices at once, within ``timeout_s``. Returns "device.signal"
        released (read back where the profile can). Observe-only commanded nothing: no writes."""
        self.cancel()
        released: list[str] = []
        todo = sorted((d, s) for d, s in self._commanded if s in self.devices[d].releases())
        if not todo or self.observe_only:  # observe-only never commands (nor releases) anything
            return released

        async def one(device: str, signal: str) -> None:
            try:
                res = await self.devices[device].release(signal)
            except (SetpointRangeError, DeviceError) as exc:
                log.warning("release %s.%s failed: %s", device, signal, exc)
                return
            except Exception:
                log.exception("release %s.%s failed", device, signal)
                return
            released.append(f"{device}.{signal}")
            log.info("%s: %s released to the device's own control%s", device, signal,
                     "" if res.ok else f" ({res.message})")

        try:
            async with asyncio.timeout(timeout_s):
                # the writers were cancelled above: let them unwind (and free the device lock) first
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                async with asyncio.TaskGroup() as tg:
                    for device, signal in todo:
                        tg.create_task(one(device, signal), name=f"release-{device}")
        except TimeoutError:
            missing = [f"{d}.{s}" for d, s in todo if f"{d}.{s}" not in released]
            log.warning("release: no answer within %.1f s from %s; those devices keep their last command", timeout_s, missing)
        return released

    async def _drain(self, device: str) -> None:
        while pending := self._pending.pop(device, None):
            for signal, (value, deadband) in pending.items():
                try:
                    await self._write(device, signal, value, deadband)
                except Exception:
                    log.exception("write %s.%s=%g failed", device, signal, value)

    def _event(self, kind: str, fields: dict[str, object], device: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields, device)

    async def _write(self, device: str, signal: str, value: float, deadband: float) -> None:
        dev = self.devices.get(device)
        if dev is None:
            return
        if not dev.supports(signal):
            # e.g. a battery profile with vendor-specific named setpoints only: the grid-forming
            # inverter still carries the balance; say so once instead of failing every cycle
            if (device, signal) not in self._unsupported:
                self._unsupported.add((device, signal))
                log.warning("%s: profile %s has no %s setpoint; not written", device, dev.profile.key, signal)
            return
        key = f"{device}.{signal}"
        prev = self._last.get(key)
        if prev is not None and abs(prev[0] - value) <= deadband and time.monotonic() - prev[1] < RESEND_S:
            return
        if self.observe_only:
            self._last[key] = (value, time.monotonic())
            if value in (self.would_write.get(key), self.would_refuse.get(key)):
                return
            try:
                dev.check_signal(signal, value)
            except (SetpointRangeError, DeviceError) as exc:
                log.warning("observe-only: would refuse %s.%s=%g: %s", device, signal, value, exc)
                self._event("write_error", {"message": f"observe-only, not written: {exc}"}, device)
                self.would_refuse[key] = value
                return
            log.info("observe-only: would write %s.%s = %g", device, signal, value)
            self.would_write[key] = value
            self.would_refuse.pop(key, None)
            return
        self._commanded.add((device, signal))
        try:
            res = await dev.write_signal(signal, value)
            self._last[key] = (value, time.monotonic())
            self.written[key] = value
            if not res.ok:
                self._event("readback_mismatch", {"message": res.message}, device)
        except (SetpointRangeError, DeviceError) as exc:
            self.errors += 1
            log.warning("write %s.%s=%g refused: %s", device, signal, value, exc)
            self._event("write_error", {"message": str(exc)}, device)
