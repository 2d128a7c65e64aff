"""Fixtures for the device layer: simulators served by real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from powerctl.config import ModbusTcp
from powerctl.io.modbus import ModbusDevice
from powerctl.natures import SIGNALS
from powerctl.process_image import ProcessImage
from powerctl.profiles.model import Profile
from powerctl.sim.devices import RegisterDevice, SimServer
from tests.servers import free_port


def declare(image: ProcessImage, name: str, profile: Profile, max_age_s: float = 60.0) -> None:
    for sig in SIGNALS[profile.nature]:
        image.declare(name, profile.nature, sig, max_age_s)


def tcp(port: int, unit: int, timeout_s: float = 0.3, framer: str = "socket") -> ModbusTcp:
    return ModbusTcp(kind="modbus_tcp", host="127.0.0.1", port=port, unit_id=unit, timeout_s=timeout_s, framer=framer)  # type: ignore[arg-type]


@asynccontextmanager
async def served(*devices: RegisterDevice, framer: str = "socket") -> AsyncIterator[SimServer]:
    """Serve devices on a free loopback port; checks a known register before handing over."""
    server = SimServer(list(devices), free_port(), framer=framer)
    async with server:
        yield server


def make_driver(
    name: str, profile: Profile, port: int, unit: int, image: ProcessImage, *, clock: Callable[[], float] = time.time, **kw: object
) -> ModbusDevice:
    declare(image, name, profile)
    return ModbusDevice(name, profile, tcp(port, unit, float(kw.pop("timeout_s", 0.3))), image, clock=clock, **kw)  # type: ignore[arg-type]
