"""Transports: Modbus TCP, RTU framing over TCP (gateways), and the serial RTU client (through a
pyserial ``socket://`` URL to an RTU-framed server, so the serial code path runs without hardware)."""

from __future__ import annotations

import time

import pytest

from powerctl.config import ModbusRtu
from powerctl.io.modbus import ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from powerctl.sim.devices import DeviceSimulator
from tests.devices.conftest import declare, served, tcp


@pytest.mark.parametrize("mode", ["tcp", "rtu_over_tcp", "serial_rtu"])
async def test_poll_and_write_over_each_transport(mode: str) -> None:
    profile = load_profile("sma/sunny_island")
    sim = DeviceSimulator(profile, unit_id=3)
    sim.set_signal("soc_pct", 64)
    sim.set_signal("p_kw", -3.25)
    image = ProcessImage()
    declare(image, "b", profile)
    async with served(sim, framer="socket" if mode == "tcp" else "rtu") as srv:
        if mode == "serial_rtu":
            transport = ModbusRtu(kind="modbus_rtu", port=f"socket://127.0.0.1:{srv.port}", unit_id=3, timeout_s=0.5)
        else:
            transport = tcp(srv.port, 3, 0.5, framer="rtu" if mode == "rtu_over_tcp" else "socket")  # type: ignore[assignment]
        dev = ModbusDevice("b", profile, transport, image)
        try:
            assert await dev.poll_once(), dev.stats.last_error
            assert image.value("b", "soc_pct", time.time()) == 64
            assert image.value("b", "p_kw", time.time()) == -3.25
            res = await dev.write_signal("p_set_kw", 4.0)
            assert res.ok and sim.writes == [("p_set_kw", 4.0)]
        finally:
            dev.close()
