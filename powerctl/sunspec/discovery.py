"""SunSpec discovery: find the ``SunS`` marker, walk the model chain, read each model.

Algorithm (pysunspec2 ``SunSpecModbusClientDevice.scan``; OpenEMS does the same):
1. probe the bases 40000, 0, 50000 (PDU addresses) for ``0x5375 0x6E53``;
2. from base + 2, read the model ID; 0xFFFF ends the chain (its L is not required: some devices
   do not answer it); otherwise read L and the model's L registers; the next model starts at
   ``address + L + 2``;
3. the L the device reports wins over the definition's length.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from powerctl.sunspec.models import END_MODEL_ID

log = logging.getLogger(__name__)

BASES = (40000, 0, 50000)
MARKER = (0x5375, 0x6E53)
MAX_MODELS = 64  # a chain longer than this is a device bug, not a device
MAX_READ = 125  # registers per FC3 request (Modbus limit)

Reader = Callable[[int, int], Awaitable[list[int]]]  # (address, count) -> registers; raises on failure


class DiscoveryError(Exception):
    """No SunSpec device here (no marker at any base), or the chain cannot be read."""


@dataclass(frozen=True, slots=True)
class FoundModel:
    id: int
    address: int  # of its ID register
    length: int  # L as the device reports it
    regs: tuple[int, ...]  # ID, L and the L registers after them


@dataclass(slots=True)
class Chain:
    base: int
    models: list[FoundModel] = field(default_factory=list)
    end_address: int | None = None  # address of the 0xFFFF end model, None if the chain just stopped
    problems: list[str] = field(default_factory=list)

    def model(self, model_id: int) -> FoundModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    def bases(self) -> dict[int, int]:
        """First address of each model id (for relocating fixed profile maps)."""
        out: dict[int, int] = {}
        for m in self.models:
            out.setdefault(m.id, m.address)
        return out


async def read_span(read: Reader, address: int, count: int) -> list[int]:
    """Read ``count`` registers in requests of at most 125."""
    out: list[int] = []
    while count > 0:
        n = min(count, MAX_READ)
        regs = await read(address, n)
        if len(regs) != n:
            raise DiscoveryError(f"short reply at {address}: {len(regs)} of {n} registers")
        out.extend(regs)
        address += n
        count -= n
    return out


async def find_base(read: Reader, bases: tuple[int, ...] = BASES) -> int:
    """The first base address holding the SunS marker."""
    tried: list[str] = []
    for base in bases:
        try:
            regs = await read(base, 2)
        except Exception as exc:  # any failed probe means "not here"; try the next base
            tried.append(f"{base}: {type(exc).__name__}: {exc}")
            continue
        if tuple(regs) == MARKER:
            return base
        tried.append(f"{base}: {' '.join(f'{r:04x}' for r in regs)}")
    raise DiscoveryError("no SunSpec marker 'SunS' at " + "; ".join(tried))


async def walk(read: Reader, base: int) -> Chain:
    """Read every model of the chain that starts at ``base + 2``."""
    chain = Chain(base)
    addr = base + 2
    for _ in range(MAX_MODELS):
        try:
            (model_id,) = await read(addr, 1)
        except Exception as exc:
            chain.problems.append(f"chain ends without end model: reading ID at {addr} failed ({exc})")
            return chain
        if model_id == END_MODEL_ID:
            chain.end_address = addr
            return chain
        try:
            (length,) = await read(addr + 1, 1)
            body = await read_span(read, addr + 2, length) if length else []
        except Exception as exc:
            chain.problems.append(f"model {model_id} at {addr}: read failed ({exc})")
            return chain
        chain.models.append(FoundModel(model_id, addr, length, (model_id, length, *body)))
        addr += length + 2
        if addr > 0xFFFF:
            chain.problems.append("chain runs past the end of the address space")
            return chain
    chain.problems.append(f"more than {MAX_MODELS} models: stopped")
    return chain


async def discover(read: Reader, bases: tuple[int, ...] = BASES) -> Chain:
    base = await find_base(read, bases)
    chain = await walk(read, base)
    for p in chain.problems:
        log.warning("SunSpec discovery: %s", p)
    return chain
