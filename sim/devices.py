"""Register-level device simulators: any profile served as a Modbus device (pymodbus SimDevice).

``RegisterDevice`` serves a raw register image (e.g. a SunSpec image built from the model JSON).
``DeviceSimulator`` serves a profile: a plant (or a test) sets engineering or signal values;
clients read the encoded registers; writes to a profile's setpoint are decoded and handed to
``on_write(signal, value)`` in signal units. Addresses outside the profile's points and setpoints
do not exist (exception 2), and writes to read-only registers are refused, as a real device would.
``SimServer`` runs one pymodbus TCP server (socket or RTU framing) for one or more devices.

A lying device (``device.lies[signal] = f``) reports ``f(true value)`` for a signal: a register at
10x, stuck at a value, a SoC that is not the battery's; the Modbus exchange itself stays correct.

Fault modes (``device.fault``):
- ``NO_ANSWER``: the request is swallowed; the client times out.
- ``SLOW``: the answer comes after ``slow_s``.
- ``EXCEPTION``: exception response 4 (server device failure).
- ``GARBAGE``: every register read returns random values.
- ``DISCONNECT``: the server drops the TCP connection after receiving a request, before answering
  (needs a ``SimServer``, which owns the connections).
- ``SHORT``: a well-framed answer with one register fewer than asked (socket framing only).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from powerctl.profiles.codec import CodecError
from powerctl.profiles.model import Profile, Setpoint
from powerctl.profiles.sequences import SequenceError, signal_from_steps
from powerctl.profiles.values import (
    decode_points,
    encode_point,
    scale_factors,
    setpoint_value_from_registers,
    signal_to_point_value,
)

log = logging.getLogger(__name__)

_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 3: "holding", 6: "holding", 16: "holding", 23: "holding", 4: "input"}
TABLES = ("holding", "input", "coil")


class Fault(StrEnum):
    NONE = "none"
    NO_ANSWER = "no_answer"
    SLOW = "slow"
    EXCEPTION = "exception"
    GARBAGE = "garbage"
    DISCONNECT = "disconnect"
    SHORT = "short"


class RegisterDevice:
    """A raw register image served as one Modbus unit, with fault modes."""

    def __init__(self, registers: dict[str, dict[int, int]] | None = None, unit_id: int = 1) -> None:
        self.unit_id = unit_id
        self.registers: dict[str, dict[int, int]] = {t: dict((registers or {}).get(t, {})) for t in TABLES}
        self.fault = Fault.NONE
        self.slow_s = 0.5
        self.requests = 0
        self.request_log: list[tuple[int, int, int, list[int] | None]] = []  # (fc, address, count, written), last 1000
        self.disconnect_hook: Callable[[], None] | None = None

    def set_raw(self, table: str, address: int, regs: Sequence[int]) -> None:
        tab = self.registers[table]
        for i, r in enumerate(regs):
            tab[address + i] = int(r) & (1 if table == "coil" else 0xFFFF)

    # --- the pymodbus device ------------------------------------------------------------------

    def _blocks(self, table: str, keep: Callable[[str, int], bool] | None = None) -> list[SimData]:
        addrs = sorted(a for a in self.registers[table] if keep is None or keep(table, a))
        if not addrs:
            # pymodbus needs a block per table; an invalid placeholder register refuses access
            dtype = DataType.BITS if table == "coil" else DataType.INVALID
            return [SimData(address=0, count=16 if table == "coil" else 1, datatype=dtype)]
        runs: list[tuple[int, int]] = []
        start = prev = addrs[0]
        for a in addrs[1:]:
            if a != prev + 1:
                runs.append((start, prev + 1))
                start = a
            prev = a
        runs.append((start, prev + 1))
        if table == "coil":
            return [SimData(address=s, count=e - s, values=False, datatype=DataType.BITS) for s, e in runs]
        return [SimData(address=s, count=e - s, values=0, datatype=DataType.REGISTERS) for s, e in runs]

    def sim_device(self, unit_id: int | None = None, keep: Callable[[str, int], bool] | None = None) -> SimDevice:
        """The pymodbus unit; ``keep`` limits it to some registers (a second unit of one device)."""
        return SimDevice(
            id=self.unit_id if unit_id is None else unit_id,
            simdata=(self._blocks("coil", keep), self._blocks("coil", keep), self._blocks("holding", keep), self._blocks("input", keep)),
            action=self._action,
        )

    def sim_devices(self) -> list[SimDevice]:
        """Every unit this device answers as (one, unless a profile writes to a second unit)."""
        return [self.sim_device()]

    async def _wait_while(self, fault: Fault, limit_s: float = 3600.0) -> None:
        """Hold the request while the fault lasts (a dead device), bounded so servers can stop."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        # polling a plain attribute: tests flip ``fault`` from outside without knowing about events
        while self.fault is fault and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        written = None if set_values is None else [int(v) for v in set_values]
        self.request_log = [*self.request_log[-999:], (function_code, address, count, written)]
        fault = self.fault
        if fault is Fault.NO_ANSWER:
            await self._wait_while(Fault.NO_ANSWER)
            return ExcCodes.DEVICE_BUSY  # answered only after the fault cleared: the client left long ago
        if fault is Fault.SLOW:
            await asyncio.sleep(self.slow_s)
        if fault is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if fault is Fault.DISCONNECT:
            if self.disconnect_hook is None:
                raise RuntimeError("Fault.DISCONNECT needs the device to be served by a SimServer")
            self.disconnect_hook()
            return ExcCodes.DEVICE_FAILURE  # never sent: the connection is gone
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is None:
            self._fill_read(table, start_address, address, count, current_registers, fault is Fault.GARBAGE)
            return None
        return self._handle_write(table, address, [int(v) for v in set_values])

    def _fill_read(
        self, table: str, start: int, address: int, count: int, current: list[int], garbage: bool
    ) -> None:
        src = self.registers[table]
        if table == "coil":
            # coils are bit-addressed: register index = address // 16, bit = address % 16 (LSB first)
            for a in range(address, address + count):
                bit = random.randrange(2) if garbage else src.get(a, 0)
                idx, pos = a // 16 - start, a % 16
                current[idx] = (current[idx] | (1 << pos)) if bit else (current[idx] & ~(1 << pos))
            return
        for a in range(address, address + count):
            current[a - start] = random.randrange(0x10000) if garbage else src.get(a, 0)

    def _handle_write(self, table: str, address: int, values: list[int]) -> ExcCodes | None:
        """A raw device accepts writes to registers it has (profile simulators refine this)."""
        self.set_raw(table, address, values)
        return None


