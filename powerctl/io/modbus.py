"""Async Modbus driver: polls one device per its profile into the process image, writes setpoints.

One ``ModbusDevice`` per configured device, one task each (a dead device never blocks another).
Reads are planned once (``plan_blocks``: adjacent points merged up to the device's limits). A
SunSpec profile is moved to where discovery finds its models on the first connection.

Failures, in order of severity:
- a register value we do not trust (sentinel, NaN, out of its valid range, scale factor missing):
  that signal becomes INVALID with the reason; the others stay GOOD;
- an exception response to one block: the signals in that block become INVALID;
- no usable answer (timeout, connection lost, short reply, every block refused): the poll fails;
  after ``stale_after_failures`` failed polls in a row every signal of the device is STALE, and
  polling backs off (growing delay, capped at ``BACKOFF_MAX_S``) while the client reconnects by
  itself. A device that answers, if only with exception responses, is alive and is not backed off.
  So a device that is back is fresh again within its poll period + ``BACKOFF_MAX_S`` (5 s) after
  its first answered poll. (With a 30 s cap, each poll lost to a busy machine after the recovery
  cost another 30 s; the HTTP test saw a recovered inverter stale for 40-180 s under load.)

Writes are refused outside the profile's range before anything is sent, then read back where the
profile names a read-back point; a mismatch is reported in the WriteResult (and logged).
Setpoints with ``keepalive_s`` are rewritten at 80 % of that period while the device runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from powerctl.config import ModbusRtu, ModbusTcp
from powerctl.io.blocks import Block, plan_blocks
from powerctl.natures import signal_spec
from powerctl.process_image import ProcessImage, Quality
from powerctl.profiles.model import Profile, Setpoint, signal_factor
from powerctl.profiles.sequences import SequenceError, WriteSequence, step_values
from powerctl.profiles.values import (
    Reading,
    RegisterImage,
    SetpointRangeError,
    decode_points,
    scale_factors,
    setpoint_registers,
    to_signal,
)

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 5.0  # a dead device costs one timeout (timeout_s + 0.5 s) per 5 s on its link
KEEPALIVE_FRACTION = 0.8  # rewrite a leased setpoint at 80 % of its timeout: jitter cannot let it lapse


class DeviceError(Exception):
    """A read or write that did not complete (timeout, exception response, short reply)."""


class ExceptionResponse(DeviceError):
    """The device answered with a Modbus exception (it is alive, but refused this request)."""


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
    keepalive_writes: int = 0
    wrong_function_code: int = 0  # replies discarded because they answered another request
    last_poll_s: float = 0.0
    last_error: str = ""
    poll_times_s: list[float] = field(default_factory=list)  # monotonic end of each good poll (last 100)


def make_client(transport: ModbusTcp | ModbusRtu) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    """A pymodbus client for the transport: TCP, RTU framing over TCP, or serial RTU.

    ``reconnect_delay=0`` turns pymodbus' own reconnect off: we reconnect with our own backoff so
    a dead device is visible (stale) rather than hidden inside the client. A serial ``port`` may
    be a pyserial URL (``socket://host:port``, ``rfc2217://...``).
    """
    if isinstance(transport, ModbusTcp):
        framer = FramerType.RTU if transport.framer == "rtu" else FramerType.SOCKET
        return AsyncModbusTcpClient(
            transport.host, port=transport.port, framer=framer, timeout=transport.timeout_s, retries=0, reconnect_delay=0
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
        self.blocks: list[Block] = self._plan()
        self.stats = DeviceStats()
        self._client = make_client(transport)
        self._lock = asyncio.Lock()  # one request at a time per device (RS-485 and picky firmware)
        self._last_request_s = 0.0
        self._timeout_s = transport.timeout_s
        self._keepalive: dict[str, tuple[float, float]] = {}  # signal -> (value, last write, monotonic)
        self._wake = asyncio.Event()  # a new keep-alive lease wakes the run loop early
        self._located = not profile.sunspec_models  # SunSpec profiles are located by discovery once
        self._reasons: dict[str, str] = {}  # signal -> last logged reason (log transitions, not every poll)
        self._answering = False  # the last failed poll got answers (exception responses): no backoff
        self.last_image: RegisterImage = {}
        self.readings: dict[str, Reading] = {}  # every point of the last good poll, engineering units

    def _plan(self) -> list[Block]:
        return plan_blocks(self.profile.points, self.profile.polling.max_registers, self.profile.polling.max_hole)

    # --- connection ---------------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        self.stats.reconnects += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancel that races with
            # completion, and a poller that loses its cancel keeps the daemon from stopping
            async with asyncio.timeout(self._timeout_s + 0.5):
                ok = await self._client.connect()
        except (TimeoutError, OSError) as exc:
            raise DeviceError(f"connect failed: {exc or type(exc).__name__}") from None
        if not ok:
            raise DeviceError("connect failed")
        if self.profile.polling.connect_delay_ms:
            await asyncio.sleep(self.profile.polling.connect_delay_ms / 1000.0)

    def close(self) -> None:
        self._client.close()

    async def _request(self, make_call: Callable[[], Awaitable[Any]], fc: int | None = None) -> Any:
        """One request with connect, gap, timeout and error mapping. ``fc``: the function code the
        reply must carry (pymodbus decodes whatever PDU comes back; a reply with another code is
        not an answer to this request and is never taken as data)."""
        await self._ensure_connected()
        gap_s = self.profile.polling.min_gap_ms / 1000.0
        if gap_s:
            wait = self._last_request_s + gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self._timeout_s + 0.5):
                rr = await make_call()
        except TimeoutError:
            self._client.close()  # a late answer must not be taken for the next request's
            raise DeviceError("timeout") from None
        except (ModbusException, OSError) as exc:
            self._client.close()
            what = "timeout (no answer)" if "No response" in str(exc) else type(exc).__name__
            raise DeviceError(f"{what}: {exc}") from None
        finally:
            self._last_request_s = time.monotonic()
        if rr.isError():
            raise ExceptionResponse(f"exception response {getattr(rr, 'exception_code', '?')}")
        got_fc = getattr(rr, "function_code", None)
        if fc is not None and got_fc != fc:
            self._client.close()  # framing or the device is confused: start clean
            self.stats.wrong_function_code += 1
            raise DeviceError(f"reply with function code {got_fc} to a request with function code {fc}: discarded")
        return rr

    async def read_block(self, block: Block) -> list[int]:
        c = self._client
        if block.table == "holding":
            rr = await self._request(lambda: c.read_holding_registers(block.address, count=block.count, device_id=self.unit_id), 3)
            regs = list(rr.registers)
        elif block.table == "input":
            rr = await self._request(lambda: c.read_input_registers(block.address, count=block.count, device_id=self.unit_id), 4)
            regs = list(rr.registers)
        else:
            rr = await self._request(lambda: c.read_coils(block.address, count=block.count, device_id=self.unit_id), 1)
            regs = [int(b) for b in rr.bits[: block.count]]
        if len(regs) != block.count:
            self._client.close()  # framing may be off: start clean
            raise DeviceError(f"short reply: {len(regs)} of {block.count} registers at {block.table} {block.address}")
        return regs

    # --- SunSpec location ---------------------------------------------------------------------

    async def _locate_sunspec(self) -> None:
        """Move SunSpec points to where discovery finds their models (once per device)."""
        from powerctl.sunspec.discovery import DiscoveryError, discover

        async def read(address: int, count: int) -> list[int]:
            return await self.read_block(Block("holding", address, count))

        try:
            chain = await discover(read)
        except ExceptionResponse as exc:
            log.warning("%s: SunSpec discovery refused (%s); using the profile's fixed addresses", self.name, exc)
            self._located = True
            return
        except DiscoveryError as exc:
            log.warning("%s: %s; using the profile's fixed addresses", self.name, exc)
            self._located = True
            return
        bases = chain.bases()
        missing = [m for m in self.profile.sunspec_models if m not in bases]
        if missing:
            log.warning("%s: SunSpec models %s not found on the device", self.name, missing)
        moved = self.profile.relocated(bases)
        if moved != self.profile:
            log.info("%s: SunSpec models found at %s; points moved from the standard layout", self.name, bases)
            self.profile = moved
            self.blocks = self._plan()
        self._located = True

    # --- polling ------------------------------------------------------------------------------

    async def poll_once(self) -> bool:
        """Read every block, decode, update the process image. Returns True on success."""
        async with self._lock:
            image: RegisterImage = {}
            refused: list[tuple[Block, str]] = []
            try:
                if not self._located:
                    await self._locate_sunspec()
                for block in self.blocks:
                    try:
                        regs = await self.read_block(block)
                    except ExceptionResponse as exc:
                        refused.append((block, str(exc)))
                        continue
                    tab = image.setdefault(block.table, {})
                    for i, r in enumerate(regs):
                        tab[block.address + i] = r
            except DeviceError as exc:
                self._on_failure(str(exc), answered=False)
                return False
            if len(refused) == len(self.blocks):
                self._on_failure(f"every request refused ({refused[0][1]})", answered=True)
                return False
        self._publish(image, refused)
        self.stats.polls += 1
        self.stats.consecutive_failures = 0
        self.stats.last_poll_s = self.clock()
        self.stats.poll_times_s = [*self.stats.poll_times_s[-99:], time.monotonic()]
        return True

    def _publish(self, image: RegisterImage, refused: list[tuple[Block, str]]) -> None:
        now = self.clock()
        self.last_image = image
        self.readings = decode_points(self.profile, image)
        for p in self.profile.points:
            if not p.signal:
                continue
            reading = to_signal(p, self.readings[p.name], self.profile)
            if reading.value is None:
                why = next((m for b, m in refused if b.table == p.table and b.address <= p.address < b.end), None)
                reason = f"{p.name}: {why or reading.reason}"
                self.image.mark(self.name, p.signal, Quality.INVALID, now, reason)
                if self._reasons.get(p.signal) != reason:
                    log.warning("%s.%s invalid: %s", self.name, p.signal, reason)
                    self._reasons[p.signal] = reason
            else:
                self.image.update(self.name, p.signal, float(reading.value), now)
                if self._reasons.pop(p.signal, None):
                    log.info("%s.%s valid again", self.name, p.signal)

    def _on_failure(self, reason: str, *, answered: bool) -> None:
        self._answering = answered
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = reason
        if self.stats.consecutive_failures == self.stale_after_failures:
            log.warning("%s: %d failed reads (%s): signals stale", self.name, self.stale_after_failures, reason)
        if self.stats.consecutive_failures >= self.stale_after_failures:
            self.image.mark_device(self.name, Quality.STALE, self.clock(), f"device not answering: {reason}")
            self._reasons = {s.signal: "stale" for s in self.profile.points if s.signal}

    def next_delay_s(self) -> float:
        """Poll period while healthy or answering; growing delay, capped at ``BACKOFF_MAX_S`` (or
        the poll period when that is longer), while the device does not answer at all."""
        n = self.stats.consecutive_failures
        if n < self.stale_after_failures or self._answering:
            return self.poll_period_s
        return max(self.poll_period_s, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (n - self.stale_after_failures)))

    def _keepalive_due_in_s(self) -> float:
        """Seconds until the next keep-alive rewrite is due (inf when none is leased)."""
        now = time.monotonic()
        due = [
            t_s + KEEPALIVE_FRACTION * self._keepalive_s(sig) - now
            for sig, (_v, t_s) in self._keepalive.items()
        ]
        return max(0.0, min(due, default=math.inf))

    async def run(self) -> None:
        """Poll forever at the device's own cadence; rewrite keep-alive setpoints in time."""
        try:
            next_poll = time.monotonic()
            while True:
                if time.monotonic() >= next_poll:
                    started = time.monotonic()
                    await self.poll_once()
                    # cadence counts from the start of a poll; a poll longer than the period runs back to back
                    next_poll = max(started + self.next_delay_s(), time.monotonic())
                await self._refresh_keepalive()
                wait = min(next_poll - time.monotonic(), self._keepalive_due_in_s())
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races
                # with the event being set, and the poller would never stop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await self._wake.wait()
        finally:
            self.close()

    # --- writing ------------------------------------------------------------------------------

    def supports(self, signal: str) -> bool:
        """Whether the profile can take ``signal``: a setpoint feeds it or a sequence maps it."""
        return self.profile.supports(signal)

    async def write_signal(self, signal: str, value: float) -> WriteResult:
        """Write a setpoint (by signal or setpoint name) in its signal's unit: range-checked,
        written, read back. A signal the profile maps onto a sequence is written step by step.

        Raises SetpointRangeError (nothing is sent) for a value outside the profile's range;
        raises DeviceError when the device does not take the write.
        """
        seq = self.profile.sequences.get(signal)
        if seq is not None:
            result = await self._write_sequence(seq, value)
            keepalive_s = seq.keepalive_s
        else:
            sp = self.profile.setpoint(signal)
            result = await self._write_setpoint(sp, signal, value)
            keepalive_s = sp.keepalive_s
        if keepalive_s:
            self._keepalive[signal] = (value, time.monotonic())
            self._wake.set()
        return result

    def check_signal(self, signal: str, value: float) -> None:
        """What ``write_signal`` would refuse, without writing: raises SetpointRangeError or
        DeviceError (observe-only commissioning shows the refusals a live daemon would meet)."""
        seq = self.profile.sequences.get(signal)
        if seq is not None:
            for sp, v in self._sequence_steps(seq, value):
                self._registers(sp, v)
        else:
            self._registers(self.profile.setpoint(signal), value)

    def _sequence_steps(self, seq: WriteSequence, value: float) -> list[tuple[Setpoint, float]]:
        readings = {n: float(r.value) if isinstance(r.value, int | float) else None for n, r in self.readings.items()}
        try:
            values = step_values(self.profile, seq, value, readings)
        except SequenceError as exc:
            raise DeviceError(f"{self.name}: {exc}") from None
        return [(self.profile.setpoint(st.setpoint), v) for st, v in zip(seq.steps, values, strict=True)]

    async def _write_sequence(self, seq: WriteSequence, value: float) -> WriteResult:
        """Every step in the profile's order (``_write_steps``)."""
        return await self._write_steps(WriteResult(self.name, seq.signal, value, []), self._sequence_steps(seq, value))

    async def _write_steps(self, result: WriteResult, steps: list[tuple[Setpoint, float]]) -> WriteResult:
        """Setpoints in order, every one range-checked before the first is sent."""
        for sp, v in steps:
            self._registers(sp, v)  # raises SetpointRangeError / DeviceError: nothing sent yet
        for sp, v in steps:
            one = await self._write_setpoint(sp, sp.name, v)
            result.registers += one.registers
            if not one.ok:
                result.ok = False
                result.message = "; ".join(m for m in (result.message, one.message) if m)
        return result

    def releases(self) -> list[str]:
        """The signals whose sequence names a release (what ``release`` can hand back)."""
        return [sig for sig, seq in self.profile.sequences.items() if seq.release]

    async def release(self, signal: str) -> WriteResult:
        """Hand ``signal`` back to the device's own control: the sequence's release writes, in
        order, each range-checked before the first is sent; its keep-alive lease ends first."""
        seq = self.profile.sequences[signal]
        self._keepalive.pop(signal, None)
        steps = [(self.profile.setpoint(name), v) for name, v in seq.release]
        return await self._write_steps(WriteResult(self.name, signal, math.nan, []), steps)

    def _registers(self, sp: Setpoint, value: float) -> list[int]:
        """The registers for ``value``, with the scale factor of the last poll."""
        sf_exp = None
        if sp.scale_sf:
            sf_exp = scale_factors(self.profile, self.last_image).get(sp.scale_sf)
            if sf_exp is None:
                # the range check needs no scale factor: refuse a bad value before asking for one
                setpoint_registers(sp, self.profile, value, 0)
                raise DeviceError(f"{self.name}: scale factor {sp.scale_sf} unknown; poll first")
        return setpoint_registers(sp, self.profile, value, sf_exp)  # raises SetpointRangeError

    async def _write_setpoint(self, sp: Setpoint, signal: str, value: float) -> WriteResult:
        regs = self._registers(sp, value)
        c = self._client
        uid = self.unit_id if sp.unit_id is None else sp.unit_id
        async with self._lock:
            try:
                if sp.write == "fc5":
                    await self._request(lambda: c.write_coil(sp.address, bool(regs[0]), device_id=uid), 5)
                elif sp.write == "fc6":
                    await self._request(lambda: c.write_register(sp.address, regs[0], device_id=uid), 6)
                else:
                    await self._request(lambda: c.write_registers(sp.address, regs, device_id=uid), 16)
                for addr, extra in sp.after_writes:
                    await self._request(self._writer(addr, list(extra), uid), 16)
            except DeviceError as exc:
                self.stats.write_errors += 1
                raise DeviceError(f"{self.name}: write {sp.name}={value:g} failed: {exc}") from None
        self.stats.writes += 1
        result = WriteResult(self.name, signal, value, regs)
        if sp.readback and sp.value_map is None:
            await self._verify(sp, value, result)
        return result

    def _writer(self, address: int, regs: list[int], unit_id: int) -> Callable[[], Awaitable[Any]]:
        c = self._client
        return lambda: c.write_registers(address, regs, device_id=unit_id)

    def _native(self, sp: Setpoint, value: float) -> float:
        """A setpoint value in the setpoint's own unit (what its read-back point reports)."""
        if not sp.signal:
            return value
        spec = signal_spec(self.profile.nature, sp.signal)
        return value / (signal_factor(sp.unit, spec.unit, sp.name) * sp.sign)

    async def _verify(self, sp: Setpoint, value: float, result: WriteResult) -> None:
        assert sp.readback is not None
        point = self.profile.point(sp.readback)
        try:
            async with self._lock:
                regs = await self.read_block(Block(point.table, point.address, point.count))
        except DeviceError as exc:
            result.ok, result.message = False, f"read-back failed: {exc}"
            log.warning("%s: %s %s", self.name, sp.name, result.message)
            return
        # scale factors for the read-back come from the last poll
        image: RegisterImage = {t: dict(v) for t, v in self.last_image.items()}
        image.setdefault(point.table, {}).update({point.address + i: r for i, r in enumerate(regs)})
        reading = decode_points(self.profile, image)[point.name]
        got = float(reading.value) if isinstance(reading.value, int | float) else None
        want = self._native(sp, value)
        if got is not None:
            result.readback = got / self._native(sp, 1.0)  # back into the signal's unit and sign
        step = sp.scale * (10.0 ** (scale_factors(self.profile, image).get(sp.scale_sf) or 0) if sp.scale_sf else 1.0)
        if got is None or not math.isclose(got, want, abs_tol=max(step / 2, abs(want) * 1e-6)):
            result.ok = False
            result.message = f"read-back mismatch: wrote {want:g} {sp.unit}, device reports {got if got is not None else reading.reason} {sp.unit}"
            log.warning("%s: %s: %s", self.name, sp.name, result.message)

    def _keepalive_s(self, signal: str) -> float:
        seq = self.profile.sequences.get(signal)
        period = seq.keepalive_s if seq is not None else self.profile.setpoint(signal).keepalive_s
        return period or math.inf

    async def _refresh_keepalive(self) -> None:
        for signal, (value, t_s) in list(self._keepalive.items()):
            period_s = self._keepalive_s(signal)
            if time.monotonic() - t_s >= KEEPALIVE_FRACTION * period_s:
                try:
                    await self.write_signal(signal, value)
                    self.stats.keepalive_writes += 1
                except (DeviceError, SetpointRangeError) as exc:
                    # retry on the next loop turn, not in a tight loop
                    self._keepalive[signal] = (value, time.monotonic() - KEEPALIVE_FRACTION * period_s + 1.0)
                    log.warning("%s: keep-alive rewrite of %s failed: %s", self.name, signal, exc)
