"""Read-only Modbus TCP server for SCADA/BMS: the site state in a fixed register map.

The map (README "SCADA register map", and device_profiles/powerctl/scada.yaml, the same map as a
profile so one powerctl can read another) is served identically as input registers (FC4) and
holding registers (FC3), 0-based PDU addresses. Writes are refused (exception 1, illegal function);
addresses outside the map are exception 2. Every read encodes the latest state snapshot, so the
server never waits on the control loop. A value that is unknown (stale, no device) reads as the
"not implemented" sentinel: 0x8000 / 0x80000000 for signed, 0xFFFF for unsigned registers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from powerctl.profiles.codec import encode
from powerctl.web.server import PortInUse

log = logging.getLogger(__name__)

MAP_VERSION = 1
MAX_BATTERIES = MAX_GENSETS = MAX_CLASSES = 8
BATTERY_BASE, GENSET_BASE, CLASS_BASE, BLOCK = 100, 200, 300, 10
MAP_END = CLASS_BASE + MAX_CLASSES * BLOCK
MODE_CODES = {"starting": 0, "plan": 1, "safe": 2, "hold": 3, "manual": 4, "static": 5}
RUNG_CODES = {"": 0, "primary": 1, "secondary": 2, "rule": 3, "safe": 4}
_SENTINEL = {"int32": 0x80000000, "int16": 0x8000, "uint16": 0xFFFF, "uint32": 0xFFFFFFFF}

# site block: (address, state key, type, scale); scale multiplies the value before encoding
SITE_MAP: tuple[tuple[int, str, str, float], ...] = (
    (0, "map_version", "uint16", 1),
    (1, "mode_code", "uint16", 1),
    (2, "healthy", "uint16", 1),
    (3, "stale_count", "uint16", 1),
    (4, "battery_count", "uint16", 1),
    (5, "genset_count", "uint16", 1),
    (6, "cycles", "uint32", 1),
    (8, "t_s", "uint32", 1),
    (10, "pv_kw", "int32", 10),
    (12, "battery_kw", "int32", 10),
    (14, "genset_kw", "int32", 10),
    (16, "gpu_kw", "int32", 10),
    (18, "available_kw", "int32", 10),
    (20, "gpu_budget_total_kw", "int32", 10),
    (22, "soc_pct", "uint16", 10),
    (23, "cap_w_min", "uint16", 1),
    (24, "cap_w_mean", "uint16", 1),
    (25, "cap_w_max", "uint16", 1),
    (26, "guard_cuts", "uint32", 1),
    (28, "last_solve_ms", "uint16", 1),
    (29, "rung_code", "uint16", 1),
)
BATTERY_MAP = ((0, "soc_pct", "uint16", 10), (1, "p_kw", "int32", 10))
GENSET_MAP = ((0, "running", "uint16", 1), (1, "p_kw", "int32", 10))
CLASS_MAP = ((0, "budget_kw", "int32", 10), (2, "cap_w_min", "uint16", 1), (3, "cap_w_max", "uint16", 1),
             (4, "gpus", "uint16", 1))


def _put(regs: dict[int, int], address: int, value: Any, dtype: str, scale: float) -> None:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float) or value != value:
        words = encode(_SENTINEL[dtype], dtype.replace("int", "uint") if dtype.startswith("int") else dtype)
    else:
        raw = round(float(value) * scale)
        lo, hi = {"int32": (-(2**31) + 1, 2**31 - 1), "int16": (-(2**15) + 1, 2**15 - 1),
                  "uint16": (0, 0xFFFE), "uint32": (0, 0xFFFFFFFE)}[dtype]
        words = encode(min(hi, max(lo, raw)), dtype)  # clamped below the sentinel: never a wrap
    for i, w in enumerate(words):
        regs[address + i] = w


def _fields(regs: dict[int, int], base: int, layout: tuple[tuple[int, str, str, float], ...], doc: dict[str, Any]) -> None:
    for off, key, dtype, scale in layout:
        _put(regs, base + off, doc.get(key), dtype, scale)


def site_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The site block's values from a state snapshot (the /api/state document)."""
    caps = state.get("caps_w") or {}
    budget = state.get("gpu_budget_kw") or {}
    health = state.get("health") or {}
    return {
        **state,
        "map_version": MAP_VERSION,
        "mode_code": MODE_CODES.get(str(state.get("mode", "")), 0xFFFF),
        "healthy": 1 if health.get("ok") else 0,
        "stale_count": len(state.get("stale") or []),
        "battery_count": len(state.get("batteries") or {}),
        "genset_count": len(state.get("gensets") or {}),
        "gpu_budget_total_kw": sum(budget.values()) if budget else None,
        "cap_w_min": caps.get("min"), "cap_w_mean": caps.get("mean"), "cap_w_max": caps.get("max"),
        "rung_code": RUNG_CODES.get(str(state.get("plan_rung", "")), 0xFFFF),
    }


def encode_registers(state: dict[str, Any]) -> dict[int, int]:
    """Address -> register value for the whole map (pure)."""
    regs: dict[int, int] = dict.fromkeys(range(MAP_END), 0)
    _fields(regs, 0, SITE_MAP, site_fields(state))
    groups = ((BATTERY_BASE, BATTERY_MAP, state.get("batteries") or {}, MAX_BATTERIES),
              (GENSET_BASE, GENSET_MAP, state.get("gensets") or {}, MAX_GENSETS),
              (CLASS_BASE, CLASS_MAP, state.get("classes") or {}, MAX_CLASSES))
    for base, layout, entries, n_max in groups:
        items = list(entries.values())
        for i in range(n_max):  # absent devices read as sentinels, not as zero kW
            _fields(regs, base + i * BLOCK, layout, items[i] if i < len(items) else {})
    return regs


def bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on (pymodbus swallows the OSError): try it once."""
    try:
        with socket.create_server((host, port)):
            return "it was free a moment later: try again"
    except OSError as exc:
        return exc.strerror or str(exc)


class ScadaServer:
    """``start()`` binds (OSError naming the address when it is taken); ``close()`` stops."""

    def __init__(self, state: Callable[[], dict[str, Any]], host: str, port: int, unit_id: int = 1) -> None:
        self.state, self.host, self.port, self.unit_id = state, host, port, unit_id
        blocks = [SimData(address=0, count=MAP_END, values=0, datatype=DataType.REGISTERS)]
        coils = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=unit_id, simdata=(coils, coils, blocks, blocks), action=self._action)
        self._server = ModbusTcpServer([device], address=(host, port))
        self._task: asyncio.Task[None] | None = None

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if set_values is not None or function_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION  # read-only: nothing here may change the site
        regs = encode_registers(self.state())
        for a in range(address, address + count):
            current_registers[a - start_address] = regs.get(a, 0)
        return None

    async def start(self) -> None:
        # bind here, so a taken port fails the daemon's start with the address in the message
        # (pymodbus's serve_forever would only log it and leave nothing listening)
        if not await self._server.listen():
            raise PortInUse(f"SCADA Modbus server: cannot listen on {self.host}:{self.port}: "
                            f"{bind_problem(self.host, self.port)}")
        log.info("SCADA Modbus TCP (read-only) on %s:%d unit %d", self.host, self.port, self.unit_id)

    async def close(self) -> None:
        if self._server.transport is not None:
            await self._server.shutdown()