class DeviceSimulator(RegisterDevice):
    """A profile served at register level; ``on_write(signal, value)`` gets decoded setpoint writes."""

    def __init__(
        self,
        profile: Profile,
        unit_id: int = 1,
        on_write: Callable[[str, float], None] | None = None,
        *,
        fill_holes: bool | None = None,
    ) -> None:
        super().__init__(None, unit_id)
        self.profile = profile
        self.on_write = on_write
        self.writes: list[tuple[str, float]] = []
        # signal -> what the device reports given the true value (tests: a register at 10x, stuck, ...)
        self.lies: dict[str, Callable[[float], float]] = {}
        for p in profile.points:
            for a in range(p.address, p.end):
                self.registers[p.table].setdefault(a, 0)
        for sp in profile.setpoints:
            for a in range(sp.address, sp.address + sp.count):
                self.registers[sp.table].setdefault(a, 0)
            for addr, regs in sp.after_writes:
                for a in range(addr, addr + len(regs)):
                    self.registers[sp.table].setdefault(a, 0)
        if profile.sunspec_models and "SunS" in {p.name for p in profile.points}:
            self._fill_sunspec_chain()
        hole = profile.polling.max_hole
        if fill_holes if fill_holes is not None else hole > 0:
            # A device whose profile allows reads across holes answers them (with zeros), as
            # SunSpec devices do for points a profile leaves out; max_hole 0 devices refuse them.
            for tab in (self.registers["holding"], self.registers["input"]):
                addrs = sorted(tab)
                for a, b in itertools.pairwise(addrs):
                    if 1 < b - a <= hole + 1:
                        for x in range(a + 1, b):
                            tab.setdefault(x, 0)
        # scale factors first, then values that use them
        for p in profile.points:
            if p.dtype == "sunssf":
                self.set_point(p.name, profile.defaults.get(p.name, 0))
        for p in profile.points:
            if p.dtype != "sunssf" and p.name in profile.defaults:
                self.set_point(p.name, profile.defaults[p.name])
        if "SunS" in {p.name for p in profile.points}:
            self.set_raw("holding", profile.point("SunS").address, [0x5375, 0x6E53])

    def _fill_sunspec_chain(self) -> None:
        """Serve every register of each SunSpec model (ID, L, body) and the end model, as a device does."""
        from powerctl.sunspec.models import END_MODEL_ID, load_model

        tab = self.registers["holding"]
        addr = self.profile.point("SunS").address + 2
        for mid in self.profile.sunspec_models:
            md = load_model(mid)
            assert md is not None  # load_profile checked it
            for a in range(addr, addr + md.length + 2):
                tab.setdefault(a, 0)
            tab[addr], tab[addr + 1] = mid, md.length
            addr += md.length + 2
        tab[addr], tab[addr + 1] = END_MODEL_ID, 0

    def _other_units(self) -> dict[int, set[tuple[str, int]]]:
        """Registers of setpoints that live on another unit id behind the same server."""
        out: dict[int, set[tuple[str, int]]] = {}
        for sp in self.profile.setpoints:
            if sp.unit_id is not None and sp.unit_id != self.unit_id:
                out.setdefault(sp.unit_id, set()).update((sp.table, a) for a in range(sp.address, sp.address + sp.count))
        return out

    def sim_devices(self) -> list[SimDevice]:
        other = self._other_units()
        moved = set().union(*other.values()) if other else set()
        devs = [self.sim_device(keep=lambda t, a: (t, a) not in moved)]
        for uid, regs in other.items():
            devs.append(self.sim_device(uid, keep=lambda t, a, regs=regs: (t, a) in regs))  # type: ignore[misc]
        return devs

    # --- values in ----------------------------------------------------------------------------

    def set_point(self, name: str, value: float | str) -> None:
        """Set a point in its engineering unit, encoded with the current scale factor."""
        p = self.profile.point(name)
        if p.dtype == "sunssf":
            self.set_raw(p.table, p.address, encode_point(p, int(value)))
            return
        sf = scale_factors(self.profile, self.registers).get(p.scale_sf) if p.scale_sf else None
        if p.scale_sf and sf is None:
            raise ValueError(f"{self.profile.key}: set {p.scale_sf} before {name}")
        self.set_raw(p.table, p.address, encode_point(p, value, sf))

    def set_signal(self, signal: str, value: float) -> None:
        """Set every point feeding ``signal`` from a value in the signal's unit and sign."""
        # A signal no point feeds is ignored: a plant pushes every signal of a nature, and a
        # profile maps only those its device has.
        lie = self.lies.get(signal)
        if lie is not None:
            value = lie(value)  # a lying device: its registers say what the lie makes of the truth
        for p in self.profile.points:
            if p.signal == signal:
                self.set_point(p.name, signal_to_point_value(p, value, self.profile))

    def set_sentinel(self, name: str) -> None:
        """Put the point's 'not implemented' marker in its registers."""
        p = self.profile.point(name)
        if not p.sentinels:
            raise ValueError(f"{name} has no sentinel")
        raw = min(p.sentinels)
        regs = [(raw >> (16 * (p.count - 1 - i))) & 0xFFFF for i in range(p.count)]
        if p.words == "little":
            regs.reverse()
        self.set_raw(p.table, p.address, regs)

    # --- writes -------------------------------------------------------------------------------

    def _writable(self, table: str, address: int) -> Setpoint | bool | None:
        """The setpoint a write targets; True for an accepted side register (after_writes)."""
        for sp in self.profile.setpoints:
            if sp.table == table and sp.address <= address < sp.address + sp.count:
                return sp
            if sp.table == table:
                for addr, regs in sp.after_writes:
                    if addr <= address < addr + len(regs):
                        return True
        return None

    def _handle_write(self, table: str, address: int, values: list[int]) -> ExcCodes | None:
        target = self._writable(table, address)
        if target is None:
            return ExcCodes.ILLEGAL_ADDRESS
        self.set_raw(table, address, values)
        if isinstance(target, Setpoint):
            sp = target
            regs = [self.registers[table].get(a, 0) for a in range(sp.address, sp.address + sp.count)]
            sf = scale_factors(self.profile, self.registers).get(sp.scale_sf) if sp.scale_sf else None
            try:
                value = setpoint_value_from_registers(sp, self.profile, regs, sf)
            except CodecError as exc:
                log.info("%s: refused write to %s: %s", self.profile.key, sp.name, exc)
                return ExcCodes.ILLEGAL_VALUE
            self.writes.append((sp.signal or sp.name, value))
            if self.on_write is not None:
                self.on_write(sp.signal or sp.name, value)
            self._follow_sequences(sp.name)
        return None

    def _follow_sequences(self, written: str) -> None:
        """A write to a step of a profile sequence: the device now follows what its registers say
        (``signal_from_steps``), as the vendor's device does once mode, direction and power are in."""
        for seq in self.profile.sequences.values():
            if not any(st.setpoint == written for st in seq.steps):
                continue
            values: dict[str, float] = {}
            for st in seq.steps:
                sp = self.profile.setpoint(st.setpoint)
                regs = [self.registers[sp.table].get(a, 0) for a in range(sp.address, sp.address + sp.count)]
                sf = scale_factors(self.profile, self.registers).get(sp.scale_sf) if sp.scale_sf else None
                try:
                    values[sp.name] = setpoint_value_from_registers(sp, self.profile, regs, sf)
                except CodecError:
                    return  # a code outside the map: the device is in none of the commanded states
            readings = {n: r.value if isinstance(r.value, float | int) else None for n, r in decode_points(self.profile, self.registers).items()}
            try:
                x = signal_from_steps(self.profile, seq, values, readings)
            except SequenceError:
                x = None
            if x is None:
                continue
            self.writes.append((seq.signal, x))
            if self.on_write is not None:
                self.on_write(seq.signal, x)


