"""Telemetry never takes control down (issue 12): a spool segment path that is a directory, or a
spool directory that cannot be written, must not crash or stall the writer. Points the spool cannot
take are kept in memory (bounded) and delivered when the server is back. Real VictoriaMetrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from powerctl.config import Influx
from powerctl.config import Telemetry as TelemetryCfg
from powerctl.telemetry import Telemetry
from tests.servers import VictoriaMetrics, free_port, or_missing

T0 = 1_700_000_000.0


def make_tel(url: str, spool: Path, **kw: float) -> Telemetry:
    cfg = TelemetryCfg(influx=Influx(url=url, org="ops", bucket="powerctl", spool_dir=str(spool),
                                     batch_size=100, flush_interval_s=0.05))
    return Telemetry(cfg, "site1", "mod1", spool.parent, retry_min_s=0.05, retry_max_s=0.2, spool_after_s=0.05,
                     timeout_s=1.0, **kw)  # type: ignore[arg-type]


async def wait_for(pred, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return bool(pred())


async def stop(task: asyncio.Task[None], tel: Telemetry) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tel.close()


async def test_a_segment_that_is_a_directory_does_not_stop_the_writer(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "000000000001-3.lp").mkdir(parents=True)  # where a segment file should be
    tel = make_tel(f"http://127.0.0.1:{free_port()}", spool)  # nothing listens: every write fails
    assert tel.spool is not None and len(tel.spool) == 1
    task = asyncio.create_task(tel.run())
    for i in range(300):
        tel.emit("pv", {"p_kw": float(i)}, T0 + i)
        await asyncio.sleep(0)
    # the bad entry is forgotten (not retried for ever) and later batches are spooled behind it
    assert await wait_for(lambda: tel.stats()["spooled"] >= 300 or task.done())
    assert not task.done(), task.exception()
    assert all(seg.path.is_file() for seg in tel.spool._segments)
    await stop(task, tel)


async def test_unwritable_spool_keeps_points_in_memory_and_delivers_them(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool's parent should be: nothing can be made below it")
    vm = or_missing(lambda: VictoriaMetrics(tmp_path / "vm", dedup=False))
    tel = make_tel(vm.url, blocker / "spool")  # the server is not started yet
    assert tel.spool is not None and tel.spool.unusable
    task = asyncio.create_task(tel.run())
    n = 500
    for i in range(n):
        tel.emit("pv", {"p_kw": float(i)}, T0 + i, device="inv1")
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    assert await wait_for(lambda: tel.stats()["write_errors"] > 2 or task.done())
    assert not task.done(), task.exception()
    # held in memory, not lost (a batch may be in flight to the dead server: wait for it to come back)
    assert await wait_for(lambda: tel.stats()["buffered"] == n)
    assert tel.stats()["dropped"] == 0
    vm.start()
    try:
        assert await wait_for(lambda: tel.stats()["written"] == n or task.done())
        assert not task.done(), task.exception()
        vm.force_flush()
        got = vm.export('{__name__="pv_p_kw"}')
        assert sorted(v for s in got for v in s["values"]) == [float(i) for i in range(n)]
        assert sum("cannot spool" in r.getMessage() for r in caplog.records) == 1  # logged once
        await stop(task, tel)
    finally:
        vm.stop()


async def test_memory_held_points_are_bounded(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    tel = make_tel(f"http://127.0.0.1:{free_port()}", blocker / "spool", max_buffer_points=200)
    task = asyncio.create_task(tel.run())
    for i in range(1000):
        tel.emit("pv", {"p_kw": float(i)}, T0 + i)
        if i % 100 == 0:
            await asyncio.sleep(0.01)
    assert await wait_for(lambda: tel.stats()["dropped"] >= 800 or task.done())
    assert not task.done(), task.exception()
    assert tel.stats()["buffered"] <= 200
    await stop(task, tel)
