"""Async Modbus driver: polls one device per its profile into the process image, writes setpoints.

One ``ModbusDevice`` per configured device, one task each (a dead device never blocks another).
Reads are planned once at start-up (``plan_blocks``). A failed poll counts towards
``stale_after_failures``; at that count every signal of the device is marked STALE and polling
backs off (growing delay, capped) while the client reconnects by itself. Writes are refused outside
the profile's range, then read back where the profile names a read-back point.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from powerctl.config import ModbusRtu, ModbusTcp
from powerctl.io.blocks import Block, plan_blocks
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles.model import Profile
from powerctl.profiles.values import (
    RegisterImage,
    SetpointRangeError,
    decode_points,
    scale_factors,
    setpoint_registers,
    to_signal,
)

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0


class DeviceError(Exception):
    """A read or write that did not complete (timeout, exception response, short reply)."""


@dataclass(slots=True)
class WriteResult:
    device: str
    signal: str
    value: float
    registers: list[int]
    readback: float | None = None
    ok: bool = True
    message: str = ""


@dataclass(slots=True)
class DeviceStats:
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    requests: int = 0
    writes: int = 0
    write_errors: int = 0
    reconnects: int = 0
    last_poll_s: float = 0.0
    last_error: str = ""


def make_client(transport: ModbusTcp | ModbusRtu) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    # reconnect_delay=0 turns pymodbus' own reconnect off: we reconnect with our own backoff so a
    # dead device is visible (stale) rather than hidden inside the client.
    if isinstance(transport, ModbusTcp):
        framer = FramerType.RTU if transport.framer == "rtu" else FramerType.SOCKET
        return AsyncModbusTcpClient(
            transport.host,
            port=transport.port,
            framer=framer,
            timeout=transport.timeout_s,
            retries=0,
            reconnect_delay=0,
        )
    return AsyncModbusSerialClient(
        transport.port,
        framer=FramerType.RTU,
        baudrate=transport.baudrate,
        parity=transport.parity,
        stopbits=transport.stopbits,
        bytesize=transport.bytesize,
        timeout=transport.timeout_s,
        retries=0,
        reconnect_delay=0,
    )


class ModbusDevice:
    def __init__(
        self,
        name: str,
        profile: Profile,
        transport: ModbusTcp | ModbusRtu,
        image: ProcessImage,
        *,
        poll_period_s: float = 1.0,
        stale_after_failures: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.profile = profile
        self.transport = transport
        self.unit_id = transport.unit_id
        self.image = image
        self.poll_period_s = poll_period_s
        self.stale_after_failures = stale_after_failures
        self.clock = clock
        self.blocks: list[Block] = plan_blocks(
            profile.points, profile.polling.max_registers, profile.polling.max_hole
        )
        self.stats = DeviceStats()
        self._client = make_client(transport)
        self._lock = asyncio.Lock()  # one request at a time per device (RS-485 and picky firmware)
        self._last_request_s = 0.0
        self._timeout_s = transport.timeout_s
        self._keepalive: dict[str, tuple[float, float]] = {}  # signal -> (value, last write time)
        self.last_image: RegisterImage = {}

    # --- connection ---------------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        self.stats.reconnects += 1
        try:
            ok = await asyncio.wait_for(self._client.connect(), self._timeout_s + 0.5)
        except (TimeoutError, OSError) as exc:
            raise DeviceError(f"connect failed: {exc or type(exc).__name__}") from None
        if not ok:
            raise DeviceError("connect failed")

    def close(self) -> None:
        self._client.close()

    async def _request(self, make_call: Callable[[], object]) -> object:
        """One request with gap, timeout and error mapping."""
        await self._ensure_connected()
        gap_s = self.profile.polling.min_gap_ms / 1000.0
        if gap_s:
            wait = self._last_request_s + gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self.stats.requests += 1
        try:
            rr = await asyncio.wait_for(make_call(), self._timeout_s + 0.5)  # type: ignore[arg-type]
        except TimeoutError:
            self._client.close()
            raise DeviceError("timeout") from None
        except (ModbusException, OSError) as exc:
            self._client.close()
            raise DeviceError(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._last_request_s = time.monotonic()
        if rr.isError():  # type: ignore[attr-defined]
            raise DeviceError(f"exception response: {rr}")
        return rr

    async def read_block(self, block: Block) -> list[int]:
        c = self._client
        if block.table == "holding":
            rr = await self._request(lambda: c.read_holding_registers(block.address, count=block.count, device_id=self.unit_id))
            regs = list(rr.registers)  # type: ignore[attr-defined]
        elif block.table == "input":
            rr = await self._request(lambda: c.read_input_registers(block.address, count=block.count, device_id=self.unit_id))
            regs = list(rr.registers)  # type: ignore[attr-defined]
        else:
            rr = await self._request(lambda: c.read_coils(block.address, count=block.count, device_id=self.unit_id))
            regs = [int(b) for b in rr.bits[: block.count]]  # type: ignore[attr-defined]
        if len(regs) != block.count:
            raise DeviceError(f"short reply: {len(regs)} of {block.count} registers at {block.table} {block.address}")
        return regs

    # --- polling ------------------------------------------------------------------------------

    async def poll_once(self) -> bool:
        """Read every block, decode, update the process image. Returns True on success."""
        async with self._lock:
            image: RegisterImage = {}
            try:
                for block in self.blocks:
                    regs = await self.read_block(block)
                    tab = image.setdefault(block.table, {})
                    for i, r in enumerate(regs):
                        tab[block.address + i] = r
            except DeviceError as exc:
                self._on_failure(str(exc))
                return False
        now = self.clock()
        self.last_image = image
        readings = decode_points(self.profile, image)
        for p in self.profile.points:
            if not p.signal:
                continue
            r = to_signal(p, readings[p.name], self.profile)
            if r.value is None:
                self.image.mark(self.name, p.signal, Quality.INVALID, now, f"{p.name}: {r.reason}")
                log.debug("%s.%s invalid: %s", self.name, p.signal, r.reason)
            else:
                self.image.update(self.name, p.signal, float(r.value), now)
        self.stats.polls += 1
        self.stats.consecutive_failures = 0
        self.stats.last_poll_s = now
        return True

    def _on_failure(self, reason: str) -> None:
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = reason
        if self.stats.consecutive_failures == self.stale_after_failures:
            log.warning("%s: %d failed reads (%s): signals stale", self.name, self.stale_after_failures, reason)
        if self.stats.consecutive_failures >= self.stale_after_failures:
            self.image.mark_device(self.name, Quality.STALE, self.clock(), f"device not answering: {reason}")

    def next_delay_s(self) -> float:
        """Poll period while healthy; growing, capped delay while failing."""
        n = self.stats.consecutive_failures
        if n < self.stale_after_failures:
            return self.poll_period_s
        return min(BACKOFF_MAX_S, max(self.poll_period_s, BACKOFF_BASE_S * 2 ** (n - self.stale_after_failures)))

    async def run(self) -> None:
        """Poll forever at the device's own cadence; rewrite keep-alive setpoints."""
        try:
            while True:
                t0 = time.monotonic()
                await self.poll_once()
                await self._refresh_keepalive()
                delay = self.next_delay_s() - (time.monotonic() - t0)
                await asyncio.sleep(max(0.0, delay))
        finally:
            self.close()

    # --- writing ------------------------------------------------------------------------------

    async def write_signal(self, signal: str, value: float) -> WriteResult:
        """Write a setpoint given in its signal's unit: range-checked, written, read back.

        Raises SetpointRangeError (nothing is sent) for a value outside the profile's range;
        raises DeviceError when the device does not take the write.
        """
        sp = self.profile.setpoint(signal)
        sf_exp = None
        if sp.scale_sf:
            sf_exp = scale_factors(self.profile, self.last_image).get(sp.scale_sf)
            if sf_exp is None:
                raise DeviceError(f"{self.name}: scale factor {sp.scale_sf} unknown; poll first")
        regs = setpoint_registers(sp, self.profile, value, sf_exp)  # raises SetpointRangeError
        c = self._client
        async with self._lock:
            try:
                if sp.write == "fc5":
                    await self._request(lambda: c.write_coil(sp.address, bool(regs[0]), device_id=self.unit_id))
                elif sp.write == "fc6" and len(regs) == 1:
                    await self._request(lambda: c.write_register(sp.address, regs[0], device_id=self.unit_id))
                else:
                    await self._request(lambda: c.write_registers(sp.address, regs, device_id=self.unit_id))
                for addr, extra in sp.after_writes:
                    await self._request(lambda a=addr, e=extra: c.write_registers(a, list(e), device_id=self.unit_id))
            except DeviceError as exc:
                self.stats.write_errors += 1
                raise DeviceError(f"{self.name}: write {sp.name}={value:g} failed: {exc}") from None
        self.stats.writes += 1
        if sp.keepalive_s:
            self._keepalive[signal] = (value, time.monotonic())
        result = WriteResult(self.name, signal, value, regs)
        if sp.readback and sp.value_map is None:
            await self._verify(sp.readback, value, result)
        return result

    async def _verify(self, point_name: str, value: float, result: WriteResult) -> None:
        point = self.profile.point(point_name)
        block = Block(point.table, point.address, point.count)
        try:
            async with self._lock:
                regs = await self.read_block(block)
        except DeviceError as exc:
            result.ok, result.message = False, f"read-back failed: {exc}"
            return
        image: RegisterImage = {point.table: {point.address + i: r for i, r in enumerate(regs)}}
        # scale factors for the read-back come from the last poll
        for tab, vals in self.last_image.items():
            image.setdefault(tab, {}).update({a: v for a, v in vals.items() if a not in image.get(tab, {})})
        reading = decode_points(self.profile, image)[point.name]
        if point.signal:
            reading = to_signal(point, reading, self.profile)
        result.readback = float(reading.value) if isinstance(reading.value, int | float) else None
        tol = max(1e-6, abs(value) * 1e-3)
        if result.readback is None or not math.isclose(result.readback, value, abs_tol=tol):
            result.ok = False
            result.message = f"read-back mismatch: wrote {value:g}, device reports {result.readback}"
            log.warning("%s: %s", self.name, result.message)

    async def _refresh_keepalive(self) -> None:
        for signal, (value, t_s) in list(self._keepalive.items()):
            sp = self.profile.setpoint(signal)
            assert sp.keepalive_s is not None
            # rewrite at 80% of the device's timeout, so jitter cannot let it lapse
            if time.monotonic() - t_s >= 0.8 * sp.keepalive_s:
                try:
                    await self.write_signal(signal, value)
                except (DeviceError, SetpointRangeError) as exc:
                    log.warning("%s: keep-alive rewrite of %s failed: %s", self.name, signal, exc)
