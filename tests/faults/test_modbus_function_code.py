"""A Modbus reply with another function code than the request's is not data (issue 12): a real
Modbus/TCP server on loopback (raw asyncio, so it can misbehave on purpose) answers a read of
holding registers (FC 3) with an input-register reply (FC 4) carrying plausible values."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from powerctl.io.blocks import Block
from powerctl.io.modbus import DeviceError, ModbusDevice
from powerctl.process_image import ProcessImage
from powerctl.profiles import load_profile
from tests.devices.conftest import tcp
from tests.servers import free_port


@asynccontextmanager
async def lying_server(reply_fc: int | None) -> AsyncIterator[int]:
    """Answers every read with 2 registers (1234, 5678) under ``reply_fc`` (None: the request's own)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                fc = pdu[0] if reply_fc is None else reply_fc
                body = struct.pack(">BB", fc, 4) + struct.pack(">HH", 1234, 5678)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(client, "127.0.0.1", port)  # a taken port raises: loud
    async with server:
        yield port


async def read(port: int) -> list[int]:
    dev = ModbusDevice("liar", load_profile("dse/gencomm"), tcp(port, 1, 2.0), ProcessImage())
    try:
        return await dev.read_block(Block("holding", 0, 2))
    finally:
        dev.close()


async def test_a_correct_reply_is_read() -> None:
    async with lying_server(None) as port:
        assert await read(port) == [1234, 5678]


async def test_a_reply_with_the_wrong_function_code_is_refused() -> None:
    async with lying_server(4) as port:
        with pytest.raises(DeviceError, match="function code 4 to a request with function code 3"):
            await read(port)