class SimServer:
    """One pymodbus TCP server on 127.0.0.1 for one or more simulated units.

    ``framer="rtu"`` serves RTU framing over TCP (what RTU-over-TCP gateways speak). Used as an
    async context manager; ``stop()``/``start()`` take the whole server away and back (same port).
    """

    def __init__(
        self, devices: Sequence[RegisterDevice], port: int, host: str = "127.0.0.1", framer: str = "socket"
    ) -> None:
        self.devices = list(devices)
        self.host, self.port = host, port
        self.framer = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        for d in self.devices:
            d.disconnect_hook = self.drop_connections

    def drop_connections(self) -> None:
        """Close every client connection now (requests in flight get no answer)."""
        if self._server is None:
            return
        for conn in list(self._server.active_connections.values()):
            transport = conn.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # RST, no flush: the request in flight never gets its answer

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # SHORT fault: shrink a register read reply by one register, keeping the frame consistent
        if not sending or self.framer != FramerType.SOCKET or len(data) < 11:
            return data
        unit, fc = data[6], data[7]
        dev = next((d for d in self.devices if d.unit_id == unit), None)
        if dev is None or dev.fault is not Fault.SHORT or fc not in (3, 4) or data[8] < 4:
            return data
        body = data[9:-2]
        length = int.from_bytes(data[4:6], "big") - 2
        return data[:4] + length.to_bytes(2, "big") + data[6:8] + bytes([data[8] - 2]) + body

    async def start(self) -> None:
        devs = [u for d in self.devices for u in d.sim_devices()]
        self._server = ModbusTcpServer(
            devs if len(devs) > 1 else devs[0],
            address=(self.host, self.port),
            framer=self.framer,
            trace_packet=self._trace,
        )
        self._task = asyncio.create_task(self._server.serve_forever())
        await wait_listening(self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self.drop_connections()
            await self._server.shutdown()
            self._server = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def wait_listening(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Wait until the server accepts connections (serve_forever binds asynchronously)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        try:
            _r, w = await asyncio.open_connection(host, port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.02)
