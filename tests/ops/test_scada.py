"""The SCADA Modbus server: an independent client (Debian mbpoll) reads the documented map, writes
are refused, a taken port is a clear error, and powerctl reads another powerctl with the profile."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from powerctl import scada
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from tests.devices.conftest import make_driver
from tests.devices.test_mbpoll import _mbpoll, mbpoll_read
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]

STATE: dict[str, Any] = {
    "t_s": 1_790_000_000.0, "site": "demo", "module": "m1", "mode": "plan", "cycles": 42,
    "pv_kw": 123.4, "battery_kw": -20.5, "genset_kw": None, "gpu_kw": 99.9, "available_kw": 140.0,
    "soc_pct": 55.5, "stale": ["gen1.p_kw"], "guard_cuts": 7, "last_solve_ms": 38.2, "plan_rung": "primary",
    "caps_w": {"min": 250.0, "mean": 400.0, "max": 700.0}, "gpu_budget_kw": {"inference": 60.0, "batch": 30.0},
    "batteries": {"bess": {"soc_pct": 55.5, "p_kw": -20.5}, "bess2": {"soc_pct": None, "p_kw": 3.0}},
    "gensets": {"gen1": {"p_kw": None, "running": False}},
    "classes": {"inference": {"budget_kw": 60.0, "cap_w_min": 400.0, "cap_w_max": 700.0, "gpus": 64}},
    "health": {"ok": False, "reasons": ["stale devices: gen1.p_kw"]},
}


def words32(v: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">i", v)))


@pytest.fixture
async def server():  # type: ignore[no-untyped-def]
    srv = scada.ScadaServer(lambda: STATE, "127.0.0.1", free_port(), unit_id=7)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_mbpoll_reads_the_site_block_and_every_battery(server: scada.ScadaServer) -> None:
    regs = await mbpoll_read(server.port, 7, "input", 0, 30)
    assert regs[0] == scada.MAP_VERSION and regs[1] == 1  # mode plan
    assert regs[2] == 0 and regs[3] == 1  # unhealthy, one stale signal
    assert regs[4:6] == [2, 1]  # two batteries, one genset
    assert regs[10:12] == words32(1234) and regs[12:14] == words32(-205)
    assert regs[14:16] == [0x8000, 0x0000]  # genset power unknown: the sentinel, not 0 kW
    assert regs[16:18] == words32(999) and regs[20:22] == words32(900)
    assert regs[22] == 555 and regs[23:26] == [250, 400, 700] and regs[29] == 1
    holding = await mbpoll_read(server.port, 7, "holding", 0, 30)
    assert holding == regs  # FC3 and FC4 serve the same map
    b = await mbpoll_read(server.port, 7, "input", scada.BATTERY_BASE, 2 * scada.BLOCK)
    assert b[0] == 555 and b[1:3] == words32(-205)
    assert b[10] == 0xFFFF and b[11:13] == words32(30)  # second battery: SoC unknown, 3.0 kW
    g = await mbpoll_read(server.port, 7, "input", scada.GENSET_BASE, 3)
    assert g == [0, 0x8000, 0x0000]


async def test_writes_are_refused(server: scada.ScadaServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        _mbpoll(), "-m", "tcp", "-a", "7", "-0", "-r", "10", "-t", "4", "-1", "-p", str(server.port), "127.0.0.1", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode != 0 or re.search(r"[Ii]llegal function", (out + err).decode()), (out, err)
    regs = await mbpoll_read(server.port, 7, "holding", 10, 2)
    assert regs == words32(1234)


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        srv = scada.ScadaServer(lambda: STATE, "127.0.0.1", port)
        with pytest.raises(OSError, match=rf"SCADA Modbus server: cannot listen on 127.0.0.1:{port}: .*in use"):
            await srv.start()


async def test_powerctl_reads_another_powerctl_with_the_profile(server: scada.ScadaServer) -> None:
    profile = load_profile("powerctl/scada")
    image = ProcessImage()
    drv = make_driver("peer", profile, server.port, 7, image)
    try:
        assert await drv.poll_once()
        assert image.value("peer", "p_kw", time.time()) == pytest.approx(99.9)
    finally:
        drv.close()


def test_profile_and_readme_match_the_server_map() -> None:
    profile = {p.name: p for p in load_profile("powerctl/scada").points}
    for addr, key, dtype, _scale in scada.SITE_MAP:
        p = profile[key]
        assert (p.address, p.dtype) == (addr, dtype), key
    readme = (ROOT / "README.md").read_text()
    for addr, key, dtype, scale in scada.SITE_MAP:
        unit = r"0\.1 [^|]*" if scale == 10 else r"[^|]*"
        assert re.search(rf"^\| {addr} \| `{key}` \| {dtype} \| {unit}\|", readme, re.M), key
