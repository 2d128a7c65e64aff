"""Register-level device simulators: any profile served as a Modbus device (pymodbus SimDevice).

The simulator keeps the device's register image. A plant (or a test) sets engineering or signal
values; clients read the encoded registers; writes to a profile's setpoint are decoded and handed
to ``on_write(signal, value)`` in signal units. Addresses outside the profile's points and
setpoints do not exist (exception 2), and writes to read-only registers are refused, as a real
device would.

Fault modes for tests: no answer, slow answer, exception responses, garbage values, disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from powerctl.profiles.codec import CodecError
from powerctl.profiles.model import Profile, Setpoint
from powerctl.profiles.values import (
    encode_point,
    scale_factors,
    setpoint_value_from_registers,
    signal_to_point_value,
)

log = logging.getLogger(__name__)

_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 3: "holding", 6: "holding", 16: "holding", 23: "holding", 4: "input"}


class Fault(StrEnum):
    NONE = "none"
    NO_ANSWER = "no_answer"  # never replies (client times out)
    SLOW = "slow"  # replies after ``slow_s``
    EXCEPTION = "exception"  # exception response 4 (device failure)
    GARBAGE = "garbage"  # random register values
    DISCONNECT = "disconnect"  # drops the connection mid-request


@dataclass
class DeviceSimulator:
    profile: Profile
    unit_id: int = 1
    on_write: Callable[[str, float], None] | None = None
    fault: Fault = Fault.NONE
    slow_s: float = 0.5
    registers: dict[str, dict[int, int]] = field(default_factory=dict)
    writes: list[tuple[str, float]] = field(default_factory=list)
    requests: int = 0
    disconnect_hook: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        for table in ("holding", "input", "coil"):
            self.registers.setdefault(table, {})
        for p in self.profile.points:
            tab = self.registers[p.table]
            for a in range(p.address, p.end):
                tab.setdefault(a, 0)
        for sp in self.profile.setpoints:
            tab = self.registers[sp.table]
            for a in range(sp.address, sp.address + sp.count):
                tab.setdefault(a, 0)
            for addr, regs in sp.after_writes:
                for a in range(addr, addr + len(regs)):
                    tab.setdefault(a, 0)
        hole = self.profile.polling.max_hole
        if hole > 0:
            # A device whose profile allows reads across holes answers them (with zeros), as
            # SunSpec devices do for points a profile leaves out; max_hole 0 devices refuse them.
            for tab in self.registers.values():
                addrs = sorted(tab)
                for a, b in zip(addrs, addrs[1:], strict=False):
                    if 1 < b - a <= hole + 1:
                        for x in range(a + 1, b):
                            tab.setdefault(x, 0)
        # scale factors first, then values that use them
        sfs = [p for p in self.profile.points if p.dtype == "sunssf"]
        for p in sfs:
            self.set_point(p.name, self.profile.defaults.get(p.name, 0))
        for p in self.profile.points:
            if p.dtype != "sunssf" and p.name in self.profile.defaults:
                self.set_point(p.name, self.profile.defaults[p.name])
        if "SunS" in {p.name for p in self.profile.points}:
            self.set_raw("holding", self.profile.point("SunS").address, [0x5375, 0x6E53])

    # --- values in ----------------------------------------------------------------------------

    def set_raw(self, table: str, address: int, regs: list[int]) -> None:
        tab = self.registers[table]
        for i, r in enumerate(regs):
            tab[address + i] = r & 0xFFFF

    def set_point(self, name: str, value: float | str) -> None:
        """Set a point in its engineering unit, encoded with the current scale factor."""
        p = self.profile.point(name)
        sf = None
        if p.scale_sf:
            sf = scale_factors(self.profile, self.registers).get(p.scale_sf)
        if p.dtype == "sunssf":
            self.set_raw(p.table, p.address, encode_point(p, int(value)))
            return
        self.set_raw(p.table, p.address, encode_point(p, value, sf))

    def set_signal(self, signal: str, value: float) -> None:
        """Set every point feeding ``signal`` from a value in the signal's unit and sign."""
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

    # --- the pymodbus device ------------------------------------------------------------------

    def _blocks(self, table: str) -> list[SimData]:
        addrs = sorted(self.registers[table])
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

    def sim_device(self) -> SimDevice:
        return SimDevice(
            id=self.unit_id,
            simdata=(self._blocks("coil"), self._blocks("coil"), self._blocks("holding"), self._blocks("input")),
            action=self._action,
        )

    def _writable(self, address: int, count: int) -> Setpoint | None | bool:
        """The setpoint a write targets; True for an accepted side register (after_writes)."""
        for sp in self.profile.setpoints:
            if sp.table == "holding" and sp.address <= address < sp.address + sp.count:
                return sp
            for addr, regs in sp.after_writes:
                if addr <= address < addr + len(regs):
                    return True
        return None

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
        if self.fault is Fault.NO_ANSWER:
            await asyncio.sleep(3600)
        if self.fault is Fault.SLOW:
            await asyncio.sleep(self.slow_s)
        if self.fault is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if self.fault is Fault.DISCONNECT and self.disconnect_hook:
            self.disconnect_hook()
            await asyncio.sleep(3600)
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is None:
            if table == "coil":
                return None
            src = self.registers[table]
            for a in range(address, address + count):
                v = src.get(a, 0)
                if self.fault is Fault.GARBAGE:
                    v = random.randrange(0x10000)
                current_registers[a - start_address] = v
            return None
        return self._handle_write(table, address, list(map(int, set_values)))

    def _handle_write(self, table: str, address: int, values: list[int]) -> ExcCodes | None:
        target = self._writable(address, len(values))
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
            if not sp.value_map and sp.signal is None and not sp.range_min <= value <= sp.range_max:
                return ExcCodes.ILLEGAL_VALUE
            self.writes.append((sp.signal or sp.name, value))
            if self.on_write is not None:
                self.on_write(sp.signal or sp.name, value)
        return None
